"""Import every module of icn_rt on this Python and list what is missing, so a machine that
lacks a package (the lent GPU machine, which reaches no registry) says so in seconds.

    python3 scripts/gpu_import_check.py [--wheels DIR --site SITE] [--json PATH]

``--wheels``/``--site``: also import the top-level modules of every wheel in DIR and check
each comes from SITE, where scripts/gpu_check.sh installed them. Exit 1 if any import fails.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import traceback
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_modules(package: str = "icn_rt") -> list[str]:
    """Every module and subpackage of ``package``, found on disk without importing them."""
    root = REPO / package
    names = [package]
    for info in pkgutil.walk_packages([str(root)], prefix=f"{package}."):
        names.append(info.name)
    return sorted(names)


def wheel_modules(wheel: Path) -> list[str]:
    """The top-level importable names a wheel installs (its top_level.txt, else its top folders)."""
    with zipfile.ZipFile(wheel) as z:
        listed = [n for n in z.namelist() if n.endswith(".dist-info/top_level.txt")]
        if listed:
            return sorted(filter(None, z.read(listed[0]).decode().split()))
        tops = {n.split("/")[0] for n in z.namelist()}
    return sorted(t.removesuffix(".py") for t in tops
                  if not t.endswith((".dist-info", ".data")) and (t.endswith(".py") or "." not in t))


def try_import(name: str) -> dict:
    try:
        module = importlib.import_module(name)
    except BaseException as e:  # noqa: BLE001 - any failure is what this check reports
        missing = getattr(e, "name", None) if isinstance(e, ModuleNotFoundError) else None
        return {"module": name, "ok": False, "error": f"{type(e).__name__}: {e}", "missing": missing,
                "traceback": traceback.format_exc(limit=3)}
    return {"module": name, "ok": True, "file": getattr(module, "__file__", None)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", type=Path, help="folder of wheels installed into --site")
    ap.add_argument("--site", type=Path, help="the folder the wheels were installed into")
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args()
    results = [try_import(name) for name in package_modules()]
    wheels = []
    for wheel in sorted(args.wheels.glob("*.whl")) if args.wheels else []:
        for name in wheel_modules(wheel):
            r = try_import(name)
            inside = bool(r["ok"] and r["file"] and args.site
                          and Path(r["file"]).resolve().is_relative_to(args.site.resolve()))
            if r["ok"] and not inside:
                r.update(ok=False, error=f"imported from {r['file']}, not from {args.site}")
            wheels.append({"wheel": wheel.name, **r})
    failed = [r for r in results + wheels if not r["ok"]]
    missing = sorted({r["missing"] for r in failed if r.get("missing")})
    report = {"python": sys.version.split()[0], "modules": len(results), "wheel_modules": wheels,
              "failed": failed, "missing": missing}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"imported {len(results) - sum(not r['ok'] for r in results)}/{len(results)} icn_rt modules"
          + (f" and {sum(r['ok'] for r in wheels)}/{len(wheels)} wheel modules" if args.wheels else "")
          + f" on Python {report['python']}")
    for r in failed:
        print(f"  {r['module']}: {r['error']}")
    if missing:
        print("missing: " + ", ".join(missing) + " (add a wheel to scripts/gpu_wheels.txt)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
