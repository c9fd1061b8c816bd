"""The model directory (DESIGN.md §2): ``config.json`` (classes, every stage's settings,
versions) + ``classifier.safetensors`` (+ ``icn.safetensors`` once the ICN is trained).

Each stage owns a section of ``config.json`` named after it (``classifier``, ``peaks``,
``prm``, ``matching``, ``instances``, ``training``); a section is a dataclass's fields.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, fields
from pathlib import Path
from typing import TypeVar

import torch

from icn_rt.errors import InputError, read_json
from icn_rt.models.classifier import ClassifierSettings, PeakClassifier
from icn_rt.models.icn import ICN, ICNSettings

CONFIG = "config.json"
CLASSIFIER = "classifier.safetensors"
ICN_WEIGHTS = "icn.safetensors"
FORMAT = 1

T = TypeVar("T")


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


def add_missing_sections(directory: str | Path, sections: dict[str, object]) -> None:
    """Write each of ``sections`` (dataclasses) into the config unless already there, so
    the config spells out every setting a run used."""
    config = read_config(directory)
    missing = {k: asdict(v) for k, v in sections.items() if k not in config}
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
