"""`icn-rt infer` as a batch job: image sources, bad inputs recorded and skipped, JSONL
shards merged into COCO JSON, --resume after a kill or Ctrl-C equal to an uninterrupted run."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from icn_rt.cli import app
from icn_rt.data import rle as rlelib
from icn_rt.data.images import read_image
from icn_rt.data.voc import VOCDataset
from icn_rt.errors import InputError
from icn_rt.runtime.loading import Loaded
from icn_rt.runtime.sources import list_images

runner = CliRunner()


@pytest.fixture(scope="module")
def job(tiny_voc, classifier, tmp_path_factory):
    """The 6 val images and their proposals, copied where a test may spoil them."""
    root = tmp_path_factory.mktemp("job")
    images, props = root / "images", root / "props"
    images.mkdir()
    props.mkdir()
    for image_id in VOCDataset(tiny_voc, "val", load_images=False).ids:
        shutil.copy(tiny_voc / "JPEGImages" / f"{image_id}.jpg", images)
        shutil.copy(tiny_voc / "Proposals" / f"{image_id}.mat", props)
    return classifier, images, props


def _copy(job, tmp_path):
    model, images, props = job
    shutil.copytree(images, tmp_path / "images")
    shutil.copytree(props, tmp_path / "props")
    return model, tmp_path / "images", tmp_path / "props"


def _infer(model, sources, props, out, *extra):
    args = ["infer", str(model), *map(str, sources), "--out", str(out), "--quiet", *extra]
    if props is not None:
        args += ["--proposals", str(props)]
    return runner.invoke(app, args)


def _records(out: Path) -> dict[str, dict]:
    """Last record per image id, from every shard."""
    found = {}
    for shard in sorted(out.with_name(out.name + ".parts").glob("part-*.jsonl")):
        for line in shard.read_text().splitlines():
            record = json.loads(line)
            found[record["id"]] = record
    return found


def _same(a: list[dict], b: list[dict]) -> None:
    """Results equal: the same instances in the same order with the same masks; scores
    to float32 rounding (a batch of other images changes the last bits of a CPU conv)."""
    assert [{k: v for k, v in e.items() if k != "score"} for e in a] == \
        [{k: v for k, v in e.items() if k != "score"} for e in b]
    np.testing.assert_allclose([e["score"] for e in a], [e["score"] for e in b], rtol=1e-5, atol=0)


def _same_files(a: Path, b: Path) -> None:
    _same(json.loads(a.read_text()), json.loads(b.read_text()))


# --- sources ------------------------------------------------------------------------------

def test_images_come_from_directories_globs_and_list_files(tmp_path):
    for name in ("b.jpg", "a.png", "notes.txt", "sub/c.jpg", "sub/deep/d.JPG"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("# chosen\nsub/c.jpg\n\nb.jpg  # again\n")
    assert list_images([tmp_path]) == [tmp_path / "a.png", tmp_path / "b.jpg"]
    assert list_images([str(tmp_path / "**" / "*.[jJ]*")]) == [tmp_path / "b.jpg", tmp_path / "sub/c.jpg",
                                                               tmp_path / "sub/deep/d.JPG"]
    assert list_images([tmp_path / "list.txt", tmp_path / "a.png"]) == [tmp_path / "sub/c.jpg", tmp_path / "b.jpg",
                                                                        tmp_path / "a.png"]
    assert list_images([tmp_path / "a.png", tmp_path / "a.png"]) == [tmp_path / "a.png"]
    assert list_images([tmp_path / "missing.jpg"]) == [tmp_path / "missing.jpg"]  # fails, recorded, at load
    with pytest.raises(InputError, match="matches no image files"):
        list_images([str(tmp_path / "*.webp")])
    (tmp_path / "sub" / "b.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="image id 'b' is also the id of"):
        list_images([tmp_path, tmp_path / "sub"])


# --- bad input ------------------------------------------------------------------------------

def test_a_summary_names_how_many_images_failed_and_why_the_first_did():
    from icn_rt.runtime.result_log import InferSummary

    assert InferSummary(images=3).failures() == ""
    one = InferSummary(failed=[("/data/JPEGImages/a.jpg", "no proposals file")])
    assert one.failures() == "1 image failed (first: a.jpg: no proposals file)"
    two = InferSummary(failed=[("/x/b.png", "not an image"), ("/x/c.png", "empty file")])
    assert two.failures() == "2 images failed (first: b.png: not an image)"


def test_bad_inputs_are_recorded_and_the_rest_is_processed(job, tmp_path):
    model, images, props = _copy(job, tmp_path)
    ids = sorted(p.stem for p in images.iterdir())
    rgb = read_image(images / f"{ids[0]}.jpg")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    # images that must work: grey, RGBA, 16-bit; each with the proposals of its source image
    cv2.imwrite(str(images / "grey.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(images / "rgba.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(images / "deep.png"), bgr.astype(np.uint16) * 257)
    for name in ("grey", "rgba", "deep"):
        shutil.copy(props / f"{ids[0]}.mat", props / f"{name}.mat")
    # a large image (1200x900) with RLE proposals: works
    big = cv2.resize(bgr, (1200, 900), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(images / "large.jpg"), big)
    masks = np.zeros((3, 900, 1200), bool)
    masks[0, 100:500, 200:700] = masks[1, 400:880, 600:1150] = masks[2, :, :] = True
    (props / "large.json").write_text(json.dumps({"size": [900, 1200], "masks": [rlelib.encode(m)["counts"]
                                                                                  for m in masks]}))
    # a phone photo: pixels stored sideways, EXIF orientation 6 turns them into the large
    # image; its proposals are the large image's (made on the turned image): works, same
    # instances. The same photo with proposals made on the stored pixels: fails, saying why.
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    for name in ("turned", "sideways"):
        Image.fromarray(np.rot90(read_image(images / "large.jpg"), k=1)).save(images / f"{name}.png", exif=exif)
    shutil.copy(props / "large.json", props / "turned.json")
    (props / "sideways.json").write_text(json.dumps({"size": [1200, 900], "masks": [
        rlelib.encode(np.ascontiguousarray(np.rot90(m, k=1)))["counts"] for m in masks]}))
    # images that must fail, each for its own reason
    (images / "corrupt.jpg").write_bytes((images / f"{ids[1]}.jpg").read_bytes()[:200])
    (images / "empty.png").write_bytes(b"")
    cv2.imwrite(str(images / "huge.png"), np.zeros((8000, 9000), np.uint8))  # 72 MP, a small file
    shutil.copy(images / f"{ids[2]}.jpg", images / "wrongsize.jpg")
    shutil.copy(props / "large.json", props / "wrongsize.json")
    (props / f"{ids[3]}.mat").unlink()
    for name in ("corrupt", "empty", "huge"):
        shutil.copy(props / f"{ids[0]}.mat", props / f"{name}.mat")

    out = tmp_path / "out" / "results.json"
    r = _infer(model, [images], props, out, "--batch-size", "3")
    assert r.exit_code == 1, r.output
    errors = dict(line.split("\t") for line in (tmp_path / "out" / "results.json.errors.txt").read_text().splitlines())
    reasons = {Path(k).stem: v for k, v in errors.items()}
    assert set(reasons) == {"corrupt", "empty", "huge", "wrongsize", "sideways", ids[3]}
    assert reasons["corrupt"].endswith("not a decodable image (corrupt or unsupported format)")
    assert reasons["empty"].endswith("empty.png: file is empty")
    assert reasons["huge"].endswith("huge.png: image is 9000x8000 (72 MP), above the 64 MP limit (--max-pixels)")
    assert reasons["wrongsize"].endswith("wrongsize.json: proposals are 900x1200 but the image is 64x64")
    assert reasons[ids[3]].endswith(f"{ids[3]}.mat: proposal file not found")
    assert reasons["sideways"].endswith("sideways.json: proposals are 1200x900 but the image is 900x1200 (turned "
                                        "from 1200x900 by its EXIF orientation; make the proposals on the turned "
                                        "image, as icn-rt proposals does)")
    assert "6 images failed" in r.output
    records = _records(out)
    done = {k for k, v in records.items() if v["ok"]}
    assert done == {"grey", "rgba", "deep", "large", "turned", *ids} - {ids[3]}
    assert records["large"]["size"] == records["turned"]["size"] == [900, 1200]
    assert records["large"]["instances"]
    _same(records["turned"]["instances"], [{**e, "image_id": "turned"} for e in records["large"]["instances"]])
    for inst in records["large"]["instances"]:
        assert inst["segmentation"]["size"] == [900, 1200]
    # the 16-bit copy is the 8-bit image exactly; the RGBA one too: same instances
    _same(records["deep"]["instances"], [{**e, "image_id": "deep"} for e in records[ids[0]]["instances"]])
    _same(records["rgba"]["instances"], [{**e, "image_id": "rgba"} for e in records[ids[0]]["instances"]])
    merged = json.loads(out.read_text())
    assert merged == [e for k in sorted(done) for e in records[k]["instances"]]
    # --max-pixels lets the large one through: decoded, it meets its (wrong) proposals
    r = _infer(model, [images / "huge.png"], props, tmp_path / "huge.json", "--max-pixels", "80")
    assert r.exit_code == 1 and "1 image failed" in r.output
    assert "huge.mat: proposals are 64x64 but the image is 8000x9000" in (tmp_path / "huge.json.errors.txt").read_text()


def test_bad_arguments_are_one_line_errors(job, tmp_path):
    model, images, props = job
    r = _infer(model, [images], tmp_path / "nowhere", tmp_path / "r.json")
    assert r.exit_code == 2 and r.output.strip().endswith("nowhere: proposal directory not found")
    r = _infer(model, [str(tmp_path / "*.jpg")], props, tmp_path / "r.json")
    assert r.exit_code == 2 and "the pattern matches no image files" in r.output
    r = _infer(model, [images], props, tmp_path / "r.json", "--batch-size", "0")
    assert r.exit_code == 2 and "--batch-size must be at least 1" in r.output


# --- shards, resume ------------------------------------------------------------------------

def test_loader_workers_do_not_change_the_results(job, tmp_path):
    model, images, props = job
    for workers in ("0", "3"):
        r = _infer(model, [images], props, tmp_path / f"w{workers}.json", "--workers", workers, "--batch-size", "4")
        assert r.exit_code == 0, r.output
    assert (tmp_path / "w0.json").read_bytes() == (tmp_path / "w3.json").read_bytes()  # same batches
    assert json.loads((tmp_path / "w0.json").read_text())  # some instances


def test_the_next_batch_is_staged_before_this_one_is_predicted(job, tmp_path):
    """Overlap of copy and compute: with ``ahead=1`` batch k+1 is on its way to the device
    before batch k is handed to the predictor; the results are those of no overlap."""
    from icn_rt.runtime.infer import Batch, stage_ahead
    from icn_rt.runtime.predictor import Predictor, Staged

    model, images, props = job
    predictor = Predictor.from_dir(model)
    events = []

    class Recording:  # the real predictor's staging, with its calls written down
        def stage(self, inputs):
            events.append(f"stage {len(inputs)}")
            return predictor.stage(inputs)

    x = [np.full((3, 4, 4), i, np.float32) for i in range(5)]

    def run(ahead):
        events.clear()
        batches = [Batch([Loaded(Path(f"{i}"), None, None, x[i]) for i in range(s, min(s + 2, 5))], [])
                   for s in (0, 2, 4)] + [Batch([], [{"image": "bad"}])]
        for batch in stage_ahead(Recording(), iter(batches), ahead):
            events.append(f"predict {[b.path.name for b in batch.loaded]}")
            if batch.loaded:
                assert isinstance(batch.staged, Staged)
                np.testing.assert_array_equal(batch.staged.x.numpy(), np.stack([b.x for b in batch.loaded]))
            else:
                assert batch.staged is None and batch.failed == [{"image": "bad"}]
        return events

    assert run(ahead=1) == ["stage 2", "stage 2", "predict ['0', '1']", "stage 1", "predict ['2', '3']",
                            "predict ['4']", "predict []"]
    assert run(ahead=0) == ["stage 2", "predict ['0', '1']", "stage 2", "predict ['2', '3']", "stage 1",
                            "predict ['4']", "predict []"]
    for flag in ("--overlap", "--no-overlap"):
        r = _infer(model, [images], props, tmp_path / f"{flag}.json", flag, "--batch-size", "4")
        assert r.exit_code == 0, r.output
    assert (tmp_path / "--overlap.json").read_bytes() == (tmp_path / "--no-overlap.json").read_bytes()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_batch_staged_on_the_copy_stream_predicts_as_one_copied_in_line(job):
    """On a GPU the staged copy runs on its own stream: waited for on the GPU, it gives the
    instances of the plain copy, also with the next batch's copy under way."""
    from icn_rt.runtime.loading import LoadSettings, load
    from icn_rt.runtime.predictor import Predictor

    model, images, props = job
    items = [load(p, LoadSettings(64, props)) for p in sorted(images.iterdir())]
    args = [b.image for b in items], [b.proposals for b in items]
    xs = [b.x for b in items]
    gpu = Predictor.from_dir(model, "cuda")
    staged = gpu.stage(xs)
    assert staged.ready is not None and staged.x.is_cuda
    ahead = gpu.stage(xs[::-1])  # the next batch, on its way while this one computes
    got = gpu.predict(*args, staged)
    again = gpu.predict(args[0][::-1], args[1][::-1], ahead)
    plain = gpu.predict(*args, xs)

    def instances(predictions):
        return [[(i.class_id, i.proposal) for i in p.instances] for p in predictions]

    assert instances(got) == instances(plain) == instances(again)[::-1]
    assert instances(plain) != [[]] * len(items)


