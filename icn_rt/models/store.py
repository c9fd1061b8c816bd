"""The model (docs/design.md §2): the directory, and :class:`Model`, the one object it loads into.

A model directory holds ``config.json`` (classes, every stage's settings, versions) +
``classifier.safetensors`` (+ ``icn.safetensors`` once the ICN is trained); export adds
the graphs and ``manifest.json`` (:mod:`icn_rt.models.manifest`). Each stage owns a
section of ``config.json`` named after it (``classifier``, ``peaks``, ``prm``,
``matching``, ``instances``, ``icn``, ``training``); a section is a dataclass's fields.

:class:`Model` is what the predictor, the exported graph modules and INT8 calibration
all wrap (as segment-anything's one ``Sam`` object is wrapped by its predictor and by its
ONNX module): the networks, the classes and every inference setting.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TypeVar

import torch

from icn_rt.errors import InputError, read_json
from icn_rt.matching import InstanceSettings, MatchingSettings
from icn_rt.models.classifier import ClassifierSettings, PeakClassifier
from icn_rt.models.icn import ICN, ICNSettings, enhance
from icn_rt.models.peaks import PeakSettings
from icn_rt.models.prm import NaiveMaps, PRMSettings, naive_maps
from icn_rt.models.student import StudentSettings, build_student

CONFIG = "config.json"
CLASSIFIER = "classifier.safetensors"
ICN_WEIGHTS = "icn.safetensors"
STUDENT_WEIGHTS = "student.safetensors"
FORMAT = 1
SECTIONS = {"peaks": PeakSettings, "prm": PRMSettings, "matching": MatchingSettings, "instances": InstanceSettings}
"""The inference settings sections besides the networks' own (``classifier``, ``icn``)."""
RECOMMENDED = {"matching": {"score": "auto-iou", "rerank": 50}, "instances": {"confidence": "peak_match"}}
"""What a new model's config gets over the settings' defaults (which are the paper's, so a
config written before these existed keeps its meaning): objectness re-ranking of 50
candidates, IoU matching of enhanced maps and the peak × objectness confidence, chosen on
the synthetic dev split (docs/accuracy.md)."""

T = TypeVar("T")


