"""Tables as data: ``experiments/specs/<name>.yaml`` declares a grid, its columns and, for paper tables, the published
reference numbers; this module reads a spec and expands it into runs (each one ``run.py`` invocation's overrides).

Keys of a spec (and of each entry of its ``tables`` list, which inherits the rest):

- ``name``, ``kind`` (``accuracy`` or ``properties``), ``title``;
- ``grid``: lists of ``model``, ``task``, ``method``, ``seed`` (a ``tables`` entry's grid replaces single keys);
- ``exclude``: grid combinations not to run, each a map of grid keys (``{model: llama3-8b, method: tera}``): e.g. one
  TeRA reading per model where the paper used different ones;
- ``overrides``: Hydra overrides for every run (a ``tables`` entry's are added to them);
- ``variants``: each a ``label`` (its table column), ``overrides``, and optionally ``methods`` (only these run in it),
  ``name`` (its piece of the run name, default: the label as a slug) and ``run_name`` (a template for its runs);
- ``run_name``: the record-name template (``experiments.records.naming``; default the suite's convention), so records
  made under older names keep matching and run.py keeps skipping them;
- ``columns`` (``metric``, ``label``, optionally ``task`` or ``average``), ``reference`` (``column``, ``source``,
  ``values`` by model and method), ``show_frozen`` (a column of the frozen random values each adapter keeps);
- ``records``: the folder under ``results/runs`` (default ``<name>[-smoke]``), ``out``: the table's file name under
  ``results`` (default the same);
- ``paper``: the paper's printed cells, ``source`` and ``values`` by model, method and column label (``%`` for its
  share of trained parameters): rendered beside ours with the difference, before any run exists;
- ``figure`` (the paper's figures, ``experiments.tables.figures``): ``plot`` (``accuracy-vs-trained``, ``layer-ranks``
  or ``task-bars``), ``column`` (the label plotted against trained values), ``modules`` (the adapted modules a
  ``layer-ranks`` plot shows, one panel each), ``paper`` (``source`` and ``points``: the values read off the paper's
  figure by variant label, each a map of column labels, or ``trained``, to numbers), ``counts`` (a ``-shapes`` model of
  ``experiments.reproduce.properties`` whose TeRA trained counts the figure lists per variant, from the tensor plans);
- ``caption``: lines shown first under the table, what a reader must know (e.g. a pinned variant and why);
- ``targets`` (properties tables): the modules to adapt, per model (``{model: [names]}``; a model not named uses its
  own default); a properties grid's ``method`` entries may be ``{name, method, peft}``: a named variant of a
  ``conf/method`` with some adapter options changed;
- ``extends``: another spec whose keys this one starts from (its own replace them; ``smoke`` key by key), e.g. a
  figure drawn from another figure's or table's runs (with ``records`` naming that spec's folder, they are reused);
- ``tables``: several tables from one spec (each needs its own ``out``), e.g. one per task with their own grid,
  overrides and variants;
- ``smoke``: ``title``, ``grid``, ``overrides``, ``columns`` (and optionally ``reference`` and ``tune``) of the variant
  that runs here on the offline models in minutes; it keeps the spec's ``variants``, ``show_frozen`` and ``run_name``
  (and its ``tune`` options, less their names), and writes to ``<name>-smoke``;
- ``tune``: options of the tuning protocol (``python -m experiments.reproduce <name> --tune``, README "Fair
  comparisons"): ``steps`` (per trial; default the table's own budget), ``holdout`` (the share of train held out as
  the choosing split where a task's test figure is its validation split; default 0.1), ``metric`` (the validation
  metric that chooses; default each task's first column as ``validation_*``), ``lr_factors`` (instead of every
  method's own ``method.tune.lr_factors``), ``records`` and ``out`` (default ``<records>-tuned``, ``<out>-tuned``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from experiments.records import naming
from experiments.tables.render import Column

SPECS = Path(__file__).resolve().parents[1] / "specs"  # the table declarations, one YAML each
GRID_KEYS = ("model", "task", "method", "seed")
KEYS = {"name", "kind", "title", "grid", "overrides", "columns", "variants", "reference", "show_frozen", "run_name"}
KEYS |= {"records", "out", "tables", "smoke", "tune", "targets", "caption", "paper", "figure", "extends", "exclude"}
FIGURE_KEYS = {"plot", "column", "modules", "paper", "counts"}
FIGURE_PLOTS = ("accuracy-vs-trained", "layer-ranks", "task-bars")
VARIANT_KEYS = {"label", "overrides", "methods", "name", "run_name"}
TUNE_KEYS = {"steps", "holdout", "metric", "lr_factors", "records", "out"}


class SpecError(ValueError):
    """A table spec that cannot be used as written."""


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: tuple[str, ...] = ()
    methods: tuple[str, ...] | None = None  # only these methods of the grid run in this variant
    name: str | None = None  # its piece of the run name; default: the label as a slug
    run_name: str | None = None  # a record-name template for this variant's runs, instead of the spec's

    @property
    def piece(self) -> str:
        return naming.slug(self.label) if self.name is None else self.name


@dataclass(frozen=True)
class TuneOptions:
    """How a table runs the tuning protocol (``experiments/tune_protocol.py``); the search spaces are the methods'."""

    steps: int | None = None  # steps per trial; None: the table's own budget (a trial is then also a final run)
    holdout: float = 0.1  # share of train that chooses where a task's test figure is its validation split (GLUE)
    metric: str | None = None  # the validation metric that chooses; None: each task's first column as validation_*
    lr_factors: tuple[float, ...] | None = None  # instead of each method's method.tune.lr_factors (smoke grids)
    records: str | None = None  # folder under results/runs; default <records>-tuned
    out: str | None = None  # file name under results; default <out>-tuned


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
    run_name: str = naming.RUN_NAME
    records: str | None = None  # folder under results/runs; default: the tag
    out: str | None = None  # file name under results (without suffix); default: the tag
    tune: TuneOptions = field(default_factory=TuneOptions)
    caption: list[str] = field(default_factory=list)  # lines shown first under the table (what a reader must know)
    targets: dict[str, list[str]] | None = None  # properties tables: modules to adapt per model (else its default)
    paper: dict[str, Any] | None = None  # the paper's printed cells by model, method and column label
    figure: dict[str, Any] | None = None  # drawn as one of the paper's figures (experiments.tables.figures)
    exclude: list[dict[str, Any]] = field(default_factory=list)  # grid combinations not to run

    @property
    def paper_labels(self) -> set[str]:
        """The column labels the paper prints a figure for."""
        values = (self.paper or {}).get("values") or {}
        return {label for methods in values.values() for cells in methods.values() for label in cells}

    @property
    def tag(self) -> str:
        return f"{self.name}-smoke" if self.smoke else self.name

    @property
    def records_dir(self) -> str:
        return self.records or self.tag

    @property
    def out_name(self) -> str:
        return self.out or self.tag

    @property
    def tuned_records_dir(self) -> str:
        return self.tune.records or f"{self.records_dir}-tuned"

    @property
    def tuned_out_name(self) -> str:
        return self.tune.out or f"{self.out_name}-tuned"

    def row_cells(self, variant: str, model: str, method: str) -> dict[str, str]:
        """Cells a row shows after its keys (a tuned table: the chosen setting); none here."""
        return {}

    def runs(self) -> list[Run]:
        """Every run of the grid, in a stable order: variant, model, task, method, seed."""
        if self.kind != "accuracy":
            return []
        grid = [self.grid[key] for key in GRID_KEYS]
        runs = []
        for variant in self.variants:
            for model, task, method, seed in itertools.product(*grid):
                point = {"model": model, "task": task, "method": method, "seed": seed}
                if any(all(point[k] == v for k, v in rule.items()) for rule in self.exclude):
                    continue
                if variant.methods is None or method in variant.methods:
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
    def template(self) -> str:
        return self.variant.run_name or self.spec.run_name

    @property
    def name(self) -> str:
        return naming.run_name(self.method, self.task, self.model, self.seed, self.variant.piece, self.template)

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


