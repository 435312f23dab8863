"""Where derived artefacts live (dequantised weights, extracted data, content digests of large files):
``$TERA_SUITE_CACHE``, else ``~/.cache/tera-suite``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("TERA_SUITE_CACHE") or Path.home() / ".cache" / "tera-suite")
