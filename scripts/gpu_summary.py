"""summary.md of a scripts/gpu_check.sh run: what each step did and where its results are.

    python3 scripts/gpu_summary.py OUT IMPORTS_JSON --dry-run 0|1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("imports", type=Path)
    ap.add_argument("--dry-run", type=int, default=0)
    args = ap.parse_args()
    steps = json.loads((args.out / "steps.json").read_text())
    dry = " (dry run on the CPU: plumbing only, no figure here is a GPU's)" if args.dry_run else ""
    lines = ["# GPU check" + dry,
             "", "| step | exit code | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {s['step']} | {s['rc']} | {s['seconds']} | {s['note']} |" for s in steps]
    failed = [s["step"] for s in steps if s["rc"] != 0]
    lines += ["", f"{len(steps) - len(failed)} of {len(steps)} steps passed" + (f"; failed: {', '.join(failed)}"
                                                                                 if failed else "") + "."]
    if args.imports.is_file():
        report = json.loads(args.imports.read_text())
        package_failures = sum(1 for r in report["failed"] if not r.get("wheel"))
        wheels = report["wheel_modules"]
        lines += ["", f"Imports on Python {report['python']}: {report['modules'] - package_failures} of "
                      f"{report['modules']} icn_rt modules, {sum(r['ok'] for r in wheels)} of {len(wheels)} "
                      "wheel modules."]
        lines += [f"- {r['module']}: {r['error']}" for r in report["failed"]]
    results = sorted(p.name for p in args.out.iterdir() if p.name not in ("steps.json", "summary.md", "logs.tar.gz"))
    lines += ["", "Results: " + (", ".join(results) if results else "none") + "; every log in logs.tar.gz."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
