"""``python -m icn_rt.cli``: the command line (as torchrun relaunches it)."""

import sys

from icn_rt.cli import main

if __name__ == "__main__":
    sys.exit(main())
