"""Which parts a decoder task reads, decided once: the one plan that loading (``load.py``) follows and that names the
data in the run's identity (``fingerprint``), so the run id always describes the data that was read.

A part is one role (``train/<source>``, ``eval/<source>``; a custom task's ``train``, ``validation``, ``test``) and
where it comes from: a local file, the hub, a BIG-bench task file, a file an installed package ships, an offline
stand-in (GSM8K's installed test set split in two when the hub's train split cannot be reached), or a file of
LLM-Adapters' repository at its pinned commit (the commonsense test sets a Commonsense170K run is tested on, Math10K
and the AQuA and SVAMP test sets).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from experiments.errors import DataUnavailable
from experiments.records import sources as named
from experiments.tasks.decoder import llm_adapters, llm_adapters_math, offline
from experiments.tasks.decoder.llm_adapters import RepoFile
from experiments.tasks.decoder.sources import Source, source
from experiments.tasks.files import read_hub


def test_files() -> dict[str, RepoFile]:
    """LLM-Adapters' test files by source name: the eight commonsense sets, AQuA and SVAMP."""
    return {**llm_adapters.TEST_FILES, **llm_adapters_math.TEST_FILES}


def github_file(name: str, training: bool) -> tuple[RepoFile, str]:
    """The repository file a ``github`` part of source ``name`` reads, and the task.data_files key that replaces it."""
    return (llm_adapters_math.TRAIN_FILES[name], "train") if training else (test_files()[name], name)


@dataclass(frozen=True)
class Part:
    role: str  # "train/<source>" | "eval/<source>" | a custom task's split name
    source: str  # the name of its Source
    origin: str  # "local" | "hub" | "bigbench" | "installed" | "stand-in" | "github"
    path: str | None = None  # the local file, or the file inside LLM-Adapters' repository
    split: str | None = None  # the hub split, or the BIG-bench / stand-in part ("train" or "held-out")
    revision: str | None = None  # the hub revision (task.revision, training data only)


_hub: dict[tuple[str, str | None, str, str | None], Any] = {}  # one read per hub split and process (plan and load)


def hub_split(src: Source, split: str, revision: str | None = None) -> Any:
    """A hub split of ``src`` (read once per process); DataUnavailable where it cannot be reached."""
    key = (src.hub_path, src.hub_name, split, revision)
    if key not in _hub:
        try:
            _hub[key] = _read_hub(src, split, revision)
        except DataUnavailable as err:
            _hub[key] = err
    if isinstance(_hub[key], DataUnavailable):
        raise _hub[key]
    return _hub[key]


def _read_hub(src: Source, split: str, revision: str | None) -> Any:
    columns = src.schema or ", ".join(src.columns)
    if revision is None:
        return read_hub(src.hub_path, src.hub_name, split=split, columns=columns)
    import datasets  # read_hub takes no revision; the same one-sentence error where the pinned one is missing

    try:
        return datasets.load_dataset(src.hub_path, src.hub_name, split=split, revision=revision)
    except Exception as err:
        raise DataUnavailable(
            f"Cannot load {src.hub_path} at revision {revision}, split {split}, from the hub ({type(err).__name__}); "
            f"connect once to cache it, or point at a local file with columns {columns} with task.data_files."
        ) from None


def evaluate_from(task: Mapping[str, Any]) -> str:
    """Whose test files the commonsense tasks are scored on: ``llm-adapters`` (LLM-Adapters' eight test sets, the
    default where the task trains on LLM-Adapters' Commonsense170K, as the papers do) or ``original`` (the original
    hub datasets, the default otherwise); ``task.evaluate_from`` chooses."""
    chosen = task.get("evaluate_from")
    if chosen is None:
        return "llm-adapters" if set(task["train_on"]) & set(llm_adapters.MIXTURES) else "original"
    if chosen not in ("llm-adapters", "original"):
        raise DataUnavailable(f"task.evaluate_from must be llm-adapters or original, got {chosen!r}.")
    return chosen


