"""``python -m experiments.tables <records folder> --out <path>``: a table of any folder of records (``render.py``)."""

import sys

from experiments.tables.render import main

sys.exit(main())
