"""A job's results as they come: JSONL shards in ``<out>.parts/`` (one per run, one line
per image, flushed and synced after every batch), merged into the COCO results JSON
``<out>`` in input order when the job ends, with the failures in ``<out>.errors.txt``. A
run that stops (crash, kill, Ctrl-C) loses only what was in flight; a rerun with
``resume`` skips every image with a result and retries those that failed."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from icn_rt.errors import InputError


@dataclass
class InferSummary:
    """Of the images asked for: ``images`` with results (``empty``: without instances),
    ``failed`` (path, reason), ``missing`` (not reached: interrupted), ``skipped`` (done by an
    earlier run, with ``--resume``)."""

    images: int = 0
    instances: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    empty: int = 0
    missing: int = 0
    skipped: int = 0
    interrupted: bool = False

    def failures(self) -> str:
        """How many images failed and why the first did (for a one-line error); '' if none."""
        if not self.failed:
            return ""
        path, reason = self.failed[0]
        return f"{len(self.failed)} image{'s' * (len(self.failed) > 1)} failed (first: {Path(path).name}: {reason})"


class ResultLog:
    """``<out>.parts/``: ``run.json`` (what made the results: the fingerprint, and whether
    the run finished) and ``part-NNNN.jsonl`` shards, one per run. A line is one image:
    ``{"image": absolute path, "id", "ok": true, "size": [H, W], "instances": [COCO
    result entries]}`` or ``{"image", "id", "ok": false, "error": reason}``; for an
    image with several lines the last one counts. A line cut short by a crash is ignored."""

    def __init__(self, out: Path, fingerprint: dict, resume: bool, overwrite: bool = False) -> None:
        self.out = out
        self.dir = out.with_name(out.name + ".parts")
        run = self.dir / "run.json"
        if overwrite:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists() and not resume:
            state = _read_state(run)
            if state is not None and not state.get("finished", False):
                raise InputError(self.dir, "holds an unfinished run's results: pass --resume to continue it, "
                                           "or --overwrite to start over")
            shutil.rmtree(self.dir)
        if resume and self.dir.exists():
            state = _read_state(run)
            if state is not None and state.get("fingerprint") != fingerprint:
                changed = sorted(k for k in fingerprint if fingerprint[k] != state.get("fingerprint", {}).get(k))
                raise InputError(self.dir, f"was made with another {', '.join(changed) or 'setup'}; rerun "
                                           "without --resume (or with --overwrite) to start over")
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json(run, {"fingerprint": fingerprint, "finished": False})
        self.shards = sorted(self.dir.glob("part-*.jsonl"))
        self.done = {key for key, record in self.index().items() if record[2]}
        self._file = None

    def index(self) -> dict[str, tuple[int, int, bool]]:
        """image key -> (shard, byte offset, ok) of its last complete line."""
        index = {}
        for s, shard in enumerate(self.shards):
            with open(shard, "rb") as f:
                offset = 0
                for line in f:
                    if line.endswith(b"\n"):
                        try:
                            record = json.loads(line)
                            index[record["image"]] = (s, offset, bool(record["ok"]))
                        except (ValueError, KeyError, TypeError):
                            pass
                    offset += len(line)
        return index

    def write(self, records: list[dict]) -> None:
        """Append ``records`` to this run's shard and make them durable."""
        if not records:
            return
        if self._file is None:
            path = self.dir / f"part-{len(self.shards):04d}.jsonl"
            self.shards.append(path)
            self._file = open(path, "ab")
        self._file.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def merge(self, paths: list[Path]) -> InferSummary:
        """Write ``<out>`` (the COCO results of ``paths``, in their order) and
        ``<out>.errors.txt`` from the shards, one record in memory at a time; marks the
        run finished."""
        self.close()
        index = self.index()
        summary = InferSummary()
        errors = self.out.with_name(self.out.name + ".errors.txt")
        tmp = self.out.with_name(self.out.name + ".partial")
        files = [open(shard, "rb") for shard in self.shards]
        try:
            with open(tmp, "w") as out, open(errors.with_suffix(".partial"), "w") as err:
                out.write("[")
                first = True
                for path in paths:
                    where = index.get(image_key(path))
                    if where is None:
                        summary.missing += 1
                        continue
                    f = files[where[0]]
                    f.seek(where[1])
                    record = json.loads(f.readline())
                    if not record["ok"]:
                        summary.failed.append((record["image"], record["error"]))
                        err.write(f"{record['image']}\t{record['error']}\n")
                        continue
                    summary.images += 1
                    summary.instances += len(record["instances"])
                    summary.empty += not record["instances"]
                    for entry in record["instances"]:
                        out.write(("" if first else ",\n") + json.dumps(entry))
                        first = False
                out.write("]\n")
        finally:
            for f in files:
                f.close()
        os.replace(tmp, self.out)
        if summary.failed:
            os.replace(errors.with_suffix(".partial"), errors)
        else:
            errors.with_suffix(".partial").unlink()
            errors.unlink(missing_ok=True)
        state = _read_state(self.dir / "run.json") or {}
        _write_json(self.dir / "run.json", {**state, "finished": summary.missing == 0})
        return summary


def image_key(path: Path) -> str:
    return str(path.resolve())


def _read_state(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else None
    except (OSError, ValueError):
        return None


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
