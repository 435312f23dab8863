"""The goals of full-rank TeRA, checked on a run's figures: the report's Targets section and the verdict on TeRA's
automatic path.

The numbers live in the presets (``goals:`` in ``conf/bench/<name>.yaml``), each a limit the measured figure must not
exceed; a check whose goal a preset does not state is left out.  A record carries its preset, goals included, so it
is judged by the goals it was run with; a record from before the goals moved into the presets is judged by those of
the committed preset of its name, else by those of its device's main preset (cpu-small on a CPU, llama2-7b on a GPU).
"""

from __future__ import annotations

from typing import Any

from experiments.benchmarks.efficiency.presets import preset_goals, user_error

GOAL_KEYS = (
    "tera_step_vs_lora",  # full-rank TeRA (auto) train step over the reference LoRA's
    "tera_step_vs_lora_stretch",  # the stretch goal of the same ratio, named in its line (no verdict of its own)
    "tera_memory_vs_lora",  # full-rank TeRA's peak training memory over LoRA's
    "tera_half_step_vs_lora",  # tera-half (core ranks I/2) train step over LoRA's
    "cached_step_vs_lora",  # tera-cached (keeps W + dW) train step over LoRA's
    "tera_step_vs_full",  # full-rank TeRA (auto) train step over full fine-tuning's
    "cached_step_vs_full",  # tera-cached train step over full fine-tuning's
    "merged_prefill_vs_base",  # merged TeRA prefill over the base model's
    "adapter_file_kb",  # TeRA's adapter file without the shared frozen factors, KB
    "auto_vs_best_forced",  # forward_path=auto's ratio over the better forced path's
)
KEPT = "full-rank TeRA keeping W + dW (cache_merged_weight, one weight-sized copy per layer)"


def goals_of(preset: dict[str, Any]) -> dict[str, float]:
    """The goals a run of ``preset`` is judged by (see the module's docstring)."""
    if preset.get("goals"):
        return preset["goals"]
    main = "llama2-7b" if preset.get("device", "cpu").startswith("cuda") else "cpu-small"
    for name in (preset.get("name"), main):
        goals = preset_goals(name) if name else None
        if goals:
            return goals
    return {}


def check_goals(preset: dict[str, Any]) -> None:
    """Exit with one sentence, before anything is measured, when the preset names a goal no check knows."""
    unknown = sorted(set(preset.get("goals") or {}) - set(GOAL_KEYS))
    if unknown:
        user_error(f"preset {preset['name']!r} has unknown goals {', '.join(unknown)}; known: {', '.join(GOAL_KEYS)}.")


def auto_vs_forced(record: dict[str, Any]) -> list[dict[str, Any]]:
    """For each TeRA entry on forward_path=auto, its forced-path siblings (same options otherwise) and the verdict."""
    rows = [r for r in record["rows"] if r.get("ratio")]
    out = []
    for auto in rows:
        peft = auto.get("peft") or {}
        if "forward_path" not in peft or peft["forward_path"] != "auto":
            continue
        rest = {k: v for k, v in peft.items() if k != "forward_path"}
        forced = {
            r["peft"]["forward_path"]: r
            for r in rows
            if r is not auto
            and r.get("peft", {}).get("forward_path") in ("merged", "factorised")
            and {k: v for k, v in r["peft"].items() if k != "forward_path"} == rest
        }
        if not forced:
            continue
        best = min(forced, key=lambda path: forced[path]["ratio"]["median"])
        verdict = auto["ratio"]["median"] / forced[best]["ratio"]["median"]
        out.append(
            {
                "auto": auto,
                "forced": forced,
                "best": best,
                "auto_over_best": verdict,
                "same_path": _train_paths(auto) == {best},
            }
        )
    return out


def _train_paths(row: dict[str, Any]) -> set[str]:
    """The paths auto chose for training calls (from the row's ``auto_paths``, e.g. ``"merged (timed: ...)"``)."""
    return {path.split()[0] for label, path in (row.get("auto_paths") or {}).items() if " train " in label}


def auto_verdict(comparison: dict[str, Any], limit: float) -> str:
    """Met when auto is within ``limit`` (the ``auto_vs_best_forced`` goal) of the best forced path, or when it ran
    that very path on every training call: then both entries compute the same thing and their gap is noise between
    two processes, not a choice."""
    if comparison["auto_over_best"] <= limit:
        return "met"
    return "met (same path on every call)" if comparison["same_path"] else "missed"


def step_ratio(row: dict[str, Any], lora: dict[str, Any]) -> float:
    return row["ratio"]["median"] if row.get("ratio") else row["step_ms"] / lora["step_ms"]


def inference_ratio(row: dict[str, Any], base: dict[str, Any], kind: str, phase: str) -> float:
    """The paired median ratio to the base model when measured so, else the ratio of the medians."""
    paired = row.get(f"{kind}_vs_base_{phase}")
    if paired:
        return paired["median"]
    key = "prefill_ms" if kind == "prefill" else "decode_ms_per_token"
    return row[f"{key}_{phase}"] / base[f"{key}_merged"]


