"""Reading records back: a file as a record, whether it is complete, and whether a record made before run ids
existed (a legacy record) describes the same settings as a run about to start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from experiments.records.identity import signature_settings


def read_record(path: Path) -> dict[str, Any] | None:
    """A record file as a dict, or None when it cannot be read as a JSON object."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def is_complete(record: dict[str, Any] | None) -> bool:
    """A record that tables and skip decisions may use: written to the end by a run that finished."""
    return bool(record) and record.get("complete") is True and record.get("status", "complete") == "complete"


def is_legacy(record: dict[str, Any]) -> bool:
    """Made before run ids existed: no ``run_id`` and no data fingerprint. Its settings are known, its data are not."""
    return "run_id" not in record and "data_fingerprint" not in record


def flat_settings(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (``method.peft.rank``); an empty section keeps its key."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out |= flat_settings(inner, f"{prefix}{key}.")
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def legacy_differences(record: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The settings a legacy record and a run's config disagree on, compared on what the record records: any recorded
    value that differs, and any adapter option (``method.peft.*``) the record does not have (its library default then
    may not be the value named now: TeRA's layout was balanced before it was an option). Other settings newer code
    added are not held against it."""
    old = flat_settings(signature_settings(record.get("config") or {}))
    new = flat_settings(signature_settings(config))
    changed = [key for key, value in old.items() if key in new and new[key] != value]
    added = [key for key in new if key.startswith("method.peft.") and key not in old]
    return sorted(changed + added)