@dataclass
class Model:
    """A model: ``classifier``, ``classes`` and every inference setting; ``icn`` (None: a
    classifier alone) with ``icn_settings`` (its ``steps`` T; 0: naive PRMs; default: the
    ICN's own); ``directory``: where it was loaded from (None: made in memory).

    Eager on the CPU, the first :meth:`naive_maps` or :meth:`enhance` puts the networks'
    weights channels-last (oneDNN runs them about 1.7× faster so)."""

    classifier: PeakClassifier
    classes: tuple[str, ...]
    peaks: PeakSettings = field(default_factory=PeakSettings)
    prm: PRMSettings = field(default_factory=PRMSettings)
    matching: MatchingSettings = field(default_factory=MatchingSettings)
    instances: InstanceSettings = field(default_factory=InstanceSettings)
    icn: ICN | None = None
    icn_settings: ICNSettings | None = None
    directory: Path | None = None
    _layout_set: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if self.icn_settings is None:
            self.icn_settings = self.icn.settings if self.icn is not None else ICNSettings()

    @property
    def input_size(self) -> int:
        return self.classifier.settings.input_size

    @property
    def device(self) -> torch.device:
        return next(self.classifier.parameters()).device

    @property
    def enhances(self) -> bool:
        """Whether PRMs go through the ICN."""
        return self.icn is not None and self.icn_settings.steps > 0

    def to(self, device: str | torch.device) -> Model:
        """The networks in eval mode on ``device`` (in place); returns the model."""
        self.classifier.eval().to(device)
        if self.icn is not None:
            self.icn.eval().to(device)
        return self

    def replace(self, icn_steps: int | None = None, **sections) -> Model:
        """A model with the same networks and these settings sections replaced
        (``peaks=``, ``prm=``, ``matching=``, ``instances=``; None keeps one) and, unless
        None, ``icn_steps`` T."""
        changes = {name: value for name, value in sections.items() if value is not None}
        if icn_steps is not None:
            changes["icn_settings"] = replace(self.icn_settings, steps=icn_steps)
        return replace(self, **changes)

    def naive_maps(self, x: torch.Tensor) -> NaiveMaps:
        """Peaks and PRMs of the normalised images ``x: float [B, 3, S, S]`` (eager)."""
        self.eager_layout()
        return naive_maps(self.classifier, x, self.peaks, self.prm)

    def enhance(self, naive: NaiveMaps) -> torch.Tensor:
        """The ICN's T steps on every peak's PRM, ``chunk`` peaks at a time (eager) ->
        ``float [K, S, S]``."""
        self.eager_layout()
        return enhance(self.icn, naive.x, naive.peaks.image, naive.prms, self.icn_settings.steps,
                       self.icn_settings.chunk)

    def eager_layout(self) -> None:
        """Put the networks in the memory layout eager inference runs fastest in on this
        device (channels-last on CPUs), once; what :meth:`naive_maps` and :meth:`enhance` do
        first, and what code that runs the networks itself calls."""
        if not self._layout_set and self.device.type == "cpu":
            for net in (self.classifier, self.icn):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
        self._layout_set = True


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> Model:
    """The model of a directory (with its ICN when it has one: T from its config; without
    one, T = 0), in eval mode on ``device``; every setting from its config."""
    directory = Path(directory)
    classifier, config = load_classifier(directory, device)
    sections = {name: settings_from(config, name, kind, directory) for name, kind in SECTIONS.items()}
    icn = load_icn(directory, config, device)
    return Model(classifier, tuple(config["classes"]), **sections, icn=icn,
                 icn_settings=icn.settings if icn is not None else ICNSettings(steps=0), directory=directory)


def weights_digest(*modules: torch.nn.Module | None) -> str:
    """SHA-256 of the modules' state (names and bytes, in order; None skipped): what
    decides a job's results besides its settings."""
    import hashlib

    digest = hashlib.sha256()
    for module in modules:
        if module is not None:
            for name, tensor in module.state_dict().items():
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def versions() -> dict[str, str]:
    import icn_rt

    return {"icn_rt": icn_rt.__version__, "torch": torch.__version__, "python": platform.python_version()}


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG
    config = read_json(path, "not a model directory (config.json missing)")
    if not isinstance(config, dict) or config.get("format") != FORMAT or "classes" not in config:
        raise InputError(path, f"not an icn-rt model config (format {FORMAT} with 'classes')")
    return config


def write_config(directory: str | Path, config: dict) -> None:
    """Atomically replace ``config.json``."""
    path = Path(directory) / CONFIG
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path)