def _check(label: str, value: float, limit: float, unit: str = "x") -> str:
    verdict = "met" if value <= limit else f"missed by {100 * (value / limit - 1):.1f}%"
    return f"- {label}: {value:.3f}{unit} (target <= {limit:g}{unit}): {verdict}"


def targets(record: dict[str, Any]) -> list[str]:
    """The goals of full-rank TeRA, checked on this run's figures: the GPU ones at LLaMA-2-7B shapes, the CPU ones
    on the small CPU preset."""
    rows = {r["method"]: r for r in record["rows"] if "error" not in r}
    lora, tera = rows.get("lora-r32") or rows.get("lora"), rows.get("tera")
    if not (lora and tera and "step_ms" in lora and "step_ms" in tera):
        return []
    goals = goals_of(record["preset"])
    lines = ["## Targets", ""]
    on_gpu = record["preset"]["device"].startswith("cuda")
    if not on_gpu:
        lines += ["CPU goals (the GPU ones are stated for an H200 at LLaMA-2-7B shapes: `make gpu-check`).", ""]
    lines += _training_checks(record, rows, goals, on_gpu)
    lines += _inference_and_storage_checks(rows, goals)
    return lines


def _training_checks(
    record: dict[str, Any], rows: dict[str, dict[str, Any]], goals: dict[str, float], on_gpu: bool
) -> list[str]:
    """Train step and memory of full-rank TeRA and its variants against LoRA's and full fine-tuning's."""
    lora, tera = rows.get("lora-r32") or rows.get("lora"), rows["tera"]
    half, cached, full = (
        rows[n] if n in rows and "step_ms" in rows[n] else None for n in ("tera-half", "tera-cached", "full")
    )
    lines = []
    if "tera_step_vs_lora" in goals:
        stretch = goals.get("tera_step_vs_lora_stretch")
        label = (
            f"full-rank TeRA train step vs LoRA (stretch {stretch:g}x)"
            if stretch
            else "full-rank TeRA (auto) train step vs LoRA"
        )
        lines.append(_check(label, step_ratio(tera, lora), goals["tera_step_vs_lora"]))
        if not on_gpu:
            lines += _second_reading(record, tera, lora)
    if "tera_memory_vs_lora" in goals:
        memory = tera["peak_train_gib"] / lora["peak_train_gib"]
        lines.append(_check("full-rank TeRA peak memory vs LoRA", memory, goals["tera_memory_vs_lora"]))
    if half and "tera_half_step_vs_lora" in goals:
        lines.append(
            _check("TeRA core ranks I/2 train step vs LoRA", step_ratio(half, lora), goals["tera_half_step_vs_lora"])
        )
    if cached and "cached_step_vs_lora" in goals:
        lines.append(_check(f"{KEPT}: train step vs LoRA", step_ratio(cached, lora), goals["cached_step_vs_lora"]))
    if full and "tera_step_vs_full" in goals:
        value = step_ratio(tera, lora) / step_ratio(full, lora)
        lines.append(_check("full-rank TeRA (auto) train step vs full fine-tuning", value, goals["tera_step_vs_full"]))
    if full and cached and "cached_step_vs_full" in goals:
        value = step_ratio(cached, lora) / step_ratio(full, lora)
        lines.append(_check(f"{KEPT}: train step vs full fine-tuning", value, goals["cached_step_vs_full"]))
    return lines


def _second_reading(record: dict[str, Any], tera: dict[str, Any], lora: dict[str, Any]) -> list[str]:
    """A second sample of the same computation, from another process (the forced path auto chose for every training
    call): how far one reading can move."""
    twin = next((c for c in auto_vs_forced(record) if c["auto"] is tera and c["same_path"]), None)
    if not twin:
        return []
    forced = twin["forced"][twin["best"]]
    return [
        f"  - the same computation in a second process ({forced['method']}, forced {twin['best']}, which auto "
        f"chose for every training call): {step_ratio(forced, lora):.3f}x"
    ]


def _inference_and_storage_checks(rows: dict[str, dict[str, Any]], goals: dict[str, float]) -> list[str]:
    """Merged TeRA's inference against the base model's, the unmerged overhead, and the adapter file's size."""
    tera, base = rows["tera"], rows.get("base")
    lines = []
    if base:
        if "merged_prefill_vs_base" in goals:
            value = inference_ratio(tera, base, "prefill", "merged")
            lines.append(_check("merged TeRA prefill vs base model", value, goals["merged_prefill_vs_base"]))
        lines.append(
            f"- unmerged TeRA overhead: prefill {inference_ratio(tera, base, 'prefill', 'unmerged'):.2f}x, "
            f"decode {inference_ratio(tera, base, 'decode', 'unmerged'):.2f}x the base model"
        )
    if "adapter_file_kb" in goals:
        size = tera["adapter_file_bytes"] / 1024
        lines.append(_check("TeRA adapter file without shared factors", size, goals["adapter_file_kb"], " KB"))
    return lines