def available() -> list[str]:
    """Every declared spec, by file name."""
    return sorted(p.stem for p in SPECS.glob("*.yaml"))


def load_tables(name: str, smoke: bool = False, folder: Path = SPECS) -> list[TableSpec]:
    """The table(s) a spec declares, checked: one per entry of its ``tables`` list, or the spec itself."""
    path = folder / f"{name}.yaml"
    if not path.exists():
        raise SpecError(f"No table spec {name!r}; known: {', '.join(available())}.")
    raw = _read_raw(name, folder)
    if smoke:
        if not raw.get("smoke"):
            raise SpecError(f"Table spec {name} has no smoke variant.")
        _check_keys(name, raw["smoke"], " in its smoke section")
        # The smoke variant keeps the table's identity, ablation variants and record names; the rest is its own (no
        # reference numbers unless it names some: published figures are not about the offline models).
        kept = {
            k: raw[k]
            for k in ("name", "kind", "variants", "show_frozen", "run_name", "targets", "caption", "figure", "exclude")
            if k in raw
        }
        kept["tune"] = {k: v for k, v in (raw.get("tune") or {}).items() if k not in ("records", "out")}
        if raw.get("figure"):  # the paper's read-off points and counts are of its models: the smoke names its own
            kept["figure"] = {k: v for k, v in raw["figure"].items() if k not in ("paper", "counts")}
        raw = {**kept, "reference": None, "paper": None, **raw["smoke"]}
    parts = raw.pop("tables", None) or [{}]
    raw.pop("smoke", None)
    specs = [parse_spec(_merge(raw, part), smoke) for part in parts]
    outs = [spec.out_name for spec in specs]
    if len(set(outs)) < len(outs):
        raise SpecError(f"Table spec {name}: give each entry of tables its own out (file name).")
    check_run_names(specs)
    return specs


