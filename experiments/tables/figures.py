"""The paper's figures from run records (a spec's ``figure`` key): accuracy against trained values (Figure 4), the rank
of every layer's update against the layer index (Figures 3 and 5) and per-task bars of two settings (Figure 6).

Each figure is a PNG under ``results/plots``, its numbers a CSV beside the table, and a Markdown section appended to
the table: ours beside the values read off the paper's figure (labelled as the paper's, never instead of ours).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.tables import plots
from experiments.tables.render import mean_std, to_markdown
from experiments.tables.specs import TableSpec

LAYER_INDEX = re.compile(r"\.(\d+)\.")  # "model.layers.17.self_attn.q_proj" -> 17


def _percent(values: list[float] | None) -> float | None:
    return 100 * mean_std(values)[0] if values else None


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# ---- trained counts from the tensor plans (no model, no training) ---------------------------------------------------


def variant_peft(spec: TableSpec, variant_overrides: tuple[str, ...]) -> dict[str, Any]:
    """The ``method.peft`` options a variant's Hydra overrides set (``[+]method.peft.<key>=<value>``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    options = {}
    for override in OverridesParser.create().parse_overrides([*spec.overrides, *variant_overrides]):
        key = override.key_or_group
        if key.startswith("method.peft."):
            options[key.removeprefix("method.peft.")] = override.value()
    return options


def tera_trained_count(shapes_model: str, targets: list[str], peft: dict[str, Any], method: str = "tera") -> int:
    """Trained values of a TeRA adapter on ``targets`` of a ``-shapes`` model, from its tensor plans: the rank-side
    diagonals hold sum R_n values per matrix, the mode-side ones sum I_n (tests check it against a built adapter)."""
    import yaml

    from experiments.reproduce.properties import CONF, SHAPES
    from tera.tensorize import plan_for_weight

    defaults = yaml.safe_load((CONF / "method" / f"{method}.yaml").read_text())["peft"]
    options = {**defaults, **peft}
    hidden, _, heads, kv_heads = SHAPES[shapes_model]["dims"]
    kv = hidden // heads * kv_heads
    shapes = {"q_proj": (hidden, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden), "o_proj": (hidden, hidden)}
    total = 0
    for target in targets:
        d_out, d_in = shapes[target]
        plan = plan_for_weight(
            d_out,
            d_in,
            tensor_order=options["tensor_order"],
            tensor_shape=options.get("tensor_shape"),
            core_rank_ratio=options["core_rank_ratio"],
            layout=options["layout"],
            mode_size=options["mode_size"],
            whole_side=options["whole_side"],
        )
        total += sum(plan.ranks) if options["diagonal_placement"] == "rank" else sum(plan.modes)
    return total * SHAPES[shapes_model]["layers"]


def counts_section(spec: TableSpec) -> list[str]:
    """The trained count of every variant from its tensor plan, beside the paper's x position."""
    figure = spec.figure or {}
    shapes_model = figure.get("counts")
    if not shapes_model:
        return []
    points = (figure.get("paper") or {}).get("points") or {}
    targets = list(figure.get("modules") or ["q_proj", "v_proj"])
    rows = []
    for variant in spec.variants:
        ours = tera_trained_count(shapes_model, targets, variant_peft(spec, variant.overrides), spec.grid["method"][0])
        paper = points.get(variant.label, {}).get("trained")
        rows.append(
            {
                "tensorisation": variant.label,
                "trained (ours, from the tensor plan)": f"{ours:,}",
                "trained (paper)": "-" if paper is None else f"{int(paper):,}",
                "same": "-" if paper is None else ("yes" if int(paper) == ours else "no"),
            }
        )
    return [
        f"## Trained values per tensorisation ({shapes_model}, {', '.join(targets)})",
        "",
        to_markdown(pd.DataFrame(rows), 1),
        "",
    ]


# ---- layer ranks ----------------------------------------------------------------------------------------------------


def layer_rank_frame(records: list[tuple[str, dict[str, Any]]], modules: list[str]) -> pd.DataFrame:
    """One row per (series, adapted layer of ``modules``): its index, measured rank, full-rank bound and tolerance."""
    rows = []
    for series, record in records:
        for layer in record.get("layers") or []:
            module = layer["name"].rsplit(".", 1)[-1]
            index = LAYER_INDEX.search(layer["name"])
            if module not in modules or index is None or layer.get("rank") is None:
                continue
            rows.append(
                {
                    "series": series,
                    "module": module,
                    "layer": int(index.group(1)),
                    "rank": int(layer["rank"]),
                    "full rank": min(int(layer["d_out"]), int(layer["d_in"])),
                    "rank bound": layer.get("rank_bound"),
                    "tolerance": layer.get("tolerance"),
                }
            )
    return pd.DataFrame(rows, columns=["series", "module", "layer", "rank", "full rank", "rank bound", "tolerance"])


