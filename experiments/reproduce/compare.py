"""Compare methods on a model and task without writing a spec: run.py's own overrides, with the methods (and seeds,
models, tasks) as comma lists, through the same path as declared tables; ``--tune`` puts each method at its own best
setting, chosen on validation (README "Fair comparisons").

python -m experiments.reproduce.compare method=tera,lora,vera seed=0,1,2 train.max_steps=100 --tune
python -m experiments.reproduce.compare model=tiny method=tera,lora train.max_steps=4 --tune --dry-run
python -m experiments.reproduce.compare task=math/gsm8k model=smollm2-135m method=tera,lora \
    --metric test_gsm8k_lmeval_acc

Records land in results/runs/compare-<task>-<model>[-tuned]/, the table in results/compare-<task>-<model>[-tuned].md.
"""

from __future__ import annotations

import sys
from typing import Any

from experiments.errors import USER_ERRORS
from experiments.records import naming
from experiments.reproduce.grid import parse, parser, run_tables
from experiments.reproduce.tuning import TuningError
from experiments.run.compose import ComposeError, compose_config
from experiments.tables.specs import GRID_KEYS, SpecError, TableSpec, parse_spec


def _compose(overrides: list[str]) -> Any:
    """run.py's config with ``overrides``; a composition that fails is a :class:`SpecError`."""
    try:
        return compose_config(overrides)
    except ComposeError as err:
        raise SpecError(f"Cannot compose run.py's config with {' '.join(overrides)}: {err}.") from None


def _main_metric(task: str, overrides: list[str]) -> str:
    """``test_<the task's main metric>`` of an encoder task; a decoder task's metric depends on its evaluation, so it
    must be named (``--metric``)."""
    settings = _compose([f"task={task}", *overrides]).task
    if settings.get("kind", "classification") == "causal":
        raise SpecError(
            f"Task {task} is a decoder task: name the reported metric with --metric, e.g. test_<task>_lmeval_acc or "
            f"test_average_lmeval_acc."
        )
    return f"test_{settings.get('main_metric') or (settings.get('metrics') or ['accuracy'])[0]}"


def _seeds(value: str) -> list[int]:
    """``seed=0,1,2`` as integers; anything else (``range(0,2)``, ``1.5``) is a :class:`SpecError`."""
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise SpecError(f"seed takes integers separated by commas (seed=0,1,2), got {value!r}.") from None


def comparison(overrides: list[str], metric: str | None = None) -> TableSpec:
    """A table spec from run.py overrides: ``model``, ``task``, ``method`` and ``seed`` (comma lists) make its grid,
    the rest apply to every run (Hydra's own, ``hydra.*``, are not part of it: pass them after ``--``)."""
    if metric is not None and not metric.startswith("test_"):
        raise SpecError(f"--metric names the reported figure, a test_* metric, got {metric!r}.")
    cfg = _compose([])
    grid: dict[str, list[Any]] = {
        "model": [cfg.model.name],
        "task": [f"{cfg.task.suite}/{cfg.task.name}"],
        "method": [cfg.method.name],
        "seed": [cfg.seed],
    }
    rest = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key in GRID_KEYS:
            grid[key] = _seeds(value) if key == "seed" else [v for v in value.split(",") if v]
        else:
            rest.append(override)
    tasks = grid["task"]
    columns = [
        {"metric": metric or _main_metric(task, rest), "label": task, **({"task": task} if len(tasks) > 1 else {})}
        for task in tasks
    ]
    name = "compare-" + "-".join([*(naming.slug(t) for t in tasks), *grid["model"]])
    title = f"{', '.join(grid['method'])} on {', '.join(grid['model'])}, {', '.join(tasks)}"
    title += f" ({' '.join(rest)})" if rest else ""
    return parse_spec({"name": name, "title": title, "grid": grid, "overrides": rest, "columns": columns})


def main(argv: list[str] | None = None) -> int:
    options = parser(__doc__.splitlines()[0])
    options.add_argument("--metric", default=None, help="the reported metric (test_*); decoder tasks need it")
    options.add_argument("extra", nargs="*", help="run.py overrides: method=a,b seed=0,1 ... (comma lists sweep)")
    args = parse(options, argv)
    hydra = [o for o in args.extra if o.startswith(("hydra.", "hydra/", "+hydra", "++hydra"))]
    try:
        spec = comparison([o for o in args.extra if o not in hydra], args.metric)
    except (SpecError, TuningError, *USER_ERRORS) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.extra = hydra  # every other override is in the spec now
    return run_tables([spec], spec.name, args)


if __name__ == "__main__":
    sys.exit(main())
