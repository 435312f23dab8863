"""Names for what a run reads, independent of where it lies: the part of a run's identity that is not a setting.

- a local file: ``sha256:<hex>`` of its bytes (a relative path, an absolute one and a copy elsewhere are one file;
  one edited byte is another);
- a file inside an installed package: ``<distribution>==<version>:<file within the package>`` (every clone and
  virtual environment that installs the same release reads the same bytes);
- a hub dataset or model: ``hub:<id>[/<config>][:<split>][@<revision>]``;
- a file of a public repository at one commit: ``github:<owner>/<name>@<commit>:<path>`` (the commit fixes the bytes);
- a local model folder: the digests of its weight, config and tokenizer files, by file name.

Digests of files over 64 MiB are kept in ``<cache>/file-digests.json`` by absolute path, size and modification time,
so a 13 GB checkpoint is read once, not at every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from experiments.cache import cache_root

BIG_FILE = 64 << 20
# The files of a model folder that decide what the model computes (weights, architecture, tokenizer); READMEs,
# licences and training logs do not.
MODEL_FILE_PATTERNS = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.gguf",
    "*.safetensors.index.json",
    "*.bin.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",
    "*.tiktoken",
    "chat_template*",
)
_in_process: dict[tuple[str, int, int], str] = {}


def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _persistent() -> Path:
    return cache_root() / "file-digests.json"


def _load_persistent() -> dict[str, str]:
    try:
        value = json.loads(_persistent().read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _store_persistent(key: str, digest: str) -> None:
    """Best effort: a cache that cannot be written only costs a re-read next time."""
    try:
        known = _load_persistent() | {key: digest}
        target = _persistent()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(known, sort_keys=True))
        partial.replace(target)
    except OSError:
        pass


def file_digest(path: Path) -> str:
    """sha256 of a file's content (cached per path, size and modification time)."""
    key = _stat_key(path)
    if key in _in_process:
        return _in_process[key]
    text_key = "|".join(map(str, key))
    big = key[1] > BIG_FILE
    if big and (known := _load_persistent().get(text_key)):
        _in_process[key] = known
        return known
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    _in_process[key] = digest.hexdigest()
    if big:
        _store_persistent(text_key, _in_process[key])
    return _in_process[key]


def local_file(path: str | Path) -> str:
    """A local file by its content; a path that is not a file is named as missing (the load says why)."""
    path = Path(path)
    return f"sha256:{file_digest(path)}" if path.is_file() else "missing"


def installed_file(distribution: str, file: str) -> str:
    """A file shipped inside an installed package, by the package's release: path-free and stable across clones."""
    return f"{distribution}=={distribution_version(distribution)}:{file}"


def distribution_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not-installed"


def hub(name: str, config: str | None = None, split: str | None = None, revision: str | None = None) -> str:
    text = f"hub:{name}" + (f"/{config}" if config else "") + (f":{split}" if split else "")
    return text + (f"@{revision}" if revision else "")


def repository_file(repo: str, commit: str, path: str) -> str:
    """A file of a public GitHub repository at one commit (LLM-Adapters' test sets): the commit fixes its bytes."""
    return f"github:{repo}@{commit}:{path}"


def model_folder(folder: str | Path) -> dict[str, str]:
    """A local model folder by the content of the files that decide what it computes, keyed by file name."""
    folder = Path(folder)
    files = sorted({p for pattern in MODEL_FILE_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    return {p.name: local_file(p) for p in files}


def local_or_hub_model(path: str | Path, revision: str | None = None) -> dict[str, str] | str:
    """``model.path`` of a hub loader: a local folder (or file) by content, else the hub id (and revision)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return model_folder(local)
    if local.is_file():
        return {local.name: local_file(local)}
    return hub(str(path), revision=revision)