def _rank_summary(frame: pd.DataFrame) -> str:
    rows = []
    for (series, module), group in frame.groupby(["series", "module"], sort=False):
        rows.append(
            {
                "series": series,
                "module": module,
                "layers": len(group),
                "rank min / median / max": f"{group['rank'].min()} / {group['rank'].median():g} / "
                f"{group['rank'].max()}",
                "full rank": int(group["full rank"].max()),
            }
        )
    return to_markdown(pd.DataFrame(rows), 2)


# ---- the figure of a spec -------------------------------------------------------------------------------------------


def _series_records(spec: TableSpec, chosen: dict[tuple, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """In the spec's order, the first seed's record of each (variant, model, method): one line of a rank plot each,
    named by what differs (the variant, the method, the model)."""
    several_models = len(spec.grid["model"]) > 1
    series = []
    for variant in spec.variants:
        for model in spec.grid["model"]:
            for method in spec.grid["method"]:
                record = next(
                    (
                        chosen[key]
                        for seed in spec.grid["seed"]
                        for task in spec.grid["task"]
                        if (key := (variant.label, model, task, method, int(seed))) in chosen
                    ),
                    None,
                )
                if record is None:
                    continue
                name = variant.label if len(spec.variants) > 1 else method
                series.append((f"{model}: {name}" if several_models else name, record))
    return series


def _paper_table(spec: TableSpec, rows: list[dict[str, Any]], labels: list[str]) -> str:
    """Ours beside the values read off the paper's figure: one line per setting and column."""
    points = ((spec.figure or {}).get("paper") or {}).get("points") or {}
    table = []
    for label in labels:
        for row in rows:
            setting = row["variant"] or row["method"]
            ours, theirs = _percent(row.get(label)), points.get(setting, {}).get(label)
            trained = row.get("trainable_params")
            table.append(
                {
                    **({"column": label} if len(labels) > 1 else {}),
                    "setting": setting,
                    "trained (ours)": f"{trained:,}" if trained else "-",
                    "ours": _number(ours),
                    "paper (read off)": _number(theirs),
                    "ours - paper": "-" if ours is None or theirs is None else f"{ours - theirs:+.2f}",
                }
            )
    return to_markdown(pd.DataFrame(table), 2 if len(labels) > 1 else 1)


def figure_section(
    spec: TableSpec, rows: list[dict[str, Any]], chosen: dict[tuple, dict[str, Any]], results: Path
) -> str:
    """Draw the spec's figure (PNG, CSV) and return the Markdown section that shows it."""
    figure = spec.figure or {}
    plot = figure["plot"]
    out = results / "plots" / f"{spec.out_name}.png"
    source = (figure.get("paper") or {}).get("source")
    lines = ["## The figure", ""]
    if plot == "layer-ranks":
        modules = list(figure.get("modules") or ["q_proj", "v_proj"])
        frame = layer_rank_frame(_series_records(spec, chosen), modules)
        results.mkdir(parents=True, exist_ok=True)
        frame.to_csv(results / f"{spec.out_name}-ranks.csv", index=False)
        drawn = plots.layer_ranks(frame, modules, spec.title, out)
        tolerance = "s_i > s_1 x max(d_out, d_in) x float32 eps (tera.analysis.numerical_rank, float64 SVD)"
        lines += [f"Numerical rank: {tolerance}. Per-layer numbers: `{spec.out_name}-ranks.csv`.", ""]
        lines += [_rank_summary(frame) if len(frame) else "No runs yet: nothing to draw.", ""]
    else:
        labels = [figure["column"]] if plot == "accuracy-vs-trained" else [c.label for c in spec.columns]
        points = (figure.get("paper") or {}).get("points") or {}
        if plot == "accuracy-vs-trained":
            drawn = plots.accuracy_vs_trained(rows, figure["column"], points, spec.title, out)
        else:
            drawn = plots.task_bars(rows, labels, points, spec.title, out)
        lines += [_paper_table(spec, rows, labels), ""]
    if drawn is not None:
        lines += [f"![{spec.title}](plots/{out.name})", ""]
    if source:
        lines += [f"Paper's points: {source}", ""]
    return "\n".join([*lines, *counts_section(spec)])
