"""The serving plot: tokens/s against the number of distinct adapters per batch, one line per method, prefill and
decode side by side, with the base model and each method's merged single adapter as level lines.

matplotlib is optional (the GPU machine may lack it): without it the record and report say the plot was skipped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from experiments.benchmarks.efficiency.rounds import INFERENCE_KINDS
from experiments.benchmarks.serving.rounds import MERGED


def draw(record: dict[str, Any], path: Path, report_dir: Path) -> dict[str, str]:
    """Write the plot of ``record`` to ``path``; ``{"path": <relative to the report>}`` or ``{"skipped": why}``."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        return {"skipped": "matplotlib is not installed here"}
    preset, base = record["preset"], record.get("base") or {}
    ks = preset["distinct"]
    figure, axes = plt.subplots(1, len(INFERENCE_KINDS), figsize=(11, 4))
    for axis, kind in zip(axes, INFERENCE_KINDS):
        for index, row in enumerate(r for r in record["rows"] if r.get("figures")):
            color = f"C{index}"
            points = [(k, row["figures"][f"{kind}:{k}"]["tokens_per_s"]) for k in ks if f"{kind}:{k}" in row["figures"]]
            if points:
                axis.plot(*zip(*points), marker="o", color=color, label=row["method"])
            merged = row["figures"].get(f"{kind}:{MERGED}")
            if merged:
                axis.axhline(merged["tokens_per_s"], color=color, linestyle=":", linewidth=1)
        if kind in base:
            axis.axhline(base[kind]["tokens_per_s"], color="black", linestyle="--", linewidth=1, label="base model")
        axis.set_xscale("log", base=2)
        axis.set_xticks(ks, [str(k) for k in ks])
        axis.set_xlabel(f"distinct adapters in a batch of {preset['batch']}")
        axis.set_ylabel(f"{kind} tokens/s")
        axis.set_title(f"{kind} (dotted: the method's merged single adapter)", fontsize=9)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Serving many adapters, {preset['name']} ({record['environment']['device']})", fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return {"path": Path(os.path.relpath(path, report_dir)).as_posix()}
