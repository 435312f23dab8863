"""WordNet 3.0 for METEOR, without nltk's downloader (its server is not reachable offline): fetch Debian's packages
with ``apt-get download`` (no root needed), unpack them with ``dpkg-deb -x`` and lay the files out as nltk expects.

Debian's ``wordnet-base`` holds the database files, ``wordnet-sense-index`` the ``index.sense`` that nltk's reader
opens on every load. Neither ships ``lexnames``, which nltk also opens, so it is written from the table in the man page
``lexnames.5WN`` that ``wordnet-base`` carries (45 lines ``NN<TAB>name<TAB>pos``; nltk checks that NN is the line
number). The result is ``<cache>/nltk_data/corpora/wordnet/`` (the cache is ``experiments.cache.cache_root()``);
``experiments.evaluation.text_metrics`` puts ``<cache>/nltk_data`` first on ``nltk.data.path``.

Run ``python -m experiments.evaluation.wordnet_setup`` (``make wordnet``); it does nothing when the folder is complete,
and exits 2 with one sentence when ``apt-get download`` cannot fetch the packages (METEOR then reports n/a).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments.cache import cache_root

PACKAGES = ("wordnet-base", "wordnet-sense-index")
# The files nltk's WordNetCorpusReader opens when it loads (lexnames, index.sense) or on a lookup METEOR makes.
REQUIRED_FILES = (
    "lexnames",
    "index.sense",
    *(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")),
)
SOURCE_FILE = "tera-suite-source.json"  # which Debian packages the files came from, for the metrics' settings
LEXNAMES_MAN_PAGE = "usr/share/man/man5/lexnames.5WN.gz"
WORDNET_FILES = "usr/share/wordnet"
POS_NUMBERS = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}  # nltk's lexnames column 3 (only noun..adv occur)
LEXNAMES_COUNT = 45  # WordNet 3.0's lexicographer files 00..44


class WordNetUnavailable(RuntimeError):
    """The packages could not be fetched or unpacked here; the message is one sentence that says what to do."""


def nltk_data_dir() -> Path:
    """The folder to put on ``nltk.data.path``; WordNet lies in its ``corpora/wordnet``."""
    return cache_root() / "nltk_data"


def wordnet_dir() -> Path:
    return nltk_data_dir() / "corpora" / "wordnet"


def is_complete(folder: Path | None = None) -> bool:
    folder = folder or wordnet_dir()
    return all((folder / name).is_file() for name in REQUIRED_FILES)


def read_source(folder: Path | None = None) -> dict[str, str]:
    """The Debian package versions a folder was built from ({} for a WordNet that this module did not build)."""
    path = (folder or wordnet_dir()) / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def lexnames_from_man_page(text: str) -> str:
    """The ``lexnames`` file from the table in ``lexnames.5WN`` (rows ``NN<TAB>noun.act<TAB>description``; one name
    has trailing spaces before its tab)."""
    rows = re.findall(r"^(\d{2})\t([a-z]+)\.(\w+) *\t", text, flags=re.MULTILINE)
    lines = []
    for expected, (number, pos, name) in enumerate(rows):
        if int(number) != expected or pos not in POS_NUMBERS:
            raise WordNetUnavailable(
                f"The lexnames man page has an unexpected row {number} {pos}.{name}; use Debian's wordnet-base 3.0."
            )
        lines.append(f"{number}\t{pos}.{name}\t{POS_NUMBERS[pos]}\n")
    if len(lines) != LEXNAMES_COUNT:
        raise WordNetUnavailable(
            f"The lexnames man page lists {len(lines)} files, not {LEXNAMES_COUNT}; use Debian's wordnet-base 3.0."
        )
    return "".join(lines)


def _run(command: list[str], cwd: Path, what: str) -> str:
    """Run a packaging tool; a failure becomes one sentence with the tool's last line of output."""
    if shutil.which(command[0]) is None:
        raise WordNetUnavailable(f"{what} needs `{command[0]}`, which is not on this machine; METEOR will report n/a.")
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise WordNetUnavailable(
            f"`{' '.join(command)}` failed ({last}); run `apt-get update` and retry, else METEOR reports n/a."
        )
    return done.stdout


def download_and_unpack(work: Path) -> dict[str, str]:
    """Fetch the .deb files into ``work`` and unpack them into ``work/root``; returns {package: version}."""
    _run(["apt-get", "download", *PACKAGES], work, "Fetching WordNet")
    source = {}
    for package in PACKAGES:
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            raise WordNetUnavailable(f"`apt-get download {package}` left no .deb file; METEOR will report n/a.")
        _run(["dpkg-deb", "-x", str(debs[0]), str(work / "root")], work, "Unpacking WordNet")
        source[package] = _run(["dpkg-deb", "-f", str(debs[0]), "Version"], work, "Reading the package version").strip()
    return source


def assemble(unpacked: Path, source: dict[str, str], dest: Path) -> None:
    """Lay the unpacked files out as nltk's ``corpora/wordnet`` in ``dest`` (a fresh folder)."""
    dest.mkdir(parents=True)
    for path in sorted((unpacked / WORDNET_FILES).iterdir()):
        if path.is_file():
            shutil.copy2(path, dest / path.name)
    with gzip.open(unpacked / LEXNAMES_MAN_PAGE, "rt", encoding="utf-8", errors="replace") as page:
        (dest / "lexnames").write_text(lexnames_from_man_page(page.read()))
    (dest / SOURCE_FILE).write_text(json.dumps({"source": "Debian", **source}, indent=1) + "\n")
    missing = [name for name in REQUIRED_FILES if not (dest / name).is_file()]
    if missing:
        raise WordNetUnavailable(f"The Debian packages lack {missing}; METEOR will report n/a.")


def install(force: bool = False) -> Path:
    """Build ``wordnet_dir()`` unless it is complete; it is built beside its place and renamed into it, so a failure
    leaves no half folder."""
    target = wordnet_dir()
    if is_complete(target) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".wordnet-build-") as tmp:
        work = Path(tmp)
        source = download_and_unpack(work)
        assemble(work / "root", source, work / "wordnet")
        if target.exists():
            shutil.rmtree(target)
        (work / "wordnet").rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="fetch and rebuild even when the folder is complete")
    args = parser.parse_args(argv)
    already = is_complete() and not args.force
    try:
        folder = install(force=args.force)
    except WordNetUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    versions = ", ".join(f"{name} {v}" for name, v in read_source(folder).items() if name != "source")
    print(f"WordNet for METEOR {'was already' if already else 'is now'} in {folder} (Debian {versions or 'packages'}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
