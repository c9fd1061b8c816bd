"""The arguments and options more than one command takes, each defined once.

A command declares ``device: Device = "auto"``: the name, the help and the checks come
from here, the default from the command. Names in :data:`PER_COMMAND` are the exception:
what they mean depends on the command (the split a command reads, what it writes with
``--out``, its schedule), so each command writes their help; ``tests/test_cli_options.py``
holds every other name to one help text and one type across the commands.
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

PER_COMMAND = frozenset({"--out", "--split", "--seed", "--epochs", "--lr", "--lr-step", "--batch-size", "--k",
                         "--rerank", "--supervision", "--backbone", "--input-size", "--pretrained", "--labels",
                         "--threshold"})
"""Option names whose meaning depends on the command, so each command writes their help."""

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
