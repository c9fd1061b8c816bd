"""The arguments and options more than one command takes, each defined once.

A command declares ``device: Device = "auto"``: the name, the help and the checks come
from here, the default from the command; a command's docstring says what is its own (a
training command's optimiser and schedule). ``tests/test_cli_options.py`` holds every
name two commands take to one help text and one type; :data:`PER_COMMAND` lists the one
exception.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from icn_rt.cli.common import auto_device

RAY_HELP = ("auto (a cluster running here, or a new local one) | local (a new one) | ADDRESS (host:6379, "
            "ray://host:10001)")
ROOT_HELP = ("Dataset root in any layout: VOC folders (ImageSets/, JPEGImages/, ...), COCO "
             "(annotations/instances_<split>.json + <split>/ or images/) or a folder of images with "
             "tags.csv / tags.jsonl.")
DEVICE_HELP = "auto (the GPU when one is present, else the CPU) | cpu | cuda | cuda:N."
MODEL_HELP = ("Model directory: config.json and the weights (`icn-rt train classifier --model` makes one; "
              "exported graphs, plans and the student go beside them).")
IMAGES_HELP = ("Image files, directories, glob patterns ('imgs/**/*.jpg'), list files (.txt, a path a line) or a "
               "tags.csv / tags.jsonl / COCO annotation file.")
BACKEND_HELP = ("torch (eager; torch:fp16 and torch:bf16 run under autocast) | onnxruntime | tensorrt (the exported "
                "graphs: `icn-rt export`, `icn-rt build-engine`) | auto (the fastest present); a graph backend may "
                "name a precision: onnxruntime:int8, tensorrt:fp16. Commands that compare backends take it "
                "repeated.")

PER_COMMAND = frozenset({("data convert", "--split")})
"""(command, option) pairs that differ from the shared definition: ``data convert`` takes
``--split`` repeated (several splits at once)."""

Json = Annotated[Optional[Path], typer.Option("--json", help="Write the machine-readable report (JSON) here.",
                                               show_default=False)]
Model = Annotated[Path, typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False)]
ModelOption = Annotated[Optional[Path], typer.Option("--model", metavar="MODEL", help=MODEL_HELP,
                                                     show_default=False)]
Root = Annotated[Path, typer.Argument(metavar="ROOT", help=ROOT_HELP, show_default=False)]
Images = Annotated[list[str], typer.Argument(metavar="IMAGES", help=IMAGES_HELP, show_default=False)]
Device = Annotated[str, typer.Option(help=DEVICE_HELP, callback=auto_device)]
Backend = Annotated[Optional[list[str]], typer.Option("--backend", metavar="BACKEND", help=BACKEND_HELP,
                                                                  show_default=False)]
Student = Annotated[bool, typer.Option(help="Run the model's student (`icn-rt train student`: proposal-free, one "
                                            "forward an image) instead of the pipeline.")]
Proposals = Annotated[Optional[Path], typer.Option(
    "--proposals", help="Proposal folder: <image id>.mat (MCG) or .json (RLE) files [default: ROOT/Proposals for a "
                        "dataset; for images, selective search on the fly (slow) or the demo's].",
    show_default=False)]
IcnSteps = Annotated[Optional[int], typer.Option(help="ICN enhancement steps T [default: the model's; 0 = naive "
                                                      "PRMs].", show_default=False)]
MaxPixels = Annotated[float, typer.Option(help="Refuse images larger than this many megapixels.")]
CudaGraph = Annotated[bool, typer.Option(help="TensorRT replays its plans as CUDA graphs (bench: as one more "
                                              "contestant).")]
OrtOptimization = Annotated[str, typer.Option(help="onnxruntime's graph optimisation level: disable | basic | "
                                                   "extended | all (--backend onnxruntime).")]
OrtSaveOptimized = Annotated[bool, typer.Option(help="onnxruntime writes the graphs it optimised beside them "
                                                     "(<graph>.ort-<level>.onnx).")]
Precision = Annotated[Optional[list[str]], typer.Option(
    metavar="PRECISION", help="fp32 | fp16 (the networks in fp16, the rest fp32) | int8 (Q/DQ, calibrated); repeat or separate with "
         "commas for several.", show_default=False)]
Workers = Annotated[Optional[int], typer.Option(
    help="Worker processes that load images (decode, proposals, preprocessing) or make proposals [default: "
         "inference up to 4, one per core; proposals one per core; training 0, all in this process].",
    show_default=False)]
Resume = Annotated[bool, typer.Option(help="Continue an interrupted run from what it wrote (training: bit for bit; "
                                           "jobs: the images not yet done, and those that failed).")]
Timeout = Annotated[float, typer.Option(help="Seconds a request may take: the server answers 503 after them, the "
                                              "client gives up.")]
Quiet = Annotated[bool, typer.Option(help="No progress bars.")]
Nproc = Annotated[int, typer.Option(help="Train on N processes (DDP: gloo on CPUs, NCCL with a GPU each) through "
                                         "torchrun --standalone on this machine; the global batch stays "
                                         "--batch-size. Several nodes: run torchrun yourself (docs/distributed.md).")]
SyncBn = Annotated[bool, typer.Option(help="Under several processes, BatchNorm statistics over the global batch "
                                           "(SyncBatchNorm).")]
Ray = Annotated[Optional[str], typer.Option(help="Run on a Ray cluster (pip install 'icn-rt[distributed]'): "
                                                 + RAY_HELP + ".", show_default=False)]
Actors = Annotated[int, typer.Option(help="--ray: workers (predictors, labellers) at once, each loading the model "
                                          "once.")]
GpusPerActor = Annotated[float, typer.Option(help="--ray: GPUs per worker (0: on CPUs).")]
CpusPerActor = Annotated[float, typer.Option(help="--ray: CPUs per worker (its torch threads).")]


LabelArea = Annotated[Optional[str], typer.Option(
    help="LOW,HIGH: the shares of the image a label may cover (0,1: any) [default: chosen on --dev-split with the "
         "threshold; any with --threshold].", show_default=False)]


def area_range(value: str | None) -> tuple[float, float] | None:
    """``--label-area LOW,HIGH`` as two floats (None: not given), or a ValueError naming it."""
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise ValueError(f"--label-area takes LOW,HIGH (shares of the image, e.g. 0.02,0.4), got {value!r}") from None
    from icn_rt.training.student import check_area

    return check_area((lo, hi))


def backends(values: list[str] | None, default: tuple[str, ...]) -> list[str]:
    """``--backend`` given (repeated, or comma separated), else ``default``."""
    names = [b.strip() for v in (values or []) for b in v.split(",") if b.strip()]
    return names or list(default)


def one_backend(values: list[str] | None, default: str = "torch") -> str:
    """The one ``--backend`` of a command that runs one."""
    names = backends(values, (default,))
    if len(names) > 1:
        raise ValueError(f"this command runs one backend; got --backend {' --backend '.join(names)}")
    return names[0]


def precisions(values: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """``--precision`` given (repeated, or comma separated; each once), else ``default``."""
    names = [p.strip() for v in (values or []) for p in v.split(",") if p.strip()]
    return tuple(dict.fromkeys(names)) or default


# what a training command reads and how it trains; each command's help says its schedule
Split = Annotated[str, typer.Option(help="Split of ROOT the command reads (VOC: ImageSets/Main/SPLIT.txt; COCO: "
                                         "instances_SPLIT.json).")]
Seed = Annotated[int, typer.Option(help="Seed: the same seed, the same result (dataset, initialisation, order, "
                                        "augmentation, sampling, bootstrap draws).")]
Epochs = Annotated[int, typer.Option(help="Epochs to train.")]
Lr = Annotated[float, typer.Option(help="Learning rate (the command's help names the optimiser).")]
LrStep = Annotated[int, typer.Option(help="Epochs between learning-rate decays (classifier: x0.1; ICN: x0.5).")]
BatchSize = Annotated[int, typer.Option(help="Batch size: images per batch (ICN training: peaks).")]
Backbone = Annotated[str, typer.Option(help="Backbone of the network trained. Classifier: resnet50 | vgg16 | small. "
                                            "Student: classifier-fpn (the model's classifier backbone under an FPN, "
                                            "from its weights) | mobilenet-v3-fpn (CPUs, Jetson) | resnet50-fpn.")]
InputSize = Annotated[int, typer.Option(help="Side the images are resized to (student: 0 = the training images' "
                                             "median shorter side, rounded up to 32).")]
Pretrained = Annotated[Optional[str], typer.Option(help="Start of the backbone: 'imagenet' (torchvision download) or a "
                                                        "weights file [default: from scratch].", show_default=False)]
# pseudo labels: made by `train pseudo-labels`, or by `train icn` when missing
Supervision = Annotated[str, typer.Option(help="proposals (pseudo labels) | saliency (GT instance masks).")]
LabelK = Annotated[int, typer.Option("--k", help="Proposals kept per peak when labels are made (best first, none "
                                                 "inside a kept one).")]
Rerank = Annotated[Optional[int], typer.Option(help="When labels are made: re-rank each peak's N best proposals by "
                                                    "objectness (0: off, the paper) [default: the model's "
                                                    "matching.rerank].", show_default=False)]
Labels = Annotated[Optional[Path], typer.Option(help="Label directory [default: MODEL/labels-SUPERVISION-SPLIT]; made "
                                                     "when missing.", show_default=False)]
Out = Annotated[Optional[Path], typer.Option("--out", help="Where the command writes what it makes. proposals: a "
                                                           "folder [default: ROOT/Proposals]; demo: a folder; infer, "
                                                           "client: a COCO-style results JSON.")]
