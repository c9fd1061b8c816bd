"""Training on several processes (torchrun, DDP over gloo on this CPU): the samplers give
each rank its share of the single-process batch, BatchNorm over the global batch gives
the single-process gradients, the ranks hold identical weights after every epoch, and
``icn-rt train ... --nproc 2`` (with --resume) ends where one process does, within the
tolerance stated below."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from typer.testing import CliRunner

from icn_rt.cli import app
from icn_rt.training.distributed import Ranks, RankSampler, agree, wrap
from tests.conftest import CLASSIFIER, ICN_ARGS

runner = CliRunner()
ICN_RT = str(Path(sys.executable).parent / "icn-rt")


def _run(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a process of its own (torchrun launches from there), lines unwrapped."""
    return subprocess.run([ICN_RT, *args], capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})


@pytest.mark.parametrize("count,batch,seed", [(10, 2, 0), (37, 4, 1005), (12, 6, 3)])
def test_ranks_draw_their_share_of_the_single_process_batches(count, batch, seed):
    alone = [int(i) for b in torch.utils.data.DataLoader(list(range(count)), batch, shuffle=True,
                                                         generator=torch.Generator().manual_seed(seed)) for i in b]
    assert list(RankSampler(count, seed, Ranks())) == alone
    world = 2
    shares = [list(RankSampler(count, seed, Ranks(r, world))) for r in range(world)]
    assert len(shares[0]) == len(shares[1]) == -(-count // world)
    step = Ranks(0, world).share(batch)
    padded = alone + alone[: (-count) % world]
    for i in range(0, len(shares[0]), step):  # step i of every rank together: the single-process batch i
        together = sorted(x for share in shares for x in share[i: i + step])
        assert together == sorted(padded[i * world: (i + step) * world])


def test_a_batch_that_does_not_split_over_the_ranks_is_refused():
    with pytest.raises(ValueError, match="batch size 5 does not split evenly over 2 processes"):
        Ranks(0, 2).share(5)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(2 * 6 * 6, 3))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, generator=g)


