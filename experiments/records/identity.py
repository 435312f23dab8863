"""What makes a run the run it is: its settings and the data it reads, as a signature; where its record and its
checkpoint live. Two runs that compute different things never share a path; the same run finds its record again.

A record's file name is ``<run name>-<id>.json``: the readable name (``experiments/naming.py``) and the first hex
digits of the signature's hash. The data's fingerprint is part of the signature: a local file edited in place makes
another run (content hashes), hub data is named by dataset and split (its revision is not known before loading).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

ID_DIGITS = 8
# Settings that change how a run is executed or logged, not what it computes.
_NOT_IN_SIGNATURE = {"skip_complete", "skip_failed", "logger", "device", "output_dir", "run_name", "data"}
_NOT_IN_TRAIN_SIGNATURE = {"checkpoint_every", "checkpoint_minutes", "eval_batch_size"}
# Adapter options that trade memory for speed and compute the same values (TeRA keeping W + dW between steps).
_NOT_IN_PEFT_SIGNATURE = {"cache_merged_weight"}

_hash_cache: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file's content (cached per path, size and modification time within a process)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def data_fingerprint(sources: Iterable[str | Path]) -> dict[str, str]:
    """``{source: fingerprint}``: a local file's content hash, or the name of data that is not a local file (a hub
    dataset and split, a pinned package version) as it is."""
    fingerprint = {}
    for source in sources:
        if isinstance(source, Path):
            fingerprint[str(source)] = f"sha256:{file_digest(source)}" if source.is_file() else "missing"
        else:
            fingerprint[source] = source
    return dict(sorted(fingerprint.items()))


def run_signature(config: dict[str, Any], data: dict[str, str] | None = None, with_seed: bool = True) -> str:
    """What a run computes (model, task, method, training, evaluation, seed, and the data it reads), as a stable
    string. ``with_seed=False`` gives the signature of the settings a table averages over seeds."""
    kept = {k: v for k, v in config.items() if k not in _NOT_IN_SIGNATURE and k != "hydra"}
    kept["train"] = {k: v for k, v in kept.get("train", {}).items() if k not in _NOT_IN_TRAIN_SIGNATURE}
    if isinstance(kept.get("method"), dict):  # a search space is not what a run computes; the values it sets are
        kept["method"] = {k: v for k, v in kept["method"].items() if k != "tune"}
        if isinstance(kept["method"].get("peft"), dict):
            peft = kept["method"]["peft"]
            kept["method"]["peft"] = {k: v for k, v in peft.items() if k not in _NOT_IN_PEFT_SIGNATURE}
    if "eval" in kept:
        kept["eval"] = {k: v for k, v in kept["eval"].items() if k != "batch_size"}
    if not with_seed:
        kept.pop("seed", None)
    if data is not None:
        kept["data"] = data
    return json.dumps(kept, sort_keys=True, default=str)


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:ID_DIGITS]


def resolved(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def record_path(cfg: DictConfig, run_id: str) -> Path:
    return Path(cfg.output_dir) / f"{cfg.run_name}-{run_id}.json"


def checkpoint_path(cfg: DictConfig, run_id: str) -> Path:
    return Path(cfg.output_dir) / ".checkpoints" / f"{cfg.run_name}-{run_id}.pt"


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


def probe_writable(folder: Path) -> None:
    """Create ``folder`` and write and remove a file there, so an unwritable output is found before training."""
    from experiments.errors import ConfigError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        with open(probe, "wb") as handle:
            handle.write(b"probe")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"Cannot write to {folder} ({err.strerror or type(err).__name__}); choose a writable output_dir."
        ) from None
