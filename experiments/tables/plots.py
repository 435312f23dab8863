"""Figures written by code from run records: accuracy against trainable parameters for a table, the variants of an
ablation table, and singular-value spectra of dW for TeRA, LoRA and VeRA (from the spectrum each record keeps of its
middle adapted layer)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from experiments.tables.render import mean_std  # noqa: E402

SPECTRUM_METHODS = ("tera", "lora", "vera")


def _label(row: dict[str, Any]) -> str:
    return row["method"] + (f" ({row['variant']})" if row.get("variant") else "")


def _percent(values: list[float]) -> tuple[float, float]:
    mean, std = mean_std(values)
    return 100 * mean, 100 * std


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def accuracy_vs_parameters(rows: list[dict[str, Any]], column: str, title: str, out: Path) -> Path | None:
    """One point (mean ± std over seeds) per table row with a value in ``column``; x = trainable parameters (log
    scale). Points are told apart by colour and marker in a legend, not by labels that would overlap."""
    points = [r for r in rows if r.get(column) and r.get("trainable_params")]
    if not points:
        return None
    models = sorted({r["model"] for r in points})
    # constrained: a caption-length title wraps to several lines and must not run into the panel titles
    fig, axes = plt.subplots(1, len(models), figsize=(5.0 * len(models), 4.2), squeeze=False, layout="constrained")
    markers = "osD^vP*X<>ph"
    for ax, model in zip(axes[0], models):
        for i, row in enumerate(r for r in points if r["model"] == model):
            mean, std = _percent(row[column])
            ax.errorbar(
                row["trainable_params"],
                mean,
                yerr=std or None,
                fmt=markers[i % len(markers)],
                ms=6,
                capsize=3,
                color=f"C{i % 10}",
                label=_label(row),
            )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(f"{column} (%)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.suptitle(textwrap.fill(title, 90), fontsize=10)
    return _save(fig, out)


def variant_dots(rows: list[dict[str, Any]], column: str, title: str, out: Path) -> Path | None:
    """Ablations: one line per variant, the metric as a dot with its std over seeds, and what each variant costs
    (trainable and frozen random values) written beside it. Dots, not bars: the axis need not start at zero."""
    shown = [r for r in rows if r.get(column) and r.get("variant")]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(shown) + 1.4))
    for i, row in enumerate(shown):
        mean, std = _percent(row[column])
        ax.errorbar(mean, i, xerr=std or None, fmt="o", color="C0", capsize=3)
        cost = f"{row['trainable_params']:,} trained" if row.get("trainable_params") else ""
        if row.get("frozen_factor_values") is not None:
            cost += f", {row['frozen_factor_values']:,} frozen"
        ax.annotate(f"{mean:.1f}  {cost}", (mean, i), textcoords="offset points", xytext=(8, -3), fontsize=7)
    ax.set_yticks(range(len(shown)), [f"{r['variant']} [{r['model']}]" for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{column} (%)")
    low, high = ax.get_xlim()
    ax.set_xlim(low, high + 0.6 * (high - low))  # room for the cost labels
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(textwrap.fill(title, 80), fontsize=10)
    return _save(fig, out)


def spectra(records: list[dict[str, Any]], out: Path, methods: tuple[str, ...] = SPECTRUM_METHODS) -> Path | None:
    """Normalised singular values s_i / s_1 of dW (log scale) for the first record of each method per model."""
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        key = (record["model"], record["method"])
        if record["method"] in methods and record.get("spectrum") and key not in chosen and record.get("steps", 1) > 0:
            chosen[key] = record
    if not chosen:
        return None
    models = sorted({model for model, _ in chosen})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        for method in methods:
            record = chosen.get((model, method))
            if record is None:
                continue
            values = [v for v in record["spectrum"]["singular_values"] if v > 0]
            if not values:
                continue
            layer = record["spectrum"]["layer"]
            rank = next((row["rank"] for row in record.get("layers", []) if row["name"] == layer), None)
            label = f"{method} (measured rank {rank})" if rank is not None else method
            ax.plot(range(1, len(values) + 1), [v / values[0] for v in values], label=label)
        shown = next(r["spectrum"]["layer"] for (m, _), r in chosen.items() if m == model)
        ax.set_yscale("log")
        ax.set_xlabel("index i")
        ax.set_ylabel("s_i / s_1 of dW")
        ax.set_title(f"{model}: {shown}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def tuning_curves(cells: list[Any], title: str, out: Path) -> Path | None:
    """The tuning protocol's trials: the validation metric (%) against the learning rate (log scale), one line per
    method (and per value of any other option searched), one panel per model and task; the chosen setting is a star,
    a trial that diverged a cross on the lower edge."""
    tuned = [c for c in cells if c.trials]
    if not any(t.status != "missing" for c in tuned for t in c.trials):
        return None
    panels = list(dict.fromkeys((c.variant, c.model, c.task) for c in tuned))
    columns = min(len(panels), 3)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.6 * columns, 4.2 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        members = [c for c in tuned if (c.variant, c.model, c.task) == panel]
        failed_at = []
        for i, cell in enumerate(members):
            chosen = cell.chosen
            lines: dict[str, list] = {}
            for trial in cell.trials:
                others = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in trial.setting.values[1:])
                lines.setdefault(others, []).append(trial)
            for j, (others, trials) in enumerate(lines.items()):
                trials = sorted(trials, key=lambda t: t.setting.lr)
                points = [
                    (t.setting.lr, 100 * t.value(cell.metric)) for t in trials if t.value(cell.metric) is not None
                ]
                label = cell.method + (f" ({others})" if others else "")
                style = dict(color=f"C{i % 10}", linestyle=("-", "--", ":", "-.")[j % 4])
                if points:
                    ax.plot(*zip(*points), marker="o", ms=4, label=label, **style)
                failed_at += [(t.setting.lr, f"C{i % 10}") for t in trials if t.status == "failed"]
                if chosen is not None and chosen in trials:
                    ax.plot(chosen.setting.lr, 100 * chosen.value(cell.metric), marker="*", ms=14, **style)
        low = ax.get_ylim()[0]
        for lr, color in failed_at:
            ax.plot(lr, low, marker="x", ms=8, color=color, clip_on=False)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel(f"{members[0].metric} (%)")
        ax.set_title(", ".join(p for p in panel if p), fontsize=9)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(textwrap.fill(f"Tuning trials: {title} (star: chosen; x: diverged)", 90), fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


# ---- the paper's figures (experiments.tables.figures) ---------------------------------------------------------------


def accuracy_vs_trained(
    rows: list[dict[str, Any]], column: str, paper: dict[str, dict[str, float]], title: str, out: Path
) -> Path | None:
    """Figure 4: one point per variant (ours: mean ± std over seeds), x = trained values on a log axis, beside the
    paper's read-off points (hollow) at the paper's own x positions."""
    ours = [r for r in rows if r.get(column) and r.get("trainable_params")]
    theirs = [(label, p) for label, p in paper.items() if column in p and "trained" in p]
    if not ours and not theirs:
        return None
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for i, row in enumerate(ours):
        mean, std = _percent(row[column])
        label = row["variant"] or row["method"]
        where = (row["trainable_params"], mean)
        ax.errorbar(*where, yerr=std or None, fmt="o", ms=6, capsize=3, color=f"C{i % 10}", label=f"ours: {label}")
    if theirs:
        xs, ys = [p["trained"] for _, p in theirs], [p[column] for _, p in theirs]
        ax.scatter(xs, ys, facecolors="none", edgecolors="black", s=40, label="the paper (read off its figure)")
        for label, point in theirs:
            where = (point["trained"], point[column])
            ax.annotate(label, where, fontsize=6, xytext=(4, -9), textcoords="offset points")
    ax.legend(fontsize=7, loc="best")  # ours by colour (close points would hide each other's labels)
    ax.set_xscale("log")
    ax.set_xlabel("trained values (log scale)")
    ax.set_ylabel(f"{column} (%)")
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def layer_ranks(frame: Any, modules: list[str], title: str, out: Path) -> Path | None:
    """Figures 3 and 5: the measured rank of every layer's dW against the layer index, one panel per module, one
    line per series, the full-rank bound dashed."""
    if frame is None or len(frame) == 0:
        return None
    fig, axes = plt.subplots(1, len(modules), figsize=(5.5 * len(modules), 4.2), squeeze=False)
    for ax, module in zip(axes[0], modules):
        part = frame[frame["module"] == module]
        for i, (series, group) in enumerate(part.groupby("series", sort=False)):
            group = group.sort_values("layer")
            ax.plot(group["layer"], group["rank"], marker=".", ms=4, lw=1, color=f"C{i % 10}", label=series)
        if len(part):
            ax.axhline(int(part["full rank"].max()), color="black", ls="--", lw=1, label="full rank")
        ax.set_xlabel("layer index")
        ax.set_ylabel(f"rank of dW ({module})")
        ax.set_title(module, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=9)
    fig.tight_layout()
    return _save(fig, out)


def task_bars(
    rows: list[dict[str, Any]], labels: list[str], paper: dict[str, dict[str, float]], title: str, out: Path
) -> Path | None:
    """Figure 6: grouped bars per task, one bar per setting (ours), the paper's read-off values as black ticks."""
    ours = [r for r in rows if any(r.get(label) for label in labels)]
    if not ours:
        return None
    width = 0.8 / len(ours)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) * len(ours) / 2), 4.4))
    for i, row in enumerate(ours):
        setting = row["variant"] or row["method"]
        xs = [j + (i - (len(ours) - 1) / 2) * width for j in range(len(labels))]
        means = [_percent(row[label])[0] if row.get(label) else 0.0 for label in labels]
        ax.bar(xs, means, width=width * 0.95, color=f"C{i % 10}", label=setting)
        read = [(x, paper.get(setting, {}).get(label)) for x, label in zip(xs, labels)]
        read = [(x, v) for x, v in read if v is not None]
        if read:
            ax.scatter(*zip(*read), marker="_", s=200, color="black", zorder=3)
    if paper:
        ax.scatter([], [], marker="_", s=200, color="black", label="the paper (read off its figure)")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)
