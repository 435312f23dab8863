"""The benchmark's presets (``conf/bench/<name>.yaml``) and the method entries in them.

Read with PyYAML alone (a transformers dependency): the GPU machine has no Hydra or pydantic.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml

from baselines.registry import VIRTUAL_TOKEN_METHODS

ROOT = Path(__file__).resolve().parents[3]
PRESETS = ROOT / "conf" / "bench"
METHOD_CONF = ROOT / "conf" / "method"


def user_error(message: str) -> NoReturn:
    """A mistake in what was asked for: one sentence on stderr and exit status 2, before anything is measured or
    written (the committed report and record stay as they were)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_preset(name: str) -> dict[str, Any]:
    path = PRESETS / f"{name}.yaml"
    if not path.exists():
        choices = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
        user_error(f"unknown preset {name!r}; choose one of: {choices}.")
    return yaml.safe_load(path.read_text())


def preset_goals(name: str) -> dict[str, float] | None:
    """The ``goals`` of the committed preset ``name``, or None when there is no such file or it states none."""
    path = PRESETS / f"{name}.yaml"
    return (yaml.safe_load(path.read_text()) or {}).get("goals") if path.exists() else None


def method_spec(entry: str | dict[str, Any]) -> dict[str, Any]:
    """``"lora"`` or ``{name, method, peft}``: the method's conf/method options, updated by the entry's ``peft``."""
    if isinstance(entry, str):
        entry = {"name": entry, "method": entry}
    method = entry.get("method", entry["name"])
    if method in VIRTUAL_TOKEN_METHODS:  # the report merges adapters and times merged inference: no layer to merge
        user_error(
            f"preset entry {entry['name']!r}: {method} adds virtual tokens and adapts no layer, so the efficiency "
            f"benchmark (merge, merged inference) cannot measure it; drop it from the preset."
        )
    peft: dict[str, Any] = {}
    if method not in ("base", "full"):
        peft = dict(yaml.safe_load((METHOD_CONF / f"{method}.yaml").read_text()).get("peft") or {})
    peft.update(entry.get("peft") or {})
    return {"name": entry["name"], "method": method, "peft": peft}


def preset_entry(preset: dict[str, Any], name: str) -> str | dict[str, Any]:
    """The preset's entry for the method called ``name``."""
    return next(e for e in preset["methods"] if method_spec(e)["name"] == name)
