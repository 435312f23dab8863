"""The tuning protocol for a declared table (``python -m experiments.reproduce <table> --tune``): each method at its
own best setting, chosen on validation, then reported on test.

1. Plan: compose every (variant, model, task, method) of the table as run.py would, and read the method's search space
   (``method.tune`` in ``conf/method/<name>.yaml``, or the table's ``tune.lr_factors``), checked before anything runs.
2. Trials: one ordinary run.py run per setting at the table's first seed, one Hydra multirun per method (records,
   resume and launchers as for any table). A task whose test figure is its validation split (GLUE) trains its trials
   with ``task.tune_holdout`` of train held out, and that share chooses; elsewhere the task's own validation split
   does. A trial that diverges is a result (a failed record, skipped on reruns with ``skip_failed``), not an error.
3. Choice: the best validation metric of each method's trials (``experiments/tuning.py``).
4. Finals: the chosen setting for every seed of the table. Where trials train like finals (no held-out share, no
   ``tune.steps``), the first seed's final is the trial itself: same name, same run id, so run.py skips it.
5. Render: the table with a "chosen lr" column and a caption that states the budget, the tuning report
   (``results/<out>-tuning.json/.md``), the plot of validation metric against learning rate, and with
   ``logger=wandb`` among the overrides, both as W&B tables.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from experiments.records import naming
from experiments.records.read import is_complete, read_record
from experiments.reproduce.sweep import launch, logger_args, multirun_commands, unique, wandb_settings
from experiments.reproduce.tuning import (
    Cell,
    Setting,
    Trial,
    TuningError,
    budget_note,
    protocol_cost,
    search_space,
    write_report,
)
from experiments.run.compose import ComposeError, composer
from experiments.tables import plots
from experiments.tables.paper import render_spec
from experiments.tables.specs import Run, TableSpec, Variant


@dataclass(frozen=True)
class CellPlan:
    """One method on one model and task (in a variant): its search space and how its trials run."""

    variant: Variant
    model: str
    task: str
    method: str
    settings: tuple[Setting, ...]  # empty: not tuned (a zero-step row runs as it is)
    metric: str  # the validation metric that chooses
    holdout: float | None = None  # share of train held out to choose on (the task's test figure is its validation)
    steps: int | None = None  # steps of one trial, when the table's tune.steps sets them
    seed: int = 0  # the trials' seed: the table's first

    @property
    def trial_overrides(self) -> list[str]:
        return [
            *([f"++task.tune_holdout={self.holdout}"] if self.holdout else []),
            *([f"train.max_steps={self.steps}"] if self.steps else []),
        ]

    def piece(self, setting_piece: str, trial: bool) -> str:
        """The name piece of a run: the variant's, the setting's, and for a trial what makes it differ from a final."""
        extra = [*(["holdout"] if self.holdout else []), *([f"steps{self.steps}"] if self.steps else [])]
        return "-".join(p for p in [self.variant.piece, setting_piece, *(extra if trial else [])] if p)

    def trial_name(self, setting: Setting) -> str:
        return naming.run_name(self.method, self.task, self.model, self.seed, self.piece(setting.piece, True))

    def trial_name_template(self) -> str:
        """The same names as a Hydra interpolation, for a multirun that sweeps the grid."""
        piece = self.piece(self.settings[0].hydra_piece, True)
        return naming.run_name(self.method, self.task, self.model, self.seed, piece)

    def final_variant(self, setting: Setting | None) -> Variant:
        """The variant the finals of this cell run in: the table's, with the chosen setting's values."""
        if setting is None:
            return self.variant
        kept = _without(self.variant.overrides, {key for key, _ in setting.values})
        return Variant(self.variant.label, (*kept, *setting.overrides()), None, self.piece(setting.piece, False))


@dataclass
class TunedTable(TableSpec):
    """A table's finals: every (cell, seed) at the chosen setting, and the chosen setting as a column."""

    planned: list[tuple[Variant, str, str, str, int]] = field(default_factory=list)
    chosen: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (variant, model, method) -> shown text
    chosen_label: str = "chosen lr"
    conventional: dict[tuple[str, str, str], str] = field(default_factory=dict)  # the untuned table's main cell
    conventional_label: str = ""

    def runs(self) -> list[Run]:
        return [Run(self, *planned) for planned in self.planned]

    def row_cells(self, variant: str, model: str, method: str) -> dict[str, str]:
        cells = {self.chosen_label: self.chosen.get((variant, model, method), "—")}
        if self.conventional:
            cells[self.conventional_label] = self.conventional.get((variant, model, method), "—")
        return cells


