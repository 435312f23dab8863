"""Launching table grids: the Hydra multirun commands of a table, each command once, and the loop that runs them.

Every way of running many runs (``experiments.reproduce``, its ``--tune`` protocol, ``experiments.reproduce.compare``)
builds its commands and launches them here, so skip logic, launchers and logging choices are the same everywhere.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from experiments.records import naming
from experiments.tables.specs import Run, TableSpec

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = ("basic", "submitit_local", "slurm")


def logger_args(extra: list[str], group: str) -> list[str]:
    """Reproduction sweeps log to W&B (offline without an API key), every run of one table in one group named after
    it; ``logger=none`` on the command line turns it off, ``logger.group=...`` names another group."""
    named = next((a.removeprefix("logger=") for a in extra if a.startswith("logger=")), "wandb")
    if named != "wandb" or any(a.startswith("logger.group=") for a in extra):
        return [] if any(a.startswith("logger=") for a in extra) else ["logger=wandb"]
    return [*([] if any(a.startswith("logger=") for a in extra) else ["logger=wandb"]), f"logger.group={group}"]


def wandb_settings(extra: list[str], group: str) -> dict[str, Any] | None:
    """The W&B logger settings a table's runs get (``conf/logger/wandb.yaml`` with the ``logger.<key>=...`` overrides
    and the table's group), or None when the command line turns logging off."""
    args = [*logger_args(extra, group), *extra]
    if next(a for a in args if a.startswith("logger=")) != "logger=wandb":
        return None
    import yaml

    settings = yaml.safe_load((ROOT / "conf" / "logger" / "wandb.yaml").read_text())
    for override in args:
        if override.startswith("logger."):
            key, value = override.removeprefix("logger.").split("=", 1)
            settings[key] = yaml.safe_load(value)
    return settings


def log_table(results: Path, spec: TableSpec, extra: list[str]) -> None:
    """The rendered table (its CSV) as a W&B table in the table's group, when logging is on."""
    settings = wandb_settings(extra, spec.tag)
    csv = results / f"{spec.out_name}.csv"
    if settings is None or not csv.exists():
        return
    import pandas as pd

    from experiments.run.tracking import log_tables

    log_tables(settings, spec.out_name, {"table": pd.read_csv(csv)}, [spec.title, *spec.caption])


def multirun_commands(
    spec: TableSpec, output_dir: Path, launcher: str, extra: list[str], done: set[tuple[str, str]] | None = None
) -> list[list[str]]:
    """One Hydra multirun per (variant, model, task): methods and seeds are swept inside it.

    Grouping keeps each sweep's overrides rectangular (Hydra sweeps a Cartesian product) while run names stay
    explicit per run, so records from any launcher land under the same names.
    """
    groups: dict[tuple, list] = defaultdict(list)
    for run in spec.runs():
        groups[(run.variant, run.model, run.task)].append(run)
    commands = []
    for (variant, model, task), runs in groups.items():
        if done is not None and all(run_key(run) in done for run in runs):
            continue  # every run of this multirun is complete: nothing to start
        methods = sorted({r.method for r in runs}, key=[r.method for r in runs].index)
        seeds = sorted({r.seed for r in runs})
        run_name = naming.hydra_run_name(task, model, variant.piece, runs[0].template)
        command = [sys.executable, "run.py", "-m", f"model={model}", f"task={task}"]
        command += [f"method={','.join(methods)}", f"seed={','.join(map(str, seeds))}"]
        command += [*spec.overrides, *variant.overrides, f"output_dir={output_dir}", f"run_name={run_name}"]
        command += logger_args(extra, spec.tag)
        if launcher != "basic":
            command.append(f"hydra/launcher={launcher}")
        commands.append(command + extra)
    return commands


def run_key(run: Run) -> tuple[str, str]:
    """A run of a table by where its record lives: its records folder and its name."""
    return run.spec.records_dir, run.name


def unique(commands: Iterable[list[str]]) -> list[list[str]]:
    """Each command once, in first-seen order (tables of one spec may share runs)."""
    seen: list[list[str]] = []
    for command in commands:
        if command not in seen:
            seen.append(command)
    return seen


def table_commands(
    specs: list[TableSpec], results: Path, launcher: str, extra: list[str], done: set[tuple[str, str]] | None = None
) -> list[list[str]]:
    """Every table's multiruns, each once; with ``done``, only those with a run still to do."""
    return unique(
        command
        for spec in specs
        for command in multirun_commands(spec, results / "runs" / spec.records_dir, launcher, extra, done)
    )


def completed_runs(specs: list[TableSpec], results: Path, extra: list[str]) -> tuple[set[tuple[str, str]], int, int]:
    """(the runs whose record is complete, how many of them are legacy records, how many runs there are): each run's
    config is composed and identified as run.py will (settings, data and model content), nothing is loaded."""
    from experiments.errors import USER_ERRORS
    from experiments.run.compose import ComposeError, composer
    from experiments.run.pipeline import finished_record, legacy_record, plan_run

    own = [e for e in extra if not e.startswith(("hydra.", "hydra/"))]
    done: set[tuple[str, str]] = set()
    legacy = total = 0
    with composer() as compose:
        for spec in specs:
            for run in spec.runs():
                total += 1
                try:
                    overrides = run.overrides(results / "runs" / spec.records_dir)
                    cfg = compose([*overrides, *logger_args(extra, spec.tag), *own])
                    if finished_record(plan_run(cfg)) is not None:
                        done.add(run_key(run))
                    elif legacy_record(cfg) is not None:
                        done.add(run_key(run))
                        legacy += 1
                except (ComposeError, *USER_ERRORS):
                    continue  # run.py will say what is wrong with it
    return done, legacy, total


def pending_configs(
    specs: list[TableSpec], results: Path, extra: list[str], done: set[tuple[str, str]]
) -> list[tuple[Run, Any]]:
    """(run, composed config) of every run still to do, for estimates; runs that do not compose are left out (run.py
    will say what is wrong with them)."""
    from experiments.run.compose import ComposeError, composer

    own = [e for e in extra if not e.startswith(("hydra.", "hydra/"))]
    configs = []
    with composer() as compose:
        for spec in specs:
            for run in (r for r in spec.runs() if run_key(r) not in done):
                try:
                    configs.append((run, compose([*run.overrides(results / "runs" / spec.records_dir), *own])))
                except ComposeError:
                    continue
    return configs


def launch(commands: list[list[str]], folders: set[Path], dry_run: bool, go_on_after_failed_runs: bool = True) -> bool:
    """Run each multirun. With ``go_on_after_failed_runs`` (the commands pass ``skip_failed=true``), one that stops
    because a run failed and left its record (it diverged) is started again, and run.py skips what is done and what
    failed. False when a multirun fails otherwise."""

    def state() -> frozenset:
        return frozenset((p, p.stat().st_mtime_ns) for folder in folders for p in Path(folder).glob("*.json"))

    for command in commands:
        print("$ " + " ".join(command[1:]), flush=True)
        if dry_run:
            continue
        while True:
            before = state()
            if subprocess.run(command, cwd=ROOT).returncode == 0:
                break
            if not go_on_after_failed_runs or state() == before:
                return False
            print("a run failed and left its record; going on with the others", flush=True)
    return True
