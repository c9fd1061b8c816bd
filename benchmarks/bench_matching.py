"""The matching stage side by side: the baseline's per-proposal loop
(:mod:`icn_rt.baseline`), the NumPy reference (``tests/reference.py``), Numba CPU and
Numba CUDA, on the same inputs, for N proposals × K maps at S² pixels.

Two contests per case:

- ``vanilla`` — the PRM score the baseline computes (Σ_P R, Σ over P's own contour,
  background penalty), real-valued PRMs: baseline vs NumPy reference vs Numba (run sums
  over packed masks);
- ``rebalanced`` — the paper's Eq. 5 on binary maps (icn-rt's default after the ICN):
  NumPy reference vs Numba (popcounts of ANDs).

Inputs: random ellipse proposals (0.1 % to 40 % of the image), Gaussian-blob PRMs,
smooth class maps for the backgrounds. The Numba contestants read proposals packed (as
the predictor prepares them once per image); packing time is reported apart. Each
Numba contestant also runs greedy mask NMS over its K chosen masks. Selections (best
proposal per map) must be identical to the baseline's and the reference's.

The baseline costs ~1 ms per (map, proposal) pair; where all pairs would take longer
than ``--baseline-budget`` seconds it runs on the first ``--baseline-sample`` proposals
of every map and the full time is that per-pair time times the pairs, marked
``"extrapolated": true`` (its cost is linear in pairs: a loop over them). The NumPy
reference is skipped above ``--reference-limit`` proposal pixels. On a GPU the CUDA
contestant also reports the bandwidth achieved on the packed proposals. Writes JSON
with the machine and versions, and a Markdown table beside it::

    python benchmarks/bench_matching.py --out benchmarks/results/matching_cpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
from machine import machine_info

from icn_rt import kernels
from icn_rt.baseline.pipeline import BaselineSettings, _best_proposal
from icn_rt.data.proposals import Proposals
from icn_rt.matching import background_map
from icn_rt.matching.scores import MatchingSettings, Prepared, _rebalanced_terms, _vanilla_terms


def _test_reference():
    """The tests' plain references (``tests/reference.py``): the NumPy contestant. Loaded
    from its file, as this script runs from the benchmarks folder."""
    path = Path(__file__).resolve().parents[1] / "tests" / "reference.py"
    spec = importlib.util.spec_from_file_location("icn_rt_tests_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _test_reference()


def _timed(fn, repeats: int):
    """``({"seconds": median, "min_seconds": fastest}, result)`` over ``repeats`` runs after a warm-up."""
    result = fn()  # warm-up (and Numba's compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "min_seconds": min(times)}, result


def _ellipse_masks(rng, n: int, size: int, start: int = 0, count: int | None = None):
    """Masks ``start..start+count`` of a seeded stream of n ellipses (bool), deterministic per index."""
    count = n - start if count is None else count
    out = np.zeros((count, size, size), bool)
    for j in range(count):
        r = np.random.default_rng([rng, start + j])
        area = size * size * 10 ** r.uniform(-3, np.log10(0.4))
        aspect = r.uniform(0.4, 2.5)
        ax = max(1, int(np.sqrt(area / np.pi * aspect)))
        ay = max(1, int(np.sqrt(area / np.pi / aspect)))
        canvas = np.zeros((size, size), np.uint8)
        cv2.ellipse(canvas, (int(r.integers(0, size)), int(r.integers(0, size))), (ax, ay), r.uniform(0, 180),
                    0, 360, 1, -1)
        out[j] = canvas.astype(bool)
    return out


def _packed(seed: int, n: int, size: int, chunk: int = 256) -> tuple[np.ndarray, float]:
    """All n masks packed, built in chunks (N × S² bools need not fit); and the Numba packing time."""
    cpu = kernels.backend("cpu")
    cpu.pack(np.zeros((1, 8, size), bool))  # compile (or load Numba's cache) outside the timing
    parts, pack_s = [], 0.0
    for s in range(0, n, chunk):
        masks = _ellipse_masks(seed, n, size, s, min(chunk, n - s))
        start = time.perf_counter()
        parts.append(cpu.pack(masks))
        pack_s += time.perf_counter() - start
    return np.concatenate(parts), pack_s


def _maps(seed: int, k: int, size: int):
    """K PRMs (``float32 [K, S, S]``, each a few Gaussian blobs, sum 1), K backgrounds
    (PRM's rule on smooth class maps) and K binary maps (each PRM normalised, ≥ 0.5)."""
    rng = np.random.default_rng([seed, 1])
    yy, xx = np.mgrid[:size, :size]
    prms = np.zeros((k, size, size), np.float32)
    for i in range(k):
        for _ in range(3):
            cy, cx, sd = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.03, 0.15) * size
            prms[i] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sd * sd)).astype(np.float32) * rng.uniform(0.2, 1)
        prms[i] /= prms[i].sum()
    class_maps = cv2.GaussianBlur(rng.random((k, size // 8, size // 8)).astype(np.float32).transpose(1, 2, 0),
                                  (5, 5), 0).reshape(size // 8, size // 8, k).transpose(2, 0, 1)
    backgrounds = np.stack([background_map(c, (size, size)) for c in class_maps])
    binary = (prms / prms.reshape(k, -1).max(1)[:, None, None] >= 0.5).astype(np.float64)
    return prms, backgrounds, binary


def _baseline(seed, n, k, size, prms, backgrounds, budget: float, sample: int, per_pair_guess: float = 1e-3):
    """The baseline loop over all pairs, or over ``sample`` proposals per map, extrapolated."""
    full = n * k * per_pair_guess * (size / 448) ** 2 <= budget
    count = n if full else min(sample, n)
    props = Proposals.from_masks(_ellipse_masks(seed, n, size, 0, count), np.zeros(count))
    s = BaselineSettings(max_proposals=count)
    start = time.perf_counter()
    picks = [_best_proposal(prms[i], backgrounds[i], props, s)[0] for i in range(k)]
    took = time.perf_counter() - start
    seconds = took if full else took / (count * k) * n * k
    return {"seconds": seconds, "extrapolated": not full, "pairs_timed": count * k}, np.array(picks) if full else None


def _reference_vanilla(seed, n, size, prms, backgrounds, settings, chunk=128):
    scores = np.zeros((len(prms), n))
    for s in range(0, n, chunk):
        masks = _ellipse_masks(seed, n, size, s, min(chunk, n - s))
        for i in range(len(prms)):
            scores[i, s:s + len(masks)] = ref.vanilla_scores(prms[i], masks, backgrounds[i], settings.vanilla_balance,
                                                             settings.vanilla_penalty, settings.band_width,
                                                             settings.area_limits)
    return scores


def _reference_rebalanced(seed, n, size, binary, settings, chunk=128):
    scores = np.zeros((len(binary), n))
    for s in range(0, n, chunk):
        masks = _ellipse_masks(seed, n, size, s, min(chunk, n - s))
        for i in range(len(binary)):
            scores[i, s:s + len(masks)] = ref.rebalanced_scores(binary[i], masks, settings.alpha, settings.beta,
                                                                settings.gamma, settings.band_width,
                                                                settings.area_limits)
    return scores


def _best(scores) -> np.ndarray:
    return np.where(np.isfinite(scores).any(1), np.argmax(scores, 1), -1)


def _numba(backend, words, size, prms, backgrounds, binary, settings, repeats, nms_iou=0.3):
    """Numba matching (both contests) + NMS of the chosen masks -> timings and selections."""
    device = None
    if backend == "cuda":
        import torch

        device = torch.device("cuda")
        words = torch.from_numpy(words.view(np.int32)).to(device)
        prms_d = torch.from_numpy(prms).double().to(device)
        backgrounds_d = torch.from_numpy(backgrounds).to(device)
        binary_d = torch.from_numpy(binary).to(device)
        sync = torch.cuda.synchronize
    else:
        prms_d, backgrounds_d, binary_d = prms.astype(np.float64), backgrounds, binary

        def sync():
            return None

    k = kernels.backend(backend, device)
    prepared = Prepared.from_words(words, (size, size), k)

    def run(terms, maps, *extra):
        def go():
            scores = terms(maps, prepared, *extra, settings)[0]
            chosen = words[scores.argmax(1)]
            if device is None:
                order = np.argsort(-scores.max(1), kind="stable")
            else:
                order = torch.argsort(-scores.max(1).values, stable=True)
            k.nms(chosen, order, nms_iou)
            sync()
            return scores
        return go

    out = {}
    for name, go in (("vanilla", run(_vanilla_terms, prms_d, backgrounds_d)),
                     ("rebalanced", run(_rebalanced_terms, binary_d))):
        timing, scores = _timed(go, repeats)
        host = scores.cpu().numpy() if device is not None else scores
        out[name] = (timing, _best(host), host)
    if backend == "cuda":
        out["bandwidth"] = _bandwidth(k, words, binary_d, settings)
    return out


def _bandwidth(k, words, binary, settings, repeats: int = 20) -> dict:
    """The popcount kernel alone, timed with CUDA events: bytes of packed proposals read per second."""
    import torch

    maps = k.pack(binary > 0.5)
    both = torch.cat([maps, k.band(maps, binary.shape[2], settings.band_width)])
    k.and_counts(words, both)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        k.and_counts(words, both)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeats
    nbytes = words.numel() * 4
    copy = _copy_bandwidth()
    return {"kernel_seconds": seconds, "proposal_bytes": nbytes, "bytes_per_s": nbytes / seconds,
            "copy_bytes_per_s": copy, "fraction_of_copy_bandwidth": nbytes / seconds / copy,
            "note": "bytes of packed proposals over the popcount kernel's time (the maps stay in L2), "
                    "against a device-to-device copy of 1 GiB measured in the same run (bytes read + written)"}


def _copy_bandwidth(repeats: int = 10) -> float:
    import torch

    src = torch.empty(1 << 28, dtype=torch.int32, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * src.numel() * 4 / (start.elapsed_time(end) / 1000 / repeats)


def _gpu_ready() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "PyTorch is missing"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU on this machine"
    from icn_rt.kernels import ops_cuda

    if ops_cuda.SIMULATED:
        return False, "NUMBA_ENABLE_CUDASIM is set (the simulator is not a benchmark)"
    if not ops_cuda.available():
        return False, "Numba cannot use the GPU (install numba-cuda)"
    return True, ""


def run_case(seed, n, k, size, args, gpu: tuple[bool, str]) -> dict:
    settings = MatchingSettings(area_limits=(2e-5, 0.85))
    prms, backgrounds, binary = _maps(seed, k, size)
    words, pack_s = _packed(seed, n, size)
    case = {"proposals": n, "maps": k, "size": size, "pack_seconds": pack_s,
            "packed_bytes": int(words.nbytes), "vanilla": {}, "rebalanced": {}, "identical": {}}
    picks = {"vanilla": {}, "rebalanced": {}}
    scores = {"vanilla": {}, "rebalanced": {}}
    base, base_picks = _baseline(seed, n, k, size, prms, backgrounds, args.baseline_budget, args.baseline_sample)
    case["vanilla"]["baseline"] = base
    if base_picks is not None:
        picks["vanilla"]["baseline"] = base_picks
    if n * size * size <= args.reference_limit:
        for name, fn, maps in (("vanilla", _reference_vanilla, (prms, backgrounds)),
                               ("rebalanced", _reference_rebalanced, (binary,))):
            start = time.perf_counter()
            s = fn(seed, n, size, *maps, settings)
            seconds = time.perf_counter() - start
            case[name]["numpy"] = {"seconds": seconds}
            picks[name]["numpy"], scores[name]["numpy"] = _best(s), s
    else:
        case["vanilla"]["numpy"] = case["rebalanced"]["numpy"] = {"skipped": "over --reference-limit pixels"}
    contestants = ["cpu"] + (["cuda"] if gpu[0] else [])
    if not gpu[0]:
        case["vanilla"]["cuda"] = case["rebalanced"]["cuda"] = {"skipped": gpu[1]}
    for backend in contestants:
        got = _numba(backend, words, size, prms, backgrounds, binary, settings, args.repeats)
        for name in ("vanilla", "rebalanced"):
            case[name][backend], picks[name][backend], scores[name][backend] = got[name]
        if backend == "cuda":
            case["cuda_bandwidth"] = got["bandwidth"]
    for name in ("vanilla", "rebalanced"):
        names = sorted(picks[name])
        first = picks[name][names[0]]
        case["identical"][name] = {"compared": names, "equal": all(np.array_equal(first, picks[name][o]) for o in names)}
        if "numpy" in scores[name]:
            for backend in contestants:
                a, b = scores[name]["numpy"], scores[name][backend]
                finite = np.isfinite(a)
                # run sums are differences of row prefix sums: their error scales with the
                # row's total, not with the run's sum, so it is reported against the scores' scale
                diff = float(np.max(np.abs(a[finite] - b[finite]), initial=0.0))
                case["identical"][name][f"max_abs_difference_{backend}"] = diff
                case["identical"][name][f"max_difference_over_largest_score_{backend}"] = \
                    diff / max(float(np.max(np.abs(a[finite]), initial=0.0)), 1e-300)
                case["identical"][name][f"same_excluded_{backend}"] = bool(np.array_equal(finite, np.isfinite(b)))
        for backend in contestants:
            for against in ("baseline", "numpy"):
                theirs = case[name].get(against, {}).get("seconds")
                if theirs:
                    case[name][backend][f"speedup_vs_{against}"] = theirs / case[name][backend]["seconds"]
    return case


def _table(cases: list[dict]) -> str:
    lines = ["| N | K | S | baseline s (vanilla) | NumPy s | Numba CPU s | × baseline | Numba CUDA s | × baseline | "
             "rebalanced: NumPy s | Numba CPU s | CUDA s | selections identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def sec(d):
        return f"{d['seconds']:.4g}" if "seconds" in d else "—"

    for c in cases:
        v, r = c["vanilla"], c["rebalanced"]
        extra = " (extrap.)" if v["baseline"].get("extrapolated") else ""
        same = " / ".join(f"{k}: {'yes' if x['equal'] else 'NO'} ({', '.join(x['compared'])})"
                          for k, x in c["identical"].items())
        lines.append(f"| {c['proposals']} | {c['maps']} | {c['size']} | {sec(v['baseline'])}{extra} | {sec(v['numpy'])} | "
                     f"{sec(v['cpu'])} | {v['cpu'].get('speedup_vs_baseline', 0):.0f} | {sec(v['cuda'])} | "
                     f"{v['cuda'].get('speedup_vs_baseline', 0):.0f} | {sec(r['numpy'])} | {sec(r['cpu'])} | "
                     f"{sec(r['cuda'])} | {same} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proposals", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--maps", type=int, nargs="+", default=[1, 8, 20])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 1024])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline-budget", type=float, default=20.0,
                        help="seconds the baseline may take on a case before it is sampled")
    parser.add_argument("--baseline-sample", type=int, default=40)
    parser.add_argument("--reference-limit", type=float, default=1000 * 448 * 448,
                        help="largest N × S² the NumPy reference runs on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/matching.json"))
    args = parser.parse_args()
    gpu = _gpu_ready()
    cases = []
    for size in args.sizes:
        for n in args.proposals:
            for k in args.maps:
                case = run_case(args.seed, n, k, size, args, gpu)
                cases.append(case)
                v = case["vanilla"]
                print(f"N={n} K={k} S={size}: baseline {v['baseline']['seconds']:.3g}s"
                      f"{' (extrapolated)' if v['baseline']['extrapolated'] else ''}, "
                      f"cpu {v['cpu']['seconds']:.3g}s ({v['cpu'].get('speedup_vs_baseline', 0):.0f}x), "
                      f"identical {case['identical']['vanilla']['equal']}", flush=True)
    doc = {"benchmark": "matching", "machine": machine_info(), "settings": vars(args) | {"out": str(args.out)},
           "gpu": {"used": gpu[0], "why_not": gpu[1] or None}, "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(_table(cases))
    print(_table(cases))


if __name__ == "__main__":
    main()
