"""The shared training loop (icn_rt/training/loop.py) on a model small enough to check by hand."""

import json
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from icn_rt.training.distributed import Ranks
from icn_rt.training.loop import Run, RunFiles, Schedule, begin

FILES = RunFiles("w.safetensors", "state.pt", "log.json")


class Points(Dataset):
    """y = 3x − 1 at 10 points; records the epochs it was told."""

    def __init__(self) -> None:
        self.x = torch.linspace(-1, 1, 10)[:, None]
        self.epoch, self.told = 0, []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if not self.told or self.told[-1] != self.epoch:
            self.told.append(self.epoch)
        return self.x[i], 3 * self.x[i] - 1


@dataclass
class Entry:
    epoch: int
    loss: float
    lr: float


def _run(tmp_path, epochs: int, resume: bool = False, skip=lambda epoch, b: False):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    run = Run(tmp_path, FILES, model, optimiser, Ranks(), "cpu",
              save=lambda: save_file(dict(model.state_dict()), str(tmp_path / FILES.weights)))
    lines = []
    if resume:
        run.resume(Entry, lines.append, "the line")
    data = Points()

    def step(trainer, batch, epoch, b):
        if skip(epoch, b):
            return None
        x, y = batch
        return {"a": torch.nn.functional.mse_loss(trainer(x), y), "b": 0 * trainer(x).sum()}, len(x)

    run.fit(data, step, Schedule(epochs=epochs, batch_size=4, seed=1), lr=lambda epoch, b: 0.1 * 0.5 ** epoch,
            title="t",
            progress=False, report=lambda e: (Entry(e.number, e.loss, e.lr), f"epoch {e.number} {e.parts}"),
            log=lines.append)
    return model, run, data, lines


def test_a_run_stopped_and_resumed_ends_as_the_uninterrupted_one(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    whole, run, data, lines = _run(tmp_path / "a", 4)
    assert data.told == [0, 1, 2, 3] and len(lines) == 4 and "'a'" in lines[0] and "'b': 0.0" in lines[0]
    assert [e.lr for e in run.entries] == [0.1, 0.05, 0.025, 0.0125]
    assert run.entries[-1].loss < run.entries[0].loss
    _run(tmp_path / "b", 2)
    resumed, again, data, lines = _run(tmp_path / "b", 4, resume=True)
    assert lines[0] == "resuming the line after epoch 2" and data.told == [2, 3]
    assert torch.equal(resumed.weight, whole.weight) and torch.equal(resumed.bias, whole.bias)
    assert json.loads((tmp_path / "b" / "log.json").read_text()) == json.loads((tmp_path / "a" / "log.json").read_text())
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["epoch"] == 4
    assert not (tmp_path / "b" / "state.pt.tmp").exists()


def test_a_step_that_returns_none_takes_no_step(tmp_path):
    torch.manual_seed(0)
    before = torch.nn.Linear(1, 1).state_dict()
    model, run, _, _ = _run(tmp_path, 2, skip=lambda epoch, b: True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert [(e.loss, e.lr) for e in run.entries] == [(0.0, 0.1), (0.0, 0.05)]


def test_begin_tells_whether_there_is_a_run_to_resume(tmp_path):
    assert not begin(tmp_path, FILES, True, "cpu", print, True).resuming
    (tmp_path / FILES.state).write_bytes(b"")
    this = begin(tmp_path, FILES, True, "cpu", print, True)
    assert this.resuming and this.ranks.main and this.progress and this.device == "cpu"
    assert not begin(tmp_path, FILES, False, "cpu", print, True).resuming