def _stand_in_needed(src: Source, task: Mapping[str, Any]) -> bool:
    if src.offline_stand_in is None or not task.get("offline_fallback", True):
        return False
    if src.hub_path is None:  # a source that only exists offline (the dialogue stand-in)
        return True
    try:
        hub_split(src, src.train_split)
    except DataUnavailable:
        return True
    return False


def _custom_parts(task: Mapping[str, Any], name: str) -> list[Part]:
    files: Mapping[str, str] = task.get("data_files") or {}
    if "train" not in files:
        raise DataUnavailable(f"Task {task['name']} reads your own files; task.data_files must name 'train'.")
    return [Part(split, name, "local", path=str(path)) for split, path in sorted(files.items())]


def plan_parts(task: Mapping[str, Any]) -> list[Part]:
    """Every part ``task`` reads, training parts first, in the order they are read."""
    custom = [name for name in task["train_on"] if source(name).custom]
    if custom:
        return _custom_parts(task, custom[0])
    files: Mapping[str, str] = task.get("data_files") or {}
    eval_names = list(task["evaluate_on"])
    parts: list[Part] = []
    stand_ins: set[str] = set()
    for name in task["train_on"]:
        src, role = source(name), f"train/{name}"
        if "train" in files:
            parts.append(Part(role, name, "local", path=str(files["train"])))
        elif src.bigbench:
            parts.append(Part(role, name, "bigbench", split="train"))
        elif name in llm_adapters_math.TRAIN_FILES:  # no hub copy at a fixed revision: the repository's file
            parts.append(Part(role, name, "github", split="train", path=llm_adapters_math.TRAIN_FILES[name].path))
        elif _stand_in_needed(src, task):
            parts.append(Part(role, name, "stand-in", split="train"))
            stand_ins.add(name)
        else:
            parts.append(Part(role, name, "hub", split=src.train_split, revision=task.get("revision")))
    for name in eval_names:
        parts.append(_eval_part(task, source(name), files, len(eval_names), stand_ins))
    return parts


def _eval_part(task: Mapping[str, Any], src: Source, files: Mapping[str, str], count: int, stand_ins: set[str]) -> Part:
    """Where ``src``'s evaluated items come from: a local file wins, then the offline sources, then LLM-Adapters'
    test file (``evaluate_from``), then an installed copy, then the hub."""
    name, role = src.name, f"eval/{src.name}"
    if src.kind == "instruct":
        raise DataUnavailable(f"{name} has no evaluation split; evaluate_on takes choice or math tasks.")
    path = files.get(name) or (files.get("test") if count == 1 else None)
    if path:
        return Part(role, name, "local", path=str(path))
    if src.bigbench:
        return Part(role, name, "bigbench", split="held-out")
    if name in stand_ins or src.shares_stand_in in stand_ins:
        return Part(role, name, "stand-in", split="held-out")
    if name in test_files() and evaluate_from(task) == "llm-adapters":
        return Part(role, name, "github", path=test_files()[name].path)
    if src.offline_eval is not None and task.get("prefer_offline_gsm8k", True) and src.offline_path():
        return Part(role, name, "installed")
    return Part(role, name, "hub", split=src.eval_split)


def part_name(part: Part) -> str:
    """What a part is, without its path: a local file's content hash, a package file by release, a hub split (and
    revision), a repository file by commit."""
    src = source(part.source)
    if part.origin == "local":
        return named.local_file(part.path)
    if part.origin == "github":
        return named.repository_file(llm_adapters.REPO, llm_adapters.COMMIT, part.path)
    if part.origin == "bigbench":
        file = f"bigbench/benchmark_tasks/{src.bigbench}/task.json"
        return f"bigbench=={offline.BIGBENCH_VERSION}:{file} ({part.split} part)"
    if part.origin in ("installed", "stand-in"):
        shipped = named.installed_file(src.offline_package, src.offline_file_in_package)
        return shipped if part.origin == "installed" else f"offline stand-in ({part.split} part) of {shipped}"
    return named.hub(src.hub_path, src.hub_name, part.split, part.revision)


def fingerprint(task: Mapping[str, Any]) -> dict[str, str]:
    """``{role: name}`` of every part ``task`` reads: the data half of the run's identity."""
    return {part.role: part_name(part) for part in plan_parts(task)}