def _read_raw(name: str, folder: Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A spec's keys, over those of the spec it ``extends`` (its smoke section merged key by key)."""
    path = folder / f"{name}.yaml"
    if not path.exists():
        raise SpecError(f"No table spec {name!r}; known: {', '.join(available())}.")
    raw = yaml.safe_load(path.read_text())
    _check_keys(name, raw, "")
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    if base_name in (*seen, name):
        raise SpecError(f"Table spec {name}: extends {base_name}, which extends it again.")
    base = _read_raw(base_name, folder, (*seen, name))
    smoke = {**(base.get("smoke") or {}), **(raw.get("smoke") or {})} if base.get("smoke") or raw.get("smoke") else None
    merged = {**base, **raw}
    if smoke is not None:
        merged["smoke"] = smoke
    return merged


def _check_keys(name: str, raw: dict[str, Any], where: str) -> None:
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        known = ", ".join(sorted(KEYS))
        raise SpecError(f"Table spec {name}: unknown keys {', '.join(unknown)}{where}; known: {known}.")


def _merge(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """A ``tables`` entry over the spec: its keys replace the spec's, except grid (key by key) and overrides (added)."""
    _check_keys(base.get("name", "?"), part, " in a tables entry")
    merged = {**base, **part}
    merged["grid"] = {**(base.get("grid") or {}), **(part.get("grid") or {})}
    merged["overrides"] = [*(base.get("overrides") or []), *(part.get("overrides") or [])]
    return merged


def parse_spec(raw: dict[str, Any], smoke: bool = False) -> TableSpec:
    kind = raw.get("kind", "accuracy")
    name = raw.get("name")
    if kind not in ("accuracy", "properties"):
        raise SpecError(f"Table {name}: kind must be accuracy or properties, got {kind!r}.")
    grid = dict(raw.get("grid") or {})
    needed = ("model", "method") if kind == "properties" else GRID_KEYS
    missing = [key for key in needed if not grid.get(key)]
    if missing:
        raise SpecError(f"Table {name}: the grid needs a non-empty list for {', '.join(missing)}.")
    try:
        columns = [Column(**c) for c in raw.get("columns") or []]
    except TypeError as err:
        raise SpecError(f"Table {name}: a column takes label, metric, task and average ({err}).") from None
    _check_method_entries(name, kind, list(grid.get("method") or []))
    if kind == "accuracy" and not columns:
        raise SpecError(f"Table {name}: name at least one column (metric and label).")
    variants = [_variant(name, v, grid.get("method", [])) for v in raw.get("variants") or []]
    template = raw.get("run_name") or naming.RUN_NAME
    for text in [template, *(v.run_name for v in variants if v.run_name)]:
        try:
            naming.run_name("m", "s/t", "x", 0, "v", text)
        except ValueError as err:
            raise SpecError(f"Table {name}: {err}") from None
    if not raw.get("title"):
        raise SpecError(f"Table {name}: give it a title.")
    tune = _tune_options(name, raw.get("tune") or {})
    return TableSpec(
        name=name,
        kind=kind,
        title=raw["title"],
        grid=grid,
        overrides=list(raw.get("overrides") or []),
        columns=columns,
        variants=variants or [Variant("")],
        reference=raw.get("reference"),
        show_frozen=bool(raw.get("show_frozen", False)),
        smoke=smoke,
        run_name=template,
        records=raw.get("records"),
        out=raw.get("out"),
        tune=tune,
        targets=_targets(name, raw.get("targets")),
        caption=_caption(name, raw.get("caption")),
        paper=_paper(name, raw.get("paper")),
        figure=_figure(name, raw.get("figure"), [v.label for v in variants]),
        exclude=_exclude(name, raw.get("exclude")),
    )


def _exclude(table: str | None, raw: Any) -> list[dict[str, Any]]:
    rules = raw or []
    if not isinstance(rules, list) or not all(isinstance(r, dict) and r and set(r) <= set(GRID_KEYS) for r in rules):
        raise SpecError(f"Table {table}: exclude is a list of maps of grid keys ({', '.join(GRID_KEYS)}) to values.")
    return rules


def _figure(table: str | None, raw: Any, variants: list[str]) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("plot") not in FIGURE_PLOTS or set(raw) - FIGURE_KEYS:
        raise SpecError(
            f"Table {table}: figure takes plot (one of {', '.join(FIGURE_PLOTS)}) and optionally "
            f"{', '.join(sorted(FIGURE_KEYS - {'plot'}))}."
        )
    paper = raw.get("paper") or {}
    points = paper.get("points") or {}
    if paper and not paper.get("source"):
        raise SpecError(f"Table {table}: figure.paper needs a source (where its points were read).")
    unknown = sorted(set(points) - set(variants))
    if unknown:
        raise SpecError(f"Table {table}: figure.paper.points names variants the spec lacks: {', '.join(unknown)}.")
    for label, cells in points.items():
        if not isinstance(cells, dict) or not all(isinstance(v, (int, float)) for v in cells.values()):
            raise SpecError(f"Table {table}: figure.paper.points[{label!r}] maps column labels to numbers.")
    return raw


def _paper(table: str | None, raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    values = raw.get("values") if isinstance(raw, dict) else None
    if not isinstance(values, dict) or not raw.get("source"):
        raise SpecError(f"Table {table}: paper takes a source and values by model, method and column label.")
    for model, methods in values.items():
        for method, cells in (methods or {}).items():
            if not isinstance(cells, dict) or not all(isinstance(v, (int, float)) for v in cells.values()):
                raise SpecError(f"Table {table}: paper values of {model} {method} map column labels to numbers.")
    return raw


def _caption(table: str | None, raw: Any) -> list[str]:
    lines = [raw] if isinstance(raw, str) else raw or []
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise SpecError(f"Table {table}: caption is a sentence or a list of sentences.")
    return [line.strip() for line in lines]


def conf_methods(spec: TableSpec) -> list[str]:
    """The ``conf/method`` names a spec's grid uses (a properties entry ``{name, method, peft}`` names its method)."""
    return [m if isinstance(m, str) else m.get("method", m["name"]) for m in spec.grid.get("method", [])]


def _check_method_entries(table: str | None, kind: str, methods: list[Any]) -> None:
    for entry in methods:
        if isinstance(entry, str):
            continue
        if kind != "properties" or not isinstance(entry, dict) or "name" not in entry:
            raise SpecError(
                f"Table {table}: a grid method is a conf/method name; only properties tables take {{name, method, "
                f"peft}} entries, got {entry!r}."
            )
        unknown = sorted(set(entry) - {"name", "method", "peft"})
        if unknown:
            raise SpecError(f"Table {table}: method entry {entry['name']!r} has unknown keys {', '.join(unknown)}.")


def _targets(table: str | None, raw: Any) -> dict[str, list[str]] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(v, list) and v for v in raw.values()):
        raise SpecError(f"Table {table}: targets maps each model to a non-empty list of module names.")
    return {str(model): [str(name) for name in names] for model, names in raw.items()}


def _tune_options(table: str | None, raw: dict[str, Any]) -> TuneOptions:
    """A spec's ``tune`` section, checked: each mistake is one sentence."""
    if not isinstance(raw, dict):
        raise SpecError(f"Table {table}: tune takes a mapping of {', '.join(sorted(TUNE_KEYS))}.")
    unknown = sorted(set(raw) - TUNE_KEYS)
    if unknown:
        raise SpecError(
            f"Table {table}: tune has unknown keys {', '.join(unknown)}; known: {', '.join(sorted(TUNE_KEYS))}."
        )
    steps, holdout, metric = raw.get("steps"), raw.get("holdout", 0.1), raw.get("metric")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise SpecError(
            f"Table {table}: tune.steps is the steps of one trial, a whole number of 1 or more, got {steps!r}."
        )
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise SpecError(f"Table {table}: tune.holdout is a share of train between 0 and 1, got {holdout!r}.")
    if metric is not None and not str(metric).startswith("validation_"):
        raise SpecError(
            f"Table {table}: tune.metric must be a validation metric (validation_*), got {metric!r}: tuning never "
            f"chooses on what the table reports."
        )
    factors = raw.get("lr_factors")
    if factors is not None:
        numbers = (
            isinstance(factors, list)
            and factors
            and all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in factors)
        )
        if not numbers or len(set(factors)) < len(factors):
            raise SpecError(
                f"Table {table}: tune.lr_factors lists distinct positive multiples of each method's learning rate, got "
                f"{factors!r}."
            )
        factors = tuple(float(f) for f in factors)
    for key in ("records", "out"):
        if raw.get(key) is not None and not naming.NAME_PIECE.fullmatch(str(raw[key])):
            raise SpecError(f"Table {table}: tune.{key} may only use letters, digits, '.', '_', '-'.")
    return TuneOptions(steps, float(holdout), metric, factors, raw.get("records"), raw.get("out"))


def _variant(table: str | None, raw: dict[str, Any], methods: list[str]) -> Variant:
    unknown = sorted(set(raw) - VARIANT_KEYS)
    if unknown or "label" not in raw:
        known = ", ".join(sorted(VARIANT_KEYS))
        raise SpecError(
            f"Table {table}: a variant takes {known} (a label at least); got {', '.join(sorted(raw)) or 'nothing'}."
        )
    only = tuple(raw["methods"]) if raw.get("methods") is not None else None
    if only is not None and not set(only) <= set(methods):
        raise SpecError(f"Table {table}: variant {raw['label']!r} names methods outside the grid: {', '.join(only)}.")
    variant = Variant(str(raw["label"]), tuple(raw.get("overrides") or ()), only, raw.get("name"), raw.get("run_name"))
    if not naming.NAME_PIECE.fullmatch(variant.piece):
        raise SpecError(f"Table {table}: variant name {variant.piece!r} may only use letters, digits, '.', '_', '-'.")
    return variant


def check_run_names(specs: list[TableSpec]) -> None:
    """A record belongs to exactly one run: two runs that compute different things never share a name."""
    seen: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        for run in spec.runs():
            settings = tuple(run.overrides(""))
            if not naming.NAME_PIECE.fullmatch(run.name):
                raise SpecError(
                    f"Table {spec.name}: run name {run.name!r} may only use letters, digits, '.', '_', '-'."
                )
            if seen.setdefault(run.name, settings) != settings:
                raise SpecError(
                    f"Table {spec.name}: two different runs share the record name {run.name!r}; give their variants "
                    f"distinct names or the spec a run_name template that tells them apart."
                )
