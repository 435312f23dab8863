"""The tuning protocol's decisions, apart from running anything: a method's search space as settings, the choice of one
setting by a validation metric, and the report of what was tried and chosen.

A setting is a point of the grid a method declares in ``conf/method/<name>.yaml`` (``tune.lr_factors``: multiples of
its conventional learning rate, ``method.lr`` on encoder tasks and ``method.decoder_lr`` on decoder tasks; optionally
``tune.peft``: lists of other adapter options, searched in every combination with the rates). The choice reads only
``validation_*`` metrics of the trials' records; every metric of the suite is higher-is-better. Running trials and
finals is ``experiments/tune_protocol.py``'s job.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

LR_DIGITS = 3  # significant digits of a trial's learning rate: 4e-4 x 0.25 is 0.0001, not 0.00010000000000000002


class TuningError(ValueError):
    """A tuning protocol that cannot go on as asked (one sentence, exit 2)."""


def short_key(key: str) -> str:
    """``method.lr`` and ``method.decoder_lr`` -> ``lr``; ``method.peft.r`` -> ``r``."""
    return "lr" if key in ("method.lr", "method.decoder_lr") else key.rsplit(".", 1)[-1]


def _override_value(value: Any) -> str:
    """A value as a Hydra override parses it back: booleans lower-case, strings quoted (``'1e-3'`` stays text)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"'{value}'"
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One point of a method's search space: the config values a trial sets, its learning rate first."""

    values: tuple[tuple[str, Any], ...]  # ((lr key, lr), (method.peft.<option>, value), ...)
    factor: float  # the learning rate over the conventional one

    @property
    def lr(self) -> float:
        return self.values[0][1]

    @property
    def piece(self) -> str:
        """Its part of a record name, e.g. ``lr0.0016`` or ``lr0.0016-r1024``: what a Hydra job's name interpolation
        (:attr:`hydra_piece`) renders for the same values."""
        return "-".join(f"{short_key(key)}{value}" for key, value in self.values)

    @property
    def hydra_piece(self) -> str:
        return "-".join(f"{short_key(key)}${{{key}}}" for key, _ in self.values)

    @property
    def label(self) -> str:
        """``lr=0.0016`` or ``lr=0.0016, r=1024``, as tables and the report show it."""
        return ", ".join(f"{short_key(key)}={value}" for key, value in self.values)

    def overrides(self) -> list[str]:
        return [f"{'' if i == 0 else '++'}{key}={_override_value(value)}" for i, (key, value) in enumerate(self.values)]


def round_lr(value: float) -> float:
    return float(f"{value:.{LR_DIGITS}g}")


def search_space(
    lr_key: str, base_lr: float, factors: Iterable[float], peft: Mapping[str, list[Any]] | None = None
) -> list[Setting]:
    """Every setting of a method's grid, rates first (in the order given), then other options in every combination;
    settings that round to the same values are one."""
    options = [(f"method.peft.{key}", list(values)) for key, values in (peft or {}).items()]
    settings: dict[tuple, Setting] = {}
    for factor in factors:
        for combination in itertools.product(*(values for _, values in options)):
            values = ((lr_key, round_lr(base_lr * factor)), *zip((key for key, _ in options), combination))
            settings.setdefault(values, Setting(values, float(factor)))
    return list(settings.values())