def settings_from(config: dict, section: str, cls: type[T], directory: str | Path = "") -> T:
    """The dataclass ``cls`` from ``config[section]`` (defaults where absent); unknown
    keys are an error naming the file."""
    values = config.get(section, {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(Path(directory) / CONFIG, f"unknown setting(s) in '{section}': {', '.join(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def save_classifier(directory: str | Path, model: PeakClassifier, classes: tuple[str, ...],
                    sections: dict[str, object]) -> None:
    """Write the classifier weights and a config with ``classes``, its settings and the
    given ``sections`` (dataclasses or dicts), keeping other sections already there."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        config = read_config(directory)
    except InputError:
        config = {"format": FORMAT}
    config["classes"] = list(classes)
    config["classifier"] = asdict(model.settings)
    _save_weights(directory, CLASSIFIER, model, config, sections)


def _save_weights(directory: Path, name: str, module: torch.nn.Module, config: dict,
                  sections: dict[str, object]) -> None:
    """Write ``module``'s weights to ``directory/name`` (atomically) and ``config`` with
    ``sections`` (dataclasses or dicts) and the current versions."""
    from safetensors.torch import save_file

    for section, value in sections.items():
        config[section] = asdict(value) if hasattr(value, "__dataclass_fields__") else value
    config["versions"] = versions()
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    tmp = directory / (name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, directory / name)
    write_config(directory, config)


def complete_config(directory: str | Path) -> None:
    """Write every inference settings section (:data:`SECTIONS`) missing from the config,
    with its defaults and :data:`RECOMMENDED` over them, so the config spells out every
    setting inference will use, ready to edit."""
    config = read_config(directory)
    missing = {name: asdict(kind(**RECOMMENDED.get(name, {})))
               for name, kind in SECTIONS.items() if name not in config}
    if missing:
        write_config(directory, {**config, **missing})


def load_classifier(directory: str | Path, device: str | torch.device = "cpu") -> tuple[PeakClassifier, dict]:
    """The classifier of a model directory, in eval mode on ``device``, and its config."""
    directory = Path(directory)
    config = read_config(directory)
    settings = settings_from(config, "classifier", ClassifierSettings, directory)
    model = PeakClassifier(len(config["classes"]), settings)
    path = directory / CLASSIFIER
    if not path.is_file():
        raise InputError(path, "classifier weights missing (train it with `icn-rt train classifier`)")
    _load_weights(path, model)
    return model.eval().to(device), config


def _load_weights(path: Path, model: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as e:  # noqa: BLE001 - a bad or mismatched file, named in one line
        raise InputError(path, f"cannot load weights ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def save_icn(directory: str | Path, icn: ICN, sections: dict[str, object]) -> None:
    """Write ``icn.safetensors`` and the config's ``icn`` section (+ ``sections``) into an
    existing model directory."""
    directory = Path(directory)
    config = read_config(directory)
    config["icn"] = asdict(icn.settings)
    _save_weights(directory, ICN_WEIGHTS, icn, config, sections)


def load_icn(directory: str | Path, config: dict | None = None, device: str | torch.device = "cpu") -> ICN | None:
    """The ICN of a model directory in eval mode, or None when it has none (no
    ``icn.safetensors``)."""
    directory = Path(directory)
    path = directory / ICN_WEIGHTS
    if not path.is_file():
        return None
    config = config if config is not None else read_config(directory)
    icn = ICN(settings_from(config, "icn", ICNSettings, directory))
    _load_weights(path, icn)
    return icn.eval().to(device)


def save_student(directory: str | Path, student: torch.nn.Module, settings: StudentSettings,
                 sections: dict[str, object]) -> None:
    """Write ``student.safetensors`` and the config's ``student`` section (+ ``sections``)
    into an existing model directory (:mod:`icn_rt.models.student`)."""
    directory = Path(directory)
    config = read_config(directory)
    config["student"] = asdict(settings)
    _save_weights(directory, STUDENT_WEIGHTS, student, config, sections)


def student_settings(directory: str | Path) -> StudentSettings:
    """The student settings in a model directory's config (its defaults where it has none)."""
    return settings_from(read_config(Path(directory)), "student", StudentSettings, Path(directory))


def load_student(directory: str | Path,
                 device: str | torch.device = "cpu") -> tuple[torch.nn.Module, StudentSettings, tuple[str, ...]]:
    """The student of a model directory in eval mode on ``device``, with its settings and
    the classes: ``(network, StudentSettings, classes)``."""
    directory = Path(directory)
    path = directory / STUDENT_WEIGHTS
    config = read_config(directory)
    if not path.is_file():
        raise InputError(path, "student weights missing (train one with `icn-rt train student`)")
    settings = settings_from(config, "student", StudentSettings, directory)
    student = build_student(len(config["classes"]), settings)
    _load_weights(path, student)
    return student.eval().to(device), settings, tuple(config["classes"])
