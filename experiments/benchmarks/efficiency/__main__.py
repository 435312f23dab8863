"""``python -m experiments.benchmarks.efficiency``: see :mod:`experiments.benchmarks.efficiency.cli`."""

import sys

from experiments.benchmarks.efficiency.cli import main

if __name__ == "__main__":
    sys.exit(main())
