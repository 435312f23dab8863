"""What many test modules share: the config groups as they are on disk, Hydra composition, and run.py as a user
calls it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def options(group: str) -> list[str]:
    """The options of a config group (``method``, ``task``, ``model``, ...), read from ``conf/``."""
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def compose(*overrides: str, return_hydra_config: bool = False):
    """The composed config of ``run.py`` with ``overrides``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def cli(*args: str, cwd: Path = ROOT, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in a subprocess, W&B off; stdout and stderr captured as text."""
    environment = {**os.environ, "WANDB_MODE": "disabled", **env}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def last_error(proc: subprocess.CompletedProcess) -> str:
    """The last line of stderr: where run.py puts its one-sentence error."""
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else ""
