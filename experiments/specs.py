"""Paper tables as data: ``experiments/specs/table<N>.yaml`` declares the grid, the columns and the published
reference numbers; this module reads a spec and expands it into runs (each one ``run.py`` invocation's overrides).

A spec's ``smoke`` section gives ``title``, ``grid``, ``overrides``, ``columns`` (and optionally ``reference``) of
the variant that runs here on the offline models in minutes; it keeps the table's ablation ``variants`` and
``show_frozen`` (a column of the frozen random values each adapter keeps, for the factor-sharing ablation).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SPECS = Path(__file__).parent / "specs"
GRID_KEYS = ("model", "task", "method", "seed")


class SpecError(ValueError):
    """A table spec that cannot be used as written."""


@dataclass(frozen=True)
class Column:
    label: str
    metric: str | None = None
    task: str | None = None  # only records of this task fill the column (GLUE: one task per column)
    average: bool = False  # the mean of the other columns


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: tuple[str, ...] = ()


@dataclass
class TableSpec:
    name: str
    kind: str  # "accuracy" | "properties"
    title: str
    grid: dict[str, list[Any]]
    overrides: list[str] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=lambda: [Variant("")])
    reference: dict[str, Any] | None = None
    show_frozen: bool = False  # a "frozen random values" column (factor sharing ablations)
    smoke: bool = False

    @property
    def tag(self) -> str:
        return f"{self.name}-smoke" if self.smoke else self.name

    def runs(self) -> list[Run]:
        """Every run of the grid, in a stable order: variant, model, task, method, seed."""
        if self.kind != "accuracy":
            return []
        grid = [self.grid[key] for key in GRID_KEYS]
        runs = []
        for variant in self.variants:
            for model, task, method, seed in itertools.product(*grid):
                runs.append(Run(self, variant, model, task, method, int(seed)))
        return runs


@dataclass(frozen=True)
class Run:
    spec: TableSpec
    variant: Variant
    model: str
    task: str
    method: str
    seed: int

    @property
    def name(self) -> str:
        suffix = f"-{slug(self.variant.label)}" if self.variant.label else ""
        return f"{self.method}-{self.task.replace('/', '-')}-{self.model}-s{self.seed}{suffix}"

    def overrides(self, output_dir: str | Path) -> list[str]:
        return [
            f"model={self.model}",
            f"task={self.task}",
            f"method={self.method}",
            f"seed={self.seed}",
            *self.spec.overrides,
            *self.variant.overrides,
            f"output_dir={output_dir}",
            f"run_name={self.name}",
        ]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def available() -> list[str]:
    return sorted(p.stem for p in SPECS.glob("table*.yaml"))


def load_spec(name: str, smoke: bool = False, folder: Path = SPECS) -> TableSpec:
    path = folder / f"{name}.yaml"
    if not path.exists():
        raise SpecError(f"No table spec {name!r}; known: {', '.join(available())}.")
    raw = yaml.safe_load(path.read_text())
    if smoke:
        if not raw.get("smoke"):
            raise SpecError(f"Table spec {name} has no smoke variant.")
        # The smoke variant keeps the table's identity and ablation variants; the rest is its own (no reference
        # numbers unless it names some: published figures are not about the offline models).
        kept = {k: raw[k] for k in ("name", "kind", "variants", "show_frozen") if k in raw}
        raw = {**kept, "reference": None, **raw["smoke"]}
    return parse_spec(raw, smoke)


def parse_spec(raw: dict[str, Any], smoke: bool = False) -> TableSpec:
    kind = raw.get("kind", "accuracy")
    if kind not in ("accuracy", "properties"):
        raise SpecError(f"Table {raw.get('name')}: kind must be accuracy or properties, got {kind!r}.")
    grid = dict(raw.get("grid") or {})
    needed = ("model", "method") if kind == "properties" else GRID_KEYS
    missing = [key for key in needed if not grid.get(key)]
    if missing:
        raise SpecError(f"Table {raw.get('name')}: the grid needs a non-empty list for {', '.join(missing)}.")
    columns = [Column(**c) for c in raw.get("columns") or []]
    if kind == "accuracy" and not columns:
        raise SpecError(f"Table {raw.get('name')}: name at least one column (metric and label).")
    variants = [Variant(v["label"], tuple(v.get("overrides") or ())) for v in raw.get("variants") or []]
    return TableSpec(
        name=raw["name"],
        kind=kind,
        title=raw["title"],
        grid=grid,
        overrides=list(raw.get("overrides") or []),
        columns=columns,
        variants=variants or [Variant("")],
        reference=raw.get("reference"),
        show_frozen=bool(raw.get("show_frozen", False)),
        smoke=smoke,
    )