def test_resume_processes_only_what_is_missing(job, tmp_path):
    model, images, props = job
    paths = sorted(images.iterdir())
    full = tmp_path / "full.json"
    assert _infer(model, paths, props, full, "--batch-size", "2").exit_code == 0
    out = tmp_path / "r.json"
    assert _infer(model, paths[:4], props, out, "--batch-size", "2").exit_code == 0
    r = _infer(model, paths, props, out, "--batch-size", "2", "--resume")
    assert r.exit_code == 0, r.output
    assert "6 images" in r.output and "(4 done by an earlier run)" in r.output
    assert out.read_bytes() == full.read_bytes()  # the same batches: bit for bit
    shards = sorted((tmp_path / "r.json.parts").glob("part-*.jsonl"))
    assert [len(s.read_text().splitlines()) for s in shards] == [4, 2]
    # a finished run is simply redone without --resume
    assert _infer(model, paths, props, out, "--batch-size", "2").exit_code == 0
    assert len(list((tmp_path / "r.json.parts").glob("part-*.jsonl"))) == 1
    # other settings cannot resume these results
    r = _infer(model, paths, props, out, "--resume", "--icn-steps", "0", "--batch-size", "2")
    assert r.exit_code == 0, r.output  # T = 0 without an ICN is the same setting
    assert "(6 done by an earlier run)" in r.output


