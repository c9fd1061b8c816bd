import os
import shutil

# Without a GPU, Numba's CUDA kernels run in its simulator; this must be set before
# anything imports numba. (nvidia-smi, not torch, to keep this import light.)
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from pathlib import Path

import pytest

from typer.testing import CliRunner

from icn_rt.cli import app
from icn_rt.data.synth import SynthConfig, generate

TINY = SynthConfig(size=64, train=4, val=6, dev=2, classes=3, seed=7)


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in VOC layout (64 px, 4 train + 6 val images, 3 classes)."""
    root = tmp_path_factory.mktemp("voc")
    generate(root, TINY, progress=False)
    return root


runner = CliRunner()
CLASSIFIER = ["--backbone", "small", "--input-size", "64", "--sub-pixel", "1", "--lr", "1e-3", "--batch-size", "2"]
ICN_ARGS = ["--encoder", "small", "--width", "8", "--batch-size", "4", "--lr", "3e-3", "--crop", "0.8"]


@pytest.fixture(scope="session")
def classifier(tiny_voc, tmp_path_factory):
    """A 3-epoch small classifier on the tiny set (64 px), with proposals for both splits."""
    from icn_rt.data.make_proposals import make_proposals

    for split in ("train", "val"):
        make_proposals(tiny_voc, tiny_voc / "Proposals", split, jobs=1, progress=False)
    model = tmp_path_factory.mktemp("icn") / "model"
    r = runner.invoke(app, ["train", "classifier", str(tiny_voc), "--model", str(model), "--epochs", "3", *CLASSIFIER])
    assert r.exit_code == 0, r.output
    return model


@pytest.fixture(scope="session")
def with_icn(classifier, tiny_voc, tmp_path_factory):
    """A copy of ``classifier`` with a small ICN (10 epochs); (model dir, training output)."""
    import shutil

    model = tmp_path_factory.mktemp("icn") / "with_icn"
    shutil.copytree(classifier, model)
    # ground-truth supervision: a 3-epoch classifier's pseudo labels are too noisy for a
    # loss that must fall within a few epochs
    r = runner.invoke(app, ["train", "icn", str(tiny_voc), "--model", str(model), "--epochs", "10",
                            "--supervision", "saliency", *ICN_ARGS])
    assert r.exit_code == 0, r.output
    return model, r.output


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster (``ray start --head``) for the session's Ray tests; its address.
    Three logical CPUs: two predictors and a loading task at once, on this 2-core machine."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = Path(sys.executable).parent / "ray"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no telemetry from tests (drivers here and in subprocesses)
    # a cluster on 127.0.0.1 for this session only: no token authentication, whatever a token
    # file in ~/.ray (which an earlier local ray.init() may have left) would otherwise switch on
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = dict(os.environ)
    subprocess.run([str(ray), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=3",
                    "--num-gpus=0", "--object-store-memory=100000000", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, env=env, capture_output=True)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray), "stop", "--force"], env=env, capture_output=True)