def _rank(rank: int, world: int, store: str, out: str) -> None:
    """One rank: a DDP step with global BatchNorm on its share, its gradients and
    statistics saved; then one weight spoilt on rank 1, and what agree() says."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    ranks = Ranks(rank, world)
    net = _net()
    ddp = wrap(net, ranks, sync_bn=True)
    x, y = _batch()
    loss = torch.nn.functional.mse_loss(ddp(x[rank::world]), y[rank::world])
    loss.backward()
    result = {"grads": {k: p.grad for k, p in net.named_parameters()}, "buffers": dict(net.named_buffers()),
              "digest": agree(net, ranks)}
    if rank == 1:
        with torch.no_grad():
            net[0].weight[0, 0, 0, 0] += 1e-6
    try:
        agree(net, ranks)
    except RuntimeError as e:
        result["spoilt"] = str(e)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # leave without C++ static destructors: now and then one aborted on a gloo thread still
    # joinable ("terminate called without an active exception", SIGABRT) after all was saved
    os._exit(0)


def test_global_batchnorm_under_ddp_gives_the_single_process_gradients(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    net = _net()
    x, y = _batch()
    torch.nn.functional.mse_loss(net(x), y).backward()
    scale = max(float(p.grad.abs().max()) for p in net.parameters())
    for name, p in net.named_parameters():
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name])  # DDP's all-reduce: the same
        # float rounding (sums in another order): 1e-5 of the largest gradient (a conv bias before a
        # BatchNorm has a true gradient of 0, and float noise either way)
        torch.testing.assert_close(ranks[0]["grads"][name], p.grad, rtol=1e-5, atol=1e-5 * scale)
    for name, b in net.named_buffers():  # running statistics of the global batch (unbiased variance)
        torch.testing.assert_close(ranks[0]["buffers"][name], b, rtol=1e-5, atol=1e-7)
    assert ranks[0]["digest"] == ranks[1]["digest"] and len(ranks[0]["digest"]) == 64
    assert ranks[0]["spoilt"] == ranks[1]["spoilt"] == "ranks [1] hold other weights than rank 0 after the epoch"


def _epochs(output: str) -> list[str]:
    return re.findall(r"epoch (\d)/\d +loss ([\d.]+)", output)


def test_two_processes_train_the_single_process_classifier_and_resume(tiny_voc, tmp_path):
    """Tolerance: the epoch losses agree to the 4 printed decimals and the weights to
    1e-3 absolute after 2 epochs (4 Adam steps of lr 1e-3): Adam's normalised steps turn
    float-rounding differences in near-zero gradients (sums in another order over the
    ranks) into differences of up to the learning rate."""
    args = [str(tiny_voc), *CLASSIFIER, "--sync-bn", "--device", "cpu"]
    one = runner.invoke(app, ["train", "classifier", "--model", str(tmp_path / "one"), "--epochs", "2", *args])
    assert one.exit_code == 0, one.output
    two = tmp_path / "two"
    first = _run("train", "classifier", "--model", str(two), "--epochs", "1", *args, "--nproc", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    again = _run("train", "classifier", "--model", str(two), "--epochs", "2", *args, "--nproc", "2", "--resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming {two} after epoch 1" in again.stdout
    assert _epochs(first.stdout + again.stdout) == _epochs(one.output) and len(_epochs(one.output)) == 2
    assert (first.stdout + again.stdout).count("[2 ranks, identical") == 2  # checked after each epoch
    assert first.stdout.count("model ->") == 1  # rank 0 reports, alone
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "one" / "classifier.safetensors")), load_file(str(two / "classifier.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].double().numpy(), a[k].double().numpy(), rtol=0, atol=1e-3, err_msg=k)
    assert json.loads((two / "config.json").read_text())["training"]["sync_bn"] is True


def test_a_rank_whose_share_is_unreadable_skips_the_step_with_the_others(tiny_voc, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(tiny_voc, root)
    broken = next((root / "JPEGImages").glob("train_*.jpg"))
    broken.write_bytes(b"not a jpeg")  # a rank's whole share of one step (batch 2 over 2 ranks)
    r = _run("train", "classifier", "--model", str(tmp_path / "model"), "--epochs", "1", str(root), *CLASSIFIER,
             "--device", "cpu", "--nproc", "2")
    assert r.returncode == 0, r.stdout + r.stderr  # not a rank waiting forever for the other
    assert broken.name in (tmp_path / "model" / "train_errors.txt").read_text()


def test_the_icn_and_the_student_train_on_two_processes(with_icn, tiny_voc, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(with_icn[0], model)
    for name in ("icn.safetensors", "icn_train_state.pt"):
        (model / name).unlink()
    r = _run("train", "icn", str(tiny_voc), "--model", str(model), "--epochs", "2", "--supervision", "saliency",
             *ICN_ARGS, "--device", "cpu", "--nproc", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("[2 ranks, identical") == 2 and r.stdout.count("ICN ->") == 1, r.stdout
    r = _run("train", "student", str(tiny_voc), "--model", str(model), "--epochs", "1", "--batch-size", "2",
             "--threshold", "0.05", "--quiet", "--device", "cpu", "--nproc", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("[2 ranks, identical") == 1 and r.stdout.count("student ->") == 1, r.stdout
    assert (model / "student.safetensors").is_file() and (model / "student-labels" / "train.json").is_file()


def test_a_global_batch_that_does_not_split_is_refused_before_any_process_starts(tiny_voc, tmp_path):
    r = runner.invoke(app, ["train", "classifier", str(tiny_voc), "--model", str(tmp_path / "m"), "--batch-size", "3",
                            "--nproc", "2"])
    assert r.exit_code == 2 and r.output.count("does not split evenly over 2 processes") == 1, r.output
    assert not (tmp_path / "m").exists()