def test_an_unfinished_run_is_never_discarded_silently(job, tmp_path):
    model, images, props = job
    paths = sorted(images.iterdir())
    out = tmp_path / "r.json"
    assert _infer(model, paths, props, out, "--batch-size", "2").exit_code == 0
    shard = next((tmp_path / "r.json.parts").glob("part-*.jsonl"))
    lines = shard.read_text().splitlines(keepends=True)
    # as a crash leaves it: 3 images written, the 4th cut short, the run not finished
    shard.write_text("".join(lines[:3]) + lines[3][:40])
    state = json.loads((tmp_path / "r.json.parts" / "run.json").read_text())
    (tmp_path / "r.json.parts" / "run.json").write_text(json.dumps({**state, "finished": False}))
    r = _infer(model, paths, props, out)
    assert r.exit_code == 2 and "unfinished run's results: pass --resume to continue it, or --overwrite" in r.output
    r = _infer(model, paths, props, out, "--resume", "--batch-size", "2")
    assert r.exit_code == 0, r.output
    assert "(3 done by an earlier run)" in r.output
    full = tmp_path / "full.json"
    assert _infer(model, paths, props, full, "--batch-size", "2").exit_code == 0
    _same_files(out, full)
    # resuming with other proposals is refused, naming what changed
    other = tmp_path / "other_props"
    shutil.copytree(props, other)
    (tmp_path / "r.json.parts" / "run.json").write_text(json.dumps({**state, "finished": False}))
    r = _infer(model, paths, other, out, "--resume")
    assert r.exit_code == 2 and "was made with another proposals" in r.output
    r = _infer(model, paths, other, out, "--overwrite")
    assert r.exit_code == 0, r.output