@dataclass
class Trial:
    """One setting tried: its record name and the newest record of that name (complete or failed), if any."""

    setting: Setting
    name: str
    record: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        """``complete``, ``failed`` (it diverged: a result, worse than any finished trial) or ``missing``."""
        if self.record is None:
            return "missing"
        return "failed" if self.record.get("status") == "failed" else "complete"

    def value(self, metric: str) -> float | None:
        """The trial's figure on ``metric``, which must be a validation metric: nothing else can choose."""
        if not metric.startswith("validation_"):
            raise TuningError(f"Tuning chooses on validation metrics only, got {metric!r}.")
        if self.status != "complete":
            return None
        value = (self.record.get("final_metrics") or {}).get(metric)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def choose(trials: list[Trial], metric: str) -> Trial | None:
    """The trial with the best ``metric`` (a validation metric, higher is better); ties go to the setting nearest the
    conventional rate, then the lower rate. None while a trial is missing, and when no trial has a value (each
    diverged or lacks the metric)."""
    if not metric.startswith("validation_"):
        raise TuningError(f"Tuning chooses on validation metrics only, got {metric!r}.")
    if not trials or any(t.status == "missing" for t in trials):
        return None
    scored = [(t.value(metric), t) for t in trials]
    scored = [(value, t) for value, t in scored if value is not None]
    if not scored:
        return None
    return max(scored, key=lambda vt: (vt[0], -abs(math.log(vt[1].setting.factor)), -vt[1].setting.lr))[1]


@dataclass
class Cell:
    """What one choice is made for: a method on a model and task (in a table variant), and its trials."""

    variant: str
    model: str
    task: str
    method: str
    metric: str
    trials: list[Trial] = field(default_factory=list)  # empty: not tuned (e.g. a zero-step row)
    holdout: float | None = None  # the share of train that chose, where the task's test figure is its validation

    @property
    def chosen(self) -> Trial | None:
        return choose(self.trials, self.metric) if self.trials else None

    @property
    def waiting(self) -> bool:
        """Some trial has no record yet: nothing is chosen."""
        return any(t.status == "missing" for t in self.trials)

    @property
    def edge(self) -> str | None:
        """``"top"`` or ``"bottom"`` when the chosen rate is the grid's highest or lowest (of two or more): the best
        rate may lie beyond the grid, so the comparison is only as fair as the grid is wide."""
        chosen = self.chosen if self.trials else None
        factors = sorted({t.setting.factor for t in self.trials})
        if chosen is None or len(factors) < 2:
            return None
        if chosen.setting.factor == factors[-1]:
            return "top"
        return "bottom" if chosen.setting.factor == factors[0] else None

    @property
    def state(self) -> str:
        """``not tuned`` (no trials: e.g. a zero-step row), ``trials missing``, ``no usable trial`` (each diverged or
        lacks the metric: widen or lower the grid) or ``chosen``."""
        if not self.trials:
            return "not tuned"
        if self.waiting:
            return "trials missing"
        return "chosen" if self.chosen is not None else "no usable trial"


def budget_note(cells: list[Cell], seeds: list[int]) -> str:
    """The caption line of a tuned table: how each method was tuned and with what budget (the grid, the steps of each
    trial as its records say, the seed), and whether that budget is the same for every method."""
    tuned = [c for c in cells if c.trials]
    if not tuned:
        return "No method was tuned (every row is a zero-step run)."
    counts = {c.method: len(c.trials) for c in tuned}
    factors = sorted({t.setting.factor for c in tuned for t in c.trials})
    steps = sorted({t.record["steps"] for c in tuned for t in c.trials if t.record and "steps" in t.record})
    metrics = ", ".join(sorted({c.metric for c in tuned}))
    grid = ", ".join(f"x{f:g}" for f in factors)
    if len(set(counts.values())) == 1:
        budget = f"with the same budget: {next(iter(counts.values()))} trials"
    else:
        budget = f"with unequal budgets: {', '.join(f'{m} {n}' for m, n in counts.items())} trials"
    length = f"{'/'.join(map(str, steps))} steps" if steps else "the table's steps"
    text = (
        f"Tuned: each method was tuned on validation ({metrics}) {budget} on a log grid of learning rates ({grid} its "
        f"conventional rate), {length} each, seed {seeds[0]}; the chosen setting then ran for seeds "
        f"{', '.join(map(str, seeds))} and is reported on test."
    )
    edges = [f"{c.method} ({c.edge})" for c in tuned if c.edge]
    if edges:
        text += (
            f" Chosen at the edge of the grid, so the best rate may lie beyond it (widen tune.lr_factors): "
            f"{', '.join(edges)}."
        )
    holdouts = sorted({c.task for c in tuned if c.holdout})
    if holdouts:
        share = next(c.holdout for c in tuned if c.holdout)
        text += (
            f" Where the test figure is the task's validation split ({', '.join(holdouts)}), a held-out {share:g} of "
            f"train chose instead."
        )
    return text


