"""``python -m experiments.reproduce <table> [...]``: run a declared table's grid and render it (see ``grid.py``)."""

import sys

from experiments.reproduce.grid import main

sys.exit(main())