def test_failed_images_are_retried_on_resume(job, tmp_path):
    model, images, props = _copy(job, tmp_path)
    victim = sorted(props.iterdir())[0]
    saved = victim.read_bytes()
    victim.unlink()
    out = tmp_path / "r.json"
    assert _infer(model, [images], props, out).exit_code == 1
    assert (tmp_path / "r.json.errors.txt").exists()
    victim.write_bytes(saved)
    r = _infer(model, [images], props, out, "--resume")
    assert r.exit_code == 0, r.output
    assert "(5 done by an earlier run)" in r.output
    assert not (tmp_path / "r.json.errors.txt").exists()
    full = tmp_path / "full.json"
    assert _infer(model, [images], props, full).exit_code == 0
    _same_files(out, full)


def test_proposals_made_on_the_fly_equal_stored_ones(job, tmp_path):
    model, images, props = job
    paths = sorted(images.iterdir())[:2]
    stored, fly = tmp_path / "stored.json", tmp_path / "fly.json"
    assert _infer(model, paths, props, stored).exit_code == 0
    r = _infer(model, paths, None, fly, "--workers", "1")
    assert r.exit_code == 0, r.output
    assert "selective-search proposals on the fly" in r.output
    assert fly.read_bytes() == stored.read_bytes()


# --- faults: a real process, killed -----------------------------------------------------

