"""``icn-rt bench`` at the paper's configuration, made from nothing and reproducible:
ResNet-50 at 448², sub-pixel 8, on 500×375 images with selective-search proposals
(~1500 each), beside the small configuration the README's other figures come from.

Steps (each skipped when its output is already in ``--work``):

1. the synthetic benchmark at 448² (``--train`` training images, ``--images`` val
   images, ``--seed``);
2. a ResNet-50 classifier trained for ``--epochs`` on it (ImageNet weights are not
   reachable here: a short run, enough for real peaks; its peak thresholds calibrated as
   ``icn-rt train classifier`` does);
3. the val images resized to 500×375 (a VOC photo's size) and their selective-search
   proposals;
4. ``icn-rt bench`` on them: the baseline, icn-rt with PRM's rules (same instances
   checked), the model; per-peak backward cost against one forward pass; progress for
   every contestant.

Writes ``--out`` (JSON with the machine, versions and this command), ``.md`` and
``.png`` beside it::

    python benchmarks/bench_paper.py --out benchmarks/results/bench_paper_cpu.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import cv2

from icn_rt.data.make_proposals import make_proposals
from icn_rt.data.selective_search import SelectiveSearchConfig
from icn_rt.data.synth import SynthConfig, generate
from icn_rt.models.classifier import ClassifierSettings
from icn_rt.runtime.bench import BenchSettings, bench, markdown, plot
from icn_rt.training.classifier import TrainSettings, train_classifier

PHOTO = (500, 375)  # width, height of a typical VOC photo


def _resized_root(src: Path, dst: Path, split: str) -> None:
    """``src``'s ``split`` with its images resized to :data:`PHOTO` (labels kept: the
    bench reads images and proposals only)."""
    ids = (src / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    (dst / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (dst / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    shutil.copytree(src / "Annotations", dst / "Annotations", dirs_exist_ok=True)
    shutil.copy(src / "classes.txt", dst / "classes.txt")
    (dst / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    for i in ids:
        image = cv2.imread(str(src / "JPEGImages" / f"{i}.jpg"))
        cv2.imwrite(str(dst / "JPEGImages" / f"{i}.jpg"), cv2.resize(image, PHOTO, interpolation=cv2.INTER_LINEAR))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("bench_paper_work"), help="data and model (kept between runs)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_paper_cpu.json"))
    p.add_argument("--images", type=int, default=8, help="distinct val images benchmarked")
    p.add_argument("--train", type=int, default=32, help="training images of the short classifier run")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--backends", nargs="+", default=["torch"],
                   help="model backends (onnxruntime needs `icn-rt export` of the model first)")
    p.add_argument("--iterations", type=int, default=1, help="least timed batches per contestant "
                   "(1: one pass over the images; the baseline takes a minute an image here)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    data, model, photos = args.work / "data", args.work / "model", args.work / "photos"
    if not (data / "ImageSets").exists():
        generate(data, SynthConfig(size=448, train=args.train, val=args.images, dev=0, seed=args.seed))
    if not (model / "config.json").exists():
        train_classifier(data, model, TrainSettings(epochs=args.epochs, batch_size=8, seed=args.seed, split="train",
                                                    val_split="val"),
                         ClassifierSettings(backbone="resnet50", input_size=448, sub_pixel=8), device=args.device,
                         log=lambda m: print(m, file=sys.stderr))
    if not (photos / "Proposals").exists():
        _resized_root(data, photos, "val")
        make_proposals(photos, photos / "Proposals", "val", SelectiveSearchConfig(max_proposals=2000))
    paths = sorted((photos / "JPEGImages").glob("*.jpg"))
    report = bench(model, paths, photos / "Proposals",
                   BenchSettings(batch_sizes=tuple(args.batch_sizes), backends=tuple(args.backends),
                                 images=len(paths), device=args.device, warmup=0, iterations=args.iterations),
                   log=lambda m: print(m, file=sys.stderr))
    report = {"command": shlex.join(["python", *sys.argv]), "configuration": "paper: ResNet-50, 448², sub-pixel 8, "
              f"{PHOTO[0]}×{PHOTO[1]} images, selective search", "training": {"images": args.train,
              "epochs": args.epochs, "seed": args.seed}, **report}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    plot(report, args.out.with_suffix(".png"))
    print(markdown(report))


if __name__ == "__main__":
    main()