def conventional_cells(spec: TableSpec, results: Path) -> tuple[str, dict[tuple[str, str, str], str]]:
    """The same table at the conventional rates, where its records exist: each row's main column (the reference column
    or the last), to show beside the tuned figure. Empty when there are none."""
    from experiments.tables.paper import accuracy_rows
    from experiments.tables.render import cell_text, read_records

    folder = results / "runs" / spec.records_dir
    if not folder.is_dir():
        return "", {}
    main = spec.reference["column"] if spec.reference else spec.columns[-1].label
    rows = accuracy_rows(spec, read_records(folder, warn=False))
    cells = {(r["variant"], r["model"], r["method"]): cell_text(r[main], r["expected"][main]) for r in rows if r[main]}
    return f"{main} at conventional lr", cells


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _without(overrides: tuple[str, ...] | list[str], keys: set[str]) -> list[str]:
    """Overrides less those of ``keys`` (a trial's own values replace them)."""
    return [o for o in overrides if _key(o) not in keys]


# --------------------------------------------------------------------------------------------------------- plan


def needs_holdout(task: Any) -> bool:
    """Whether trials on ``task`` (its checked settings) must choose on a share held out of train: where its test
    figure is its validation split (GLUE: test labels are hidden), or, for decoders, where it has no validation split
    of its own (a custom task given both a validation and a test file has one)."""
    files = task.data_files or {}
    if task.kind == "causal":
        from experiments.tasks.decoder.sources import source

        custom = any(source(name).custom for name in task.train_on)
        return not (custom and "validation" in files and "test" in files)
    if task.data_files is not None:
        return not (task.test_split and task.test_split in files)
    return task.test_split is None


def _metric(spec: TableSpec, task: str) -> str:
    """The validation metric that chooses for ``task``: the table's, else its first column for that task."""
    if spec.tune.metric:
        return spec.tune.metric
    column = next((c for c in spec.columns if not c.average and c.task in (None, task)), None)
    if column is None or not (column.metric or "").startswith("test_"):
        raise TuningError(
            f"Table {spec.name} has no test_* column for {task} whose validation counterpart could choose; set "
            f"tune.metric (a validation_* metric) in its spec."
        )
    return "validation_" + column.metric.removeprefix("test_")


def _run_overrides(extra: list[str]) -> list[str]:
    """The overrides of ``extra`` that change a run's config (not Hydra's own: launcher, sweep folders)."""
    return [e for e in extra if not _key(e).startswith(("hydra.", "hydra/"))]


def plan_table(spec: TableSpec, extra: list[str] | None = None) -> list[CellPlan]:
    """Every cell of ``spec`` with its search space, each composed and checked as run.py will, with the command line's
    ``extra`` overrides (a mistake in a search space, the held-out share or an override is one sentence here, before
    anything runs)."""
    from experiments.run.schema import validate

    seed = int(spec.grid["seed"][0])
    plans = []
    with composer() as compose:
        for variant in spec.variants:
            for model, task, method in itertools.product(spec.grid["model"], spec.grid["task"], spec.grid["method"]):
                if variant.methods is not None and method not in variant.methods:
                    continue
                base = [f"model={model}", f"task={task}", f"method={method}", f"seed={seed}"]
                base += [*spec.overrides, *variant.overrides, *_run_overrides(extra or [])]
                where = f"{method} on {model}, {task}" + (f" ({variant.label})" if variant.label else "")
                try:
                    settings = validate(compose(base))
                    plan = _cell_plan(spec, variant, model, task, method, seed, settings)
                    if plan.settings:  # the trial config itself: the held-out share, the steps, the first setting
                        validate(compose([*base, *plan.trial_overrides, *plan.settings[0].overrides()]))
                except ComposeError as err:
                    raise TuningError(f"Cannot compose {where}: {err}.") from None
                plans.append(plan)
    return plans


def _cell_plan(spec: TableSpec, variant: Variant, model: str, task: str, method: str, seed: int, settings) -> CellPlan:
    metric = _metric(spec, task)
    if settings.train.max_steps == 0:  # a zero-step row (the base model): nothing to tune
        return CellPlan(variant, model, task, method, (), metric, seed=seed)
    space = settings.method.tune
    if space is None and spec.tune.lr_factors is None:
        raise TuningError(
            f"Method {method} has no search space: add `tune: {{lr_factors: [0.25, 1, 4]}}` to its config "
            f"(conf/method/{method}.yaml), or give table {spec.name} tune.lr_factors."
        )
    causal = settings.task.kind == "causal" and settings.method.decoder_lr is not None
    lr_key, base_lr = ("method.decoder_lr", settings.method.decoder_lr) if causal else ("method.lr", settings.method.lr)
    factors = spec.tune.lr_factors or space.lr_factors
    grid = search_space(lr_key, base_lr, factors, space.peft if space else {})
    holdout = spec.tune.holdout if needs_holdout(settings.task) else None
    return CellPlan(variant, model, task, method, tuple(grid), metric, holdout, spec.tune.steps, seed)


