"""The paper's printed cells beside ours: for a spec with a ``paper`` section, three lines per model and method (the
paper's figure, ours as mean ± std over seeds, and ours minus the paper's), every column the paper prints, its
percentage of trained parameters included. A cell still to run says so; the paper's line is there from the start,
so the table renders before a single run exists."""

from __future__ import annotations

import statistics
from typing import Any

import pandas as pd

from experiments.tables.render import mean_std, to_markdown

PERCENT = "%"  # the paper's share of trained parameters, trained / (frozen + trained)


def paper_cell(spec_paper: dict[str, Any], model: str, method: str, label: str) -> float | None:
    value = (((spec_paper.get("values") or {}).get(model) or {}).get(method) or {}).get(label)
    return None if value is None else float(value)


def _ours(row: dict[str, Any], label: str) -> tuple[str, float | None]:
    """Our cell in % (mean ± std over seeds, with the seeds found where some are missing) and its mean."""
    values, expected = row.get(label) or [], (row.get("expected") or {}).get(label, 0)
    if not values:
        return "to run", None
    mean, std = mean_std(values)
    text = f"{100 * mean:.2f} ± {100 * std:.2f}"
    return (text if len(values) == expected else f"{text} ({len(values)}/{expected} seeds)"), 100 * mean


def _our_percent(row: dict[str, Any]) -> tuple[str, float | None]:
    trained, total = row.get("trainable_params"), row.get("total_params")
    if not trained or not total:
        return ("to run" if trained is None else ""), None
    percent = 100 * trained / total
    return f"{percent:.4f}", percent


def _difference(ours: float | None, paper: float | None, digits: int) -> str:
    return "" if ours is None or paper is None else f"{ours - paper:+.{digits}f}"


def published_frame(spec_paper: dict[str, Any], rows: list[dict[str, Any]], labels: list[str]) -> pd.DataFrame:
    """Per (model, method) row of ours: the paper's line, ours and the difference, over ``%`` and ``labels``."""
    lines = []
    for row in rows:
        model, method = row["model"], row["method"]
        head = {"model": model, "method": method}
        paper = {PERCENT: paper_cell(spec_paper, model, method, PERCENT)}
        paper |= {label: paper_cell(spec_paper, model, method, label) for label in labels}
        ours = {PERCENT: _our_percent(row)} | {label: _ours(row, label) for label in labels}
        digits = {PERCENT: 4} | dict.fromkeys(labels, 2)
        lines.append(head | {"": "paper"} | {k: "" if v is None else f"{v:.{digits[k]}f}" for k, v in paper.items()})
        lines.append(head | {"": "ours"} | {k: text for k, (text, _) in ours.items()})
        lines.append(head | {"": "ours - paper"} | {k: _difference(ours[k][1], paper[k], digits[k]) for k in paper})
    return pd.DataFrame(lines, columns=["model", "method", "", PERCENT, *labels]).fillna("")


def published_section(spec_paper: dict[str, Any], rows: list[dict[str, Any]], labels: list[str]) -> str:
    """The Markdown of the comparison, with one line on how far our filled averages are from the paper's."""
    frame = published_frame(spec_paper, rows, labels)
    markdown = to_markdown(frame, 3)
    last = labels[-1] if labels else None
    gaps = [
        ours - paper
        for row in rows
        if last
        and (paper := paper_cell(spec_paper, row["model"], row["method"], last)) is not None
        and (ours := _ours(row, last)[1]) is not None
    ]
    summary = (
        f"Where both exist, ours minus the paper's {last}: mean {statistics.fmean(gaps):+.2f} over {len(gaps)} rows."
        if gaps
        else "No cell of ours is filled yet: the paper's lines show what each run is to be compared with."
    )
    source = spec_paper.get("source", "")
    return "\n\n".join([markdown.rstrip(), summary, f"Paper: {source}".strip()])
