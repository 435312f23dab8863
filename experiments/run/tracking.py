"""Weights & Biases logging: offline when no API key is configured, online when it is, off with ``logger=none``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def _mode(requested: str) -> str:
    if requested != "auto":
        return requested
    has_key = bool(os.environ.get("WANDB_API_KEY")) or os.path.exists(os.path.expanduser("~/.netrc"))
    return os.environ.get("WANDB_MODE") or ("online" if has_key else "offline")


class Tracker:
    """A thin wrapper so the harness never depends on whether W&B is on."""

    def __init__(self, logger_cfg: Mapping[str, Any], run_name: str, config: dict) -> None:
        self.run = None
        if logger_cfg.get("name", "none") != "wandb":
            return
        import wandb

        self.run = wandb.init(
            project=logger_cfg.get("project", "tera-suite"),
            entity=logger_cfg.get("entity"),
            name=run_name,
            config=config,
            mode=_mode(logger_cfg.get("mode", "auto")),
            dir=logger_cfg.get("dir") or None,
            group=logger_cfg.get("group") or None,
            reinit="finish_previous",
        )

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(dict(values), step=step)

    def log_record(self, record: Mapping[str, Any]) -> None:
        """Per-layer table (trainable values, rank bound, measured rank) and a one-row summary table."""
        if self.run is None:
            return
        import wandb

        columns = ["layer", "d_out", "d_in", "trainable", "rank_bound", "rank"]
        layers = wandb.Table(
            columns=columns, data=[[row[c if c != "layer" else "name"] for c in columns] for row in record["layers"]]
        )
        metrics = record["final_metrics"]
        summary_columns = [
            "method",
            "task",
            "model",
            "seed",
            "trainable_params",
            "frozen_factor_values",
            "total_params",
            "median_rank",
            "learning_rate",  # what a tuned table's "chosen lr" column shows for the run
            *sorted(metrics),
        ]
        summary = wandb.Table(
            columns=summary_columns,
            data=[
                [
                    record["method"],
                    record["task"],
                    record["model"],
                    record["seed"],
                    record["trainable_params"],
                    record.get("frozen_factor_values"),
                    record["total_params"],
                    record["median_rank"],
                    record.get("learning_rate"),
                    *[metrics[k] for k in sorted(metrics)],
                ]
            ],
        )
        self.run.log({"layers": layers, "summary": summary})
        self.run.summary.update({f"final/{k}": v for k, v in metrics.items()})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def log_tables(logger_cfg: Mapping[str, Any], name: str, frames: Mapping[str, Any], caption: list[str]) -> None:
    """A rendered table as its own W&B run, named after the table: each pandas frame as a ``wandb.Table`` (a tuned
    table's ``summary`` with its chosen setting, and its ``tuning`` trials); the title and caption as its notes."""
    tracker = Tracker(logger_cfg, name, {"table": name, "caption": caption})
    if tracker.run is None:
        return
    import wandb

    tracker.run.notes = "\n".join(caption)
    tracker.run.log(
        {key: wandb.Table(dataframe=frame.astype(object).where(frame.notna(), None)) for key, frame in frames.items()}
    )
    tracker.run.summary.update({"caption": "\n".join(caption)})
    tracker.finish()
