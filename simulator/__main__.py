"""``python -m simulator [flags]``: the same as ``tiergate mock-upstream [flags]``."""

import sys

from simulator.cli import main

sys.exit(main(sys.argv[1:]))