def protocol_cost(
    trials: list[dict[str, Any]], finals: list[dict[str, Any]], conventional: list[dict[str, Any]]
) -> str:
    """What the protocol cost, from its records' own wall times (training and evaluation, on whatever machine each
    ran): its trials, its finals beyond them (a seed-0 final that is its trial counts once), and the conventional
    table's runs for scale."""

    def hours(records: list[dict[str, Any]]) -> float:
        return sum(float(r.get("wall_seconds") or 0.0) for r in records) / 3600

    trial_ids = {r.get("run_id") for r in trials}
    further = [r for r in finals if r.get("run_id") not in trial_ids]
    spent = trials + further
    text = (
        f"Cost: {len(trials)} trials and {len(further)} further final runs, {len(spent)} runs in all, "
        f"{hours(spent):.2f} h of run time (the sum of the records' wall times)"
    )
    if conventional:
        ratio = f", {hours(spent) / hours(conventional):.1f}x" if hours(conventional) else ""
        text += f"; the conventional table: {len(conventional)} runs, {hours(conventional):.2f} h{ratio}"
    return text + "."


def report_frame(cells: list[Cell]) -> pd.DataFrame:
    """One line per trial: which cell, its setting, status and validation figure, and whether it was chosen."""
    lines = []
    for cell in cells:
        chosen = cell.chosen if cell.trials else None
        for trial in cell.trials:
            value = trial.value(cell.metric)
            lines.append(
                {
                    "variant": cell.variant,
                    "model": cell.model,
                    "task": cell.task,
                    "method": cell.method,
                    "setting": trial.setting.label,
                    "lr": trial.setting.lr,
                    "factor": trial.setting.factor,
                    "metric": cell.metric,
                    "value": value,
                    "status": trial.status,
                    "chosen": trial is chosen,
                    "record": trial.name,
                }
            )
    return pd.DataFrame(lines)


def write_report(out: Path, title: str, cells: list[Cell], caption: str, cost: str = "") -> None:
    """``out``.json (every cell, trial and choice, for code) and ``out``.md (the same as a table, for people)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "title": title,
        "caption": caption,
        "cost": cost,
        "cells": [
            {
                "variant": cell.variant,
                "model": cell.model,
                "task": cell.task,
                "method": cell.method,
                "metric": cell.metric,
                "holdout": cell.holdout,
                "chosen": cell.chosen.setting.label if cell.trials and cell.chosen else None,
                "trials": [
                    {
                        "setting": dict(trial.setting.values),
                        "factor": trial.setting.factor,
                        "record": trial.name,
                        "status": trial.status,
                        "value": trial.value(cell.metric),
                    }
                    for trial in cell.trials
                ],
            }
            for cell in cells
        ],
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    frame = report_frame(cells)
    if len(frame):
        shown = frame.assign(
            value=[_percent(v, s) for v, s in zip(frame["value"], frame["status"])],
            chosen=["yes" if c else "" for c in frame["chosen"]],
            factor=[f"x{f:g}" for f in frame["factor"]],
        ).drop(columns=["lr", "record"] + (["variant"] if not any(frame["variant"]) else []))
        table = shown.to_markdown(index=False, disable_numparse=True)
    else:
        table = "No trials."
    out.with_suffix(".md").write_text(
        f"# Tuning: {title}\n\n{caption}\n\n{table}\n\nValues: the validation metric in %, the only figure that "
        f"chooses; `failed`: the trial diverged; `missing`: no record yet.\n" + (f"\n{cost}\n" if cost else "")
    )


def _percent(value: float | None, status: str) -> str:
    return status if value is None else f"{100 * value:.2f}"