def _many(job, tmp_path, copies: int):
    """``copies`` renamed copies of each val image (with proposals)."""
    model, images, props = job
    many, many_props = tmp_path / "many", tmp_path / "many_props"
    many.mkdir()
    many_props.mkdir()
    for src in sorted(images.iterdir()):
        for c in range(copies):
            shutil.copy(src, many / f"{src.stem}_{c:02d}.jpg")
            shutil.copy(props / f"{src.stem}.mat", many_props / f"{src.stem}_{c:02d}.mat")
    return model, many, many_props


def _command(model, images, props, out, *extra):
    return [sys.executable, "-m", "icn_rt.cli", "infer", str(model), str(images), "--proposals", str(props),
            "--out", str(out), "--quiet", "--batch-size", "3", "--workers", "2", *extra]


def _interrupt(cmd, out: Path, sig: int, after: int) -> subprocess.CompletedProcess:
    """Start ``cmd``, send ``sig`` once ``after`` images are in the shards."""
    # SIGINT at its default in the child, as under a terminal: a shell script's background
    # job (CI may be one) starts with SIGINT ignored, and Python keeps an inherited SIG_IGN
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    parts = out.with_name(out.name + ".parts")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(len(p.read_bytes().splitlines()) for p in parts.glob("part-*.jsonl")) >= after:
            proc.send_signal(sig)
            break
        time.sleep(0.002)
    output, _ = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, output)


@pytest.mark.slow
@pytest.mark.parametrize("sig, overlap", [(signal.SIGKILL, "--overlap"), (signal.SIGINT, "--no-overlap")],
                         ids=["kill-overlapped", "ctrl-c"])
def test_a_killed_job_resumes_to_the_uninterrupted_result(job, tmp_path, sig, overlap):
    """Killed with a batch staged ahead (as on a GPU) or Ctrl-C without: resumed, the same results."""
    model, many, props = _many(job, tmp_path, copies=12)  # 72 images, 24 batches
    full = tmp_path / "full.json"
    done = subprocess.run(_command(model, many, props, full), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "r.json"
    first = _interrupt(_command(model, many, props, out, overlap), out, sig, after=6)
    if sig == signal.SIGKILL:
        assert first.returncode == -signal.SIGKILL
    else:
        assert first.returncode == 130, first.stdout
        assert "rerun with --resume" in first.stdout
    written = sum(len(p.read_text().splitlines()) for p in (tmp_path / "r.json.parts").glob("part-*.jsonl"))
    assert 6 <= written < 72, "the job was not interrupted in the middle"
    assert not out.exists()
    second = subprocess.run(_command(model, many, props, out, "--resume"), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert f"({written} done by an earlier run)" in second.stdout
    _same_files(out, full)
    ids = [r["id"] for p in sorted((tmp_path / "r.json.parts").glob("part-*.jsonl"))
           for r in map(json.loads, p.read_text().splitlines())]
    assert len(ids) == len(set(ids)) == 72  # nothing twice, nothing missing