# ------------------------------------------------------------------------------------------------------- trials


def trial_commands(
    spec: TableSpec, plans: list[CellPlan], output_dir: Path, launcher: str, extra: list[str]
) -> list[list[str]]:
    """One Hydra multirun per cell, sweeping its grid (rates, and other options in every combination); every job
    names its record by interpolation exactly as :meth:`CellPlan.trial_name` does."""
    commands = []
    for plan in (p for p in plans if p.settings):
        keys = [key for key, _ in plan.settings[0].values]
        sweeps = []
        for i, key in enumerate(keys):
            values = list(dict.fromkeys(s.overrides()[i].split("=", 1)[1] for s in plan.settings))
            sweeps.append(f"{'' if i == 0 else '++'}{key}={','.join(values)}")
        own = set(keys) | {_key(o) for o in plan.trial_overrides}  # what a trial sets wins over the table and extra
        fixed = _without([*spec.overrides, *plan.variant.overrides], own)
        command = [sys.executable, "run.py", "-m", f"model={plan.model}", f"task={plan.task}", f"method={plan.method}"]
        command += [f"seed={plan.seed}", *fixed, *plan.trial_overrides, *sweeps, f"output_dir={output_dir}"]
        command += [f"run_name={plan.trial_name_template()}", "skip_failed=true", *logger_args(extra, spec.tag)]
        if launcher != "basic":
            command.append(f"hydra/launcher={launcher}")
        commands.append(command + _without(extra, own))
    return commands


def _about(record: dict[str, Any]) -> tuple:
    """(method, model, task, seed) of a record, complete or failed (a failed one has only its config)."""
    if "method" in record and "task" in record:
        return record["method"], record["model"], record["task"], record["seed"]
    config = record.get("config") or {}
    task = config.get("task") or {}
    return (
        (config.get("method") or {}).get("name"),
        (config.get("model") or {}).get("name"),
        f"{task.get('suite')}/{task.get('name')}",
        config.get("seed"),
    )


