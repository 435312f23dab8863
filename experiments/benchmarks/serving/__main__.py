"""``python -m experiments.benchmarks.serving``: see :mod:`experiments.benchmarks.serving.cli`."""

import sys

from experiments.benchmarks.serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
