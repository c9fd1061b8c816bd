"""The ``icn-rt`` command line. Thin: each command parses, calls one function, prints. One
module per command group; :mod:`icn_rt.cli.common` holds what they share."""

from __future__ import annotations

import sys

from icn_rt.cli import data, engines, infer, serve, train  # noqa: F401  (importing one registers its commands)
from icn_rt.cli.common import app, auto_device, fail

__all__ = ["app", "main", "auto_device", "fail"]


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