def read_trial_records(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every complete or failed record under ``folder`` by run name (an interrupted write is neither)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(Path(folder).glob("*.json")):
        record = read_record(path)
        if record and (is_complete(record) or record.get("status") == "failed") and record.get("run_name"):
            found.setdefault(record["run_name"], []).append(record)
    return found


def cells(plans: list[CellPlan], folder: Path) -> list[Cell]:
    """The trials of every cell with the newest record of each (by name, and by what the record says it is)."""
    found = read_trial_records(folder)
    result = []
    for plan in plans:
        trials = []
        for setting in plan.settings:
            name = plan.trial_name(setting)
            fitting = [r for r in found.get(name, []) if _about(r) == (plan.method, plan.model, plan.task, plan.seed)]
            newest = max(fitting, key=lambda r: (r.get("environment") or {}).get("date", ""), default=None)
            trials.append(Trial(setting, name, newest))
        result.append(Cell(plan.variant.label, plan.model, plan.task, plan.method, plan.metric, trials, plan.holdout))
    return result


# ------------------------------------------------------------------------------------------------------- finals


def final_table(spec: TableSpec, plans: list[CellPlan], found: list[Cell]) -> TunedTable:
    """The table of finals: each cell's chosen setting for every seed (a cell still waiting for trials is named so,
    and its runs are missing)."""
    several_keys = any(len(s.values) > 1 for p in plans for s in p.settings)
    several_tasks = len(spec.grid["task"]) > 1
    planned, chosen = [], {}
    for plan, cell in zip(plans, found):
        state, winner = cell.state, cell.chosen
        if state in ("trials missing", "no usable trial"):  # no final runs: the row says why
            variant = Variant(plan.variant.label, plan.variant.overrides, None, plan.piece("undecided", False))
            text = state
        else:
            variant = plan.final_variant(winner.setting if winner else None)
            text = "not tuned" if winner is None else winner.setting.label if several_keys else f"{winner.setting.lr:g}"
        planned += [(variant, plan.model, plan.task, plan.method, int(seed)) for seed in spec.grid["seed"]]
        shown = f"{plan.task.rsplit('/', 1)[-1]} {text}" if several_tasks else text
        key = (plan.variant.label, plan.model, plan.method)
        chosen[key] = f"{chosen[key]}; {shown}" if key in chosen else shown
    caption = budget_note(found, [int(s) for s in spec.grid["seed"]])
    return TunedTable(
        name=spec.name,
        kind=spec.kind,
        title=f"{spec.title}, each method at its chosen {'setting' if several_keys else 'learning rate'}",
        grid=spec.grid,
        overrides=spec.overrides,
        columns=spec.columns,
        variants=spec.variants,
        reference=spec.reference,
        show_frozen=spec.show_frozen,
        smoke=spec.smoke,
        records=spec.tuned_records_dir,
        out=spec.tuned_out_name,
        tune=spec.tune,
        caption=[caption, *spec.caption],
        planned=planned,
        chosen=chosen,
        chosen_label="chosen setting" if several_keys else "chosen lr",
    )


def final_commands(
    table: TunedTable, found: list[Cell], output_dir: Path, launcher: str, extra: list[str]
) -> list[list[str]]:
    """The finals' multiruns, for the cells whose choice is made (those sharing a setting share a multirun)."""
    ready = {(c.variant, c.model, c.task, c.method) for c in found if c.state in ("chosen", "not tuned")}
    runs = [p for p in table.planned if (p[0].label, p[1], p[2], p[3]) in ready]
    chosen = {key for c in found if c.chosen for key, _ in c.chosen.setting.values}  # the choice wins over extra
    extra = [*_without(extra, chosen), "skip_failed=true"]
    return multirun_commands(replace(table, planned=runs), output_dir, launcher, extra)


# -------------------------------------------------------------------------------------------------------- run


def render(spec: TableSpec, plans: list[CellPlan], found: list[Cell], results: Path, extra: list[str]) -> str:
    """The tuned table (chosen setting column, budget caption, plots), the tuning report, the lr plot, W&B tables."""
    table = final_table(spec, plans, found)
    table.conventional_label, table.conventional = conventional_cells(spec, results)
    markdown = render_spec(table, results)
    out = results / table.out_name
    cost = protocol_cost(
        [t.record for c in found for t in c.trials if t.record],
        _matched(table, results / "runs" / table.records_dir),
        _matched(spec, results / "runs" / spec.records_dir),
    )
    write_report(results / f"{table.out_name}-tuning", spec.title, found, table.caption[0], cost)
    plots.tuning_curves(found, spec.title, results / "plots" / f"{table.out_name}-lr.png")
    logger = wandb_settings(extra, spec.tag)
    if logger is not None:
        import pandas as pd

        from experiments.reproduce.tuning import report_frame
        from experiments.run.tracking import log_tables

        frames = {"summary": pd.read_csv(out.with_suffix(".csv")), "tuning": report_frame(found)}
        log_tables(logger, table.out_name, frames, [table.title, *table.caption])
    return markdown


def _matched(spec: TableSpec, folder: Path) -> list[dict[str, Any]]:
    """The records of ``spec``'s runs found in ``folder`` (none when it does not exist)."""
    from experiments.tables.paper import match_runs
    from experiments.tables.render import read_records

    return list(match_runs(spec, read_records(folder, warn=False))[0].values()) if folder.is_dir() else []


def run(
    specs: list[TableSpec],
    results: Path,
    launcher: str,
    extra: list[str],
    dry_run: bool = False,
    render_only: bool = False,
    say: Callable[[str], None] = print,
) -> int:
    """The protocol for every table of a spec: plan, trials, choice, finals, render. Returns the exit status."""
    from experiments.errors import USER_ERRORS

    try:
        plans = [(spec, plan_table(spec, extra)) for spec in specs]
    except (TuningError, *USER_ERRORS) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    trials = sum(len(p.settings) for _, ps in plans for p in ps)
    say(f"tuning: {trials} trial(s), then the chosen setting of each method for seeds {specs[0].grid['seed']}")
    folders = {results / "runs" / spec.tuned_records_dir for spec in specs}
    if not render_only:
        commands = unique(
            c
            for spec, ps in plans
            for c in trial_commands(spec, ps, results / "runs" / spec.tuned_records_dir, launcher, extra)
        )
        if not launch(commands, folders, dry_run):
            print(
                "error: a tuning trial failed without a record; fix it and run the same command again.", file=sys.stderr
            )
            return 1
    found = [(spec, ps, cells(ps, results / "runs" / spec.tuned_records_dir)) for spec, ps in plans]
    if not render_only:
        waiting = [c for _, _, cs in found for c in cs if c.state in ("trials missing", "no usable trial")]
        for cell in waiting:
            when = "they follow the trials" if dry_run else "no final runs"
            say(f"{cell.method} on {cell.model}, {cell.task}: {cell.state}; {when}")
        commands = unique(
            c
            for spec, ps, cs in found
            for c in final_commands(
                final_table(spec, ps, cs), cs, results / "runs" / spec.tuned_records_dir, launcher, extra
            )
        )
        if not launch(commands, folders, dry_run):
            print(
                "error: a final run failed; fix it and run the same command again (finished runs are skipped).",
                file=sys.stderr,
            )
            return 1
    if dry_run:
        return 0
    for spec, ps, cs in found:  # a re-render logs nothing: W&B gets a table when its runs were run
        say(render(spec, ps, cs, results, [*extra, "logger=none"] if render_only else extra))
    return 0
