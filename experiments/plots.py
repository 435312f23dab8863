"""Figures written by code from run records: accuracy against trainable parameters for a table, and singular-value
spectra of dW for TeRA, LoRA and VeRA (from the spectrum each record keeps of its middle adapted layer)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

SPECTRUM_METHODS = ("tera", "lora", "vera")


def accuracy_vs_parameters(rows: list[dict[str, Any]], column: str, title: str, out: Path) -> Path | None:
    """One point per table row with a value in ``column``; x = trainable parameters (log scale)."""
    points = [r for r in rows if r.get(column) and r.get("trainable_params")]
    if not points:
        return None
    models = sorted({r["model"] for r in points})
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        for row in (r for r in points if r["model"] == model):
            y = 100 * statistics.fmean(row[column])
            label = row["method"] + (f" ({row['variant']})" if row.get("variant") else "")
            ax.scatter(row["trainable_params"], y, s=36)
            ax.annotate(label, (row["trainable_params"], y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel(f"{column} (%)")
        ax.set_title(model)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


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
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
