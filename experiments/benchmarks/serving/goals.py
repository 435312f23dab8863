"""The serving goals of issue 29 (part 2), checked on a record: TeRA in the paper's layout on q,v, served unmerged
through ``adapter_names=``, on an H200.

The numbers live in the presets (``goals:`` in ``conf/bench/serving-<name>.yaml``), with the method they judge
(``goals_method``) and whether this device is the one they are set for (``judged``; on a CPU preset the same ratios
are shown beside the GPU goals without a verdict):

- ``decode_vs_base``, ``prefill_vs_base``: a limit on the time of a call over the base model's (median over rounds),
  at every measured number of distinct adapters per batch; the worst one decides;
- ``mixed_vs_single``: a floor on the tokens/s of a batch of all-distinct adapters over the same batch on one adapter.
"""

from __future__ import annotations

from typing import Any

KINDS = ("decode", "prefill")


def _row(record: dict[str, Any], name: str | None) -> dict[str, Any] | None:
    return next((r for r in record["rows"] if r["method"] == name), None)


def _verdict(value: float, limit: float, at_most: bool, judged: bool, where: str) -> str:
    """``met``/``missed`` and by how much, or the figure beside a goal set for another device."""
    if not judged:
        return f"{value:.2f}x{where}; GPU goal, not judged on this device"
    met = value <= limit if at_most else value >= limit
    margin = abs(value / limit - 1) * 100
    if met:
        return f"**met**: {value:.2f}x{where}, {margin:.0f}% {'under' if at_most else 'over'} the goal"
    return f"**missed** by {margin:.0f}%: {value:.2f}x{where}"


def _vs_base_line(row: dict[str, Any], preset: dict[str, Any], kind: str, limit: float) -> str:
    ks = [k for k in preset["distinct"] if "vs_base" in row["figures"].get(f"{kind}:{k}", {})]
    if not ks:
        return f"- unmerged {kind} over the base model: not measured"
    ratios = {k: row["figures"][f"{kind}:{k}"]["vs_base"]["median"] for k in ks}
    worst = max(ks, key=lambda k: ratios[k])
    each = ", ".join(f"{ratios[k]:.2f}x" for k in ks)
    verdict = _verdict(ratios[worst], limit, True, preset.get("judged", True), f" at k = {worst}")
    return (
        f"- unmerged {kind} time over the base model's (k = {', '.join(map(str, ks))} distinct adapters: {each}); "
        f"goal <= {limit:g}x at every k: {verdict}"
    )


def _mixed_line(row: dict[str, Any], preset: dict[str, Any], kind: str, limit: float) -> str:
    k = preset["distinct"][-1]
    figure = row["figures"].get(f"{kind}:{k}", {}).get("vs_single")
    if figure is None:
        return f"- {kind} tokens/s with {k} distinct adapters over one adapter: not measured"
    verdict = _verdict(figure["median"], limit, False, preset.get("judged", True), "")
    return (
        f"- {kind} tokens/s of a batch of {preset['batch']} with {k} distinct adapters over the same batch on one "
        f"adapter (IQR {figure['q1']:.2f}-{figure['q3']:.2f}); goal >= {limit:g}x: {verdict}"
    )


def targets(record: dict[str, Any]) -> list[str]:
    """The report's Targets section: one line per goal the preset states, saying met or missed and by how much."""
    preset = record["preset"]
    goals = preset.get("goals") or {}
    if not goals:
        return []
    name = preset.get("goals_method")
    judged = preset.get("judged", True)
    lines = ["## Targets", ""]
    where = "on this device"
    if not judged:
        where = "on an H200 (`serving-llama2-7b`); this device is not the one they are set for"
    lines.append(f"The serving goals of `{name}` (the paper's layout, q and v), served unmerged, {where}.")
    lines.append("")
    row = _row(record, name)
    if row is None or "error" in row or "figures" not in row:
        return [*lines, f"- `{name}` was not measured: {(row or {}).get('error', 'not in this run')}"]
    for kind in KINDS:
        if f"{kind}_vs_base" in goals:
            lines.append(_vs_base_line(row, preset, kind, goals[f"{kind}_vs_base"]))
    if "mixed_vs_single" in goals:
        lines += [_mixed_line(row, preset, kind, goals["mixed_vs_single"]) for kind in KINDS]
    return lines
