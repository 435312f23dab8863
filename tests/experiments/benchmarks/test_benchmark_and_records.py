"""The efficiency benchmark measures real figures at tiny shapes; records are written atomically."""

import json
import os
import platform

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments.benchmarks.efficiency import goals, measure, presets, run
from experiments.benchmarks.efficiency import report as efficiency_report
from experiments.records.write import device_description, environment, write_json_atomic

TINY = presets.load_preset("tiny")


@pytest.mark.parametrize("name", ["lora", "tera", "tera-half", "tera-cached"])
def test_measure_one_method_at_tiny_shapes(name):
    entry = next(e for e in TINY["methods"] if presets.method_spec(e)["name"] == name)
    row = measure.measure(TINY, entry)
    for key in (
        "step_ms",
        "tokens_per_s",
        "peak_train_gib",
        "optimizer_state_bytes",
        "adapter_file_bytes",
        "merge_ms",
        "prefill_ms_unmerged",
        "prefill_ms_merged",
        "decode_ms_per_token_unmerged",
        "decode_ms_per_token_merged",
    ):
        assert row[key] > 0, key
    # AdamW keeps two float32 moments per trained value, plus a 4-byte step counter per tensor
    assert 8 * row["trainable"] < row["optimizer_state_bytes"] <= 8 * row["trainable"] + 4 * 64
    assert row["merged_max_rel_diff"] < 1e-5  # merged and unmerged inference give the same outputs
    if name.startswith("tera"):
        assert row["shared_frozen_bytes"] > 0 and row["adapter_file_bytes"] < 4096
    else:
        assert row["shared_frozen_bytes"] == 0


def test_a_mistaken_preset_or_method_exits_2_with_one_sentence_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        presets.load_preset("nope")
    assert stop.value.code == 2 and "unknown preset 'nope'; choose one of: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        run.run_all(TINY, tmp_path, tmp_path / "eff.md", methods=["lora", "lroa"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: preset 'tiny' has no method lroa; choose from: ")
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_ctrl_c_exits_130_with_one_line_and_keeps_the_previous_report(tmp_path, monkeypatch, capsys):
    report = tmp_path / "eff.md"
    report.write_text("previous")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "_measure_and_write", interrupted)
    with pytest.raises(SystemExit) as stop:
        run.run_all(TINY, tmp_path, report)
    assert stop.value.code == 130 and capsys.readouterr().err.startswith("interrupted: nothing written; ")
    assert report.read_text() == "previous"


def test_method_spec_reads_conf_method_and_overrides():
    assert presets.method_spec("vera")["peft"]["r"] == 256
    spec = presets.method_spec({"name": "lora-r32", "method": "lora", "peft": {"r": 32}})
    assert spec == {"name": "lora-r32", "method": "lora", "peft": {"r": 32, "lora_alpha": 16, "lora_dropout": 0.0}}


def test_render_names_device_versions_ratios_and_targets():
    record = {
        "preset": TINY,
        "environment": environment("cpu"),
        "rows": [
            {"method": "base", "trainable": 0, "prefill_ms_merged": 2.0, "decode_ms_per_token_merged": 1.0},
            {
                "method": "lora",
                "trainable": 5,
                "step_ms": 10.0,
                "tokens_per_s": 1600.0,
                "peak_train_gib": 1.0,
                "optimizer_state_bytes": 40,
                "adapter_file_bytes": 500,
                "adapter_with_shared_bytes": 500,
                "merge_ms": 1.0,
                "prefill_ms_unmerged": 2.5,
                "prefill_ms_merged": 2.0,
                "decode_ms_per_token_unmerged": 1.2,
                "decode_ms_per_token_merged": 1.0,
                "merged_max_rel_diff": 0.0,
            },
            {
                "method": "tera",
                "trainable": 3,
                "step_ms": 12.0,
                "tokens_per_s": 1333.0,
                "peak_train_gib": 0.9,
                "optimizer_state_bytes": 24,
                "adapter_file_bytes": 300,
                "adapter_with_shared_bytes": 9000,
                "merge_ms": 2.0,
                "prefill_ms_unmerged": 3.0,
                "prefill_ms_merged": 2.0,
                "decode_ms_per_token_unmerged": 1.5,
                "decode_ms_per_token_merged": 1.0,
                "merged_max_rel_diff": 1e-7,
            },
            {"method": "vera", "error": "boom"},
        ],
    }
    record["rows"][1]["ratio"] = {"median": 1.0, "q1": 1.0, "q3": 1.0, "min": 1.0, "max": 1.0}
    record["rows"][2]["ratio"] = {"median": 1.2, "q1": 1.18, "q3": 1.23, "min": 1.1, "max": 1.3}
    text = efficiency_report.render(record)
    assert "| tera | 3 | 24 B | 12.0 | 1.20 (1.18-1.23) | 1,333 | 0.90 | 300 B | 8.8 KB | 2.0 |" in text
    assert "failed: boom" in text and record["environment"]["versions"]["torch"] in text
    assert "- full-rank TeRA (auto) train step vs LoRA: 1.200x (target <= 1.5x): met" in text  # the CPU goal
    assert "- unmerged TeRA overhead: prefill 1.50x, decode 1.50x the base model" in text  # ratio of the medians
    # Paired with the base model's call in each round, the median of the per-round ratios is what counts.
    record["measurement"] = {
        "inference": "paired with the base model",
        **{"rounds": 4, "steps_per_round": 3, "reference": "lora", "load_before": 0.1, "loads": [0.1], "cores": 2},
    }
    record["rows"][2]["prefill_vs_base_merged"] = _ratio(1.01, 0.99, 1.03)
    record["rows"][2]["prefill_vs_base_unmerged"] = _ratio(1.4, 1.3, 1.6)
    text = efficiency_report.render(record)
    assert "| 1.40 (1.30-1.60) | 1.01 (0.99-1.03) | 1.00 |" in text  # unmerged, merged prefill; decode unpaired
    assert "- merged TeRA prefill vs base model: 1.010x (target <= 1.05x): met" in text
    assert "inference spread too wide to trust** (interquartile range above 10% of the median ratio)" in text
    assert "tera (prefill unmerged)" in text and "tera (prefill merged)" not in text


def _ratio(median, q1=None, q3=None):
    q1, q3 = median if q1 is None else q1, median if q3 is None else q3
    return {"median": median, "q1": q1, "q3": q3, "min": q1, "max": q3}


def test_auto_is_compared_with_its_forced_siblings_only():
    rows = [
        {"method": "lora", "peft": {}, "ratio": _ratio(1.0)},
        {"method": "tera", "peft": {"core_rank_ratio": 1.0, "forward_path": "auto"}, "ratio": _ratio(1.30)},
        {"method": "tera-merged", "peft": {"core_rank_ratio": 1.0, "forward_path": "merged"}, "ratio": _ratio(1.25)},
        {"method": "tera-fact", "peft": {"core_rank_ratio": 1.0, "forward_path": "factorised"}, "ratio": _ratio(1.6)},
        {"method": "tera-half", "peft": {"core_rank_ratio": 0.5, "forward_path": "auto"}, "ratio": _ratio(1.1)},
        {"method": "tera-half-f", "peft": {"core_rank_ratio": 0.5, "forward_path": "factorised"}, "ratio": _ratio(1.1)},
    ]
    found = {c["auto"]["method"]: c for c in goals.auto_vs_forced({"rows": rows})}
    assert set(found) == {"tera", "tera-half"}
    assert found["tera"]["best"] == "merged" and found["tera"]["auto_over_best"] == pytest.approx(1.04)
    assert set(found["tera-half"]["forced"]) == {"factorised"} and found["tera-half"]["auto_over_best"] == 1.0


def test_auto_that_ran_the_best_forced_path_everywhere_is_not_failed_for_process_noise():
    def rows(auto_ratio, paths):
        return [
            {"method": "lora", "peft": {}, "ratio": _ratio(1.0)},
            {"method": "tera", "peft": {"forward_path": "auto"}, "ratio": _ratio(auto_ratio), "auto_paths": paths},
            {"method": "tera-m", "peft": {"forward_path": "merged"}, "ratio": _ratio(1.30)},
            {"method": "tera-f", "peft": {"forward_path": "factorised"}, "ratio": _ratio(1.60)},
        ]

    merged_only = {"p1 rank train <=512 tokens float32": "merged (timed: ...)", "p1 rank eval <=8 tokens": "factorised"}
    (same,) = goals.auto_vs_forced({"rows": rows(1.40, merged_only)})
    assert same["same_path"] and goals.auto_verdict(same, 1.05) == "met (same path on every call)"
    mixed = dict(merged_only, **{"p2 rank train <=512 tokens float32": "factorised (timed: ...)"})
    (chose_otherwise,) = goals.auto_vs_forced({"rows": rows(1.40, mixed)})
    assert not chose_otherwise["same_path"] and goals.auto_verdict(chose_otherwise, 1.05) == "missed"
    (close,) = goals.auto_vs_forced({"rows": rows(1.32, mixed)})
    assert goals.auto_verdict(close, 1.05) == "met"
    # The CPU target shows the forced twin as a second reading of the same computation; the verdict stays auto's.
    record = {"preset": {"device": "cpu"}, "rows": rows(1.56, merged_only)}
    for row in record["rows"]:
        row.update(step_ms=10.0, adapter_file_bytes=1024)
    record["rows"][0]["method"] = "lora-r32"
    text = "\n".join(goals.targets(record))
    assert "full-rank TeRA (auto) train step vs LoRA: 1.560x (target <= 1.5x): missed" in text
    assert "the same computation in a second process (tera-m, forced merged" in text and "): 1.300x" in text


def test_measurement_notes_flag_a_busy_machine_and_a_wide_spread():
    rows = [{"method": "lora", "ratio": _ratio(1.0)}, {"method": "tera", "ratio": _ratio(1.5, 1.3, 1.7)}]
    base = {"rounds": 9, "steps_per_round": 3, "reference": "lora", "load_before": 0.1, "loads": [2.1], "cores": 2}
    quiet = efficiency_report.measurement_notes({"measurement": dict(base, other_cores=0.01), "rows": rows[:1]})
    assert any("Quiet machine" in line for line in quiet)
    noisy = "\n".join(efficiency_report.measurement_notes({"measurement": dict(base, other_cores=0.9), "rows": rows}))
    assert "Other processes kept 0.90 cores busy" in noisy and "the machine was busy" in noisy
    assert "spread too wide to trust** (interquartile range above 10% of the median ratio): tera." in noisy


@pytest.mark.slow
def test_run_all_times_methods_round_robin_in_their_own_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("TERA_AUTOTUNE", "1")  # the worker processes inherit it: TeRA's auto path is timed
    preset = dict(TINY, methods=["base", "lora", "tera", {"name": "broken", "method": "lora", "peft": {"r": -1}}])
    record = run.run_all(preset, tmp_path, tmp_path / "eff.md")
    rows = {r["method"]: r for r in record["rows"]}
    assert list(rows) == ["base", "lora", "tera", "broken"]
    assert "error" in rows["broken"] and all("error" not in rows[m] for m in ("base", "lora", "tera")), rows
    assert len(rows["tera"]["round_ms"]) == TINY["rounds"] and rows["lora"]["ratio"]["median"] == 1.0
    assert rows["tera"]["auto_paths"] and all("timed" in v for v in rows["tera"]["auto_paths"].values())
    assert record["measurement"]["other_cores"] is not None
    assert json.loads((tmp_path / "efficiency-tiny.json").read_text())["rows"][2]["step_ms"] > 0
    report = (tmp_path / "eff.md").read_text()
    assert "## Inference" in report and "| tera |" in report and "## Targets" in report and "Machine:" in report
    # Inference is timed round-robin too, each call right after the base model's: unmerged adapters, then merged.
    assert record["measurement"]["inference"] == "paired with the base model"
    for name in ("lora", "tera"):
        for key in ("prefill_vs_base_unmerged", "prefill_vs_base_merged", "decode_vs_base_merged"):
            assert rows[name][key]["median"] > 0, (name, key)
    assert rows["base"]["prefill_ms_merged"] > 0 and "prefill_vs_base_merged" not in rows["base"]
    assert rows["tera"]["merged_max_rel_diff"] < 1e-5 and "merged prefill x base" in report
    # The report written from the live record reads the same as one re-rendered from the JSON (sorted keys).
    assert efficiency_report.render(json.loads((tmp_path / "efficiency-tiny.json").read_text())) == report


def test_goals_are_read_from_the_preset_and_a_record_without_them_uses_its_presets_file(tmp_path, capsys):
    assert presets.load_preset("llama2-7b")["goals"]["tera_step_vs_lora"] == 1.30  # conf/bench/*.yaml, not code
    rows = [
        {"method": "lora", "step_ms": 10.0, "peak_train_gib": 1.0, "adapter_file_bytes": 1024},
        {"method": "tera", "step_ms": 12.0, "peak_train_gib": 0.9, "adapter_file_bytes": 2048},
    ]
    own = {"name": "mine", "device": "cpu", "goals": {"tera_step_vs_lora": 1.1, "adapter_file_kb": 1}}
    text = "\n".join(goals.targets({"preset": own, "rows": rows}))
    assert "vs LoRA: 1.200x (target <= 1.1x): missed by 9.1%" in text and "(target <= 1 KB): missed" in text
    assert "full fine-tuning" not in text and "prefill" not in text  # a goal the preset does not state: no check
    # A record from before the goals moved into the presets: those of its preset's file, else its device's preset.
    for preset in ({"name": "llama2-7b", "device": "cuda"}, {"name": "gone", "device": "cuda"}):
        text = "\n".join(goals.targets({"preset": preset, "rows": rows}))
        assert "vs LoRA (stretch 1.2x): 1.200x (target <= 1.3x): met" in text and "peak memory" in text
    with pytest.raises(SystemExit) as stop:
        run.run_all(dict(TINY, goals={"tera_step_vs_lroa": 1.3}), tmp_path, tmp_path / "eff.md")
    assert (
        stop.value.code == 2 and "preset 'tiny' has unknown goals tera_step_vs_lroa; known: " in capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


def test_identical_entries_report_the_noise_between_processes():
    preset = {
        "methods": [
            "lora",
            {"name": "t-a", "method": "tera", "peft": {"forward_path": "merged"}},
            {"name": "t-b", "method": "tera", "peft": {"forward_path": "merged"}},
            {"name": "t-f", "method": "tera", "peft": {"forward_path": "factorised"}},
        ]
    }
    rows = [{"method": n, "ratio": _ratio(v)} for n, v in (("lora", 1.0), ("t-a", 1.30), ("t-b", 1.43), ("t-f", 1.6))]
    (line,) = efficiency_report._twin_notes({"preset": preset, "rows": rows})
    assert line.startswith("Identical entries t-a, t-b (separate processes, same computation): ratios 1.30-1.43, 10.0%")


@pytest.mark.parametrize(
    "record, report",
    [
        ("benchmarks/efficiency-cpu-small.json", "efficiency.md"),
        ("benchmarks/efficiency-cpu-twins.json", "efficiency-cpu-twins.md"),
        ("benchmarks/efficiency-llama2-7b.json", "efficiency-llama2-7b.md"),
        ("gpu-check/efficiency-llama2-7b.json", "gpu-check/efficiency-llama2-7b.md"),
    ],
)
def test_committed_efficiency_reports_rerender_from_their_records(record, report):
    results = presets.ROOT / "results"
    assert efficiency_report.render(json.loads((results / record).read_text())) == (results / report).read_text()


def test_bench_presets_compose_through_hydra():
    with initialize_config_dir(config_dir=str(presets.ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="bench_config", overrides=["bench=llama2-7b", "bench.batch=8"])
    assert cfg.bench.model.hidden == 4096 and cfg.bench.batch == 8 and cfg.bench.dtype == "bfloat16"
    names = [presets.method_spec(e)["name"] for e in cfg.bench.methods]
    assert names[:3] == ["base", "full", "lora-r32"] and "tera-half" in names


def test_write_json_atomic_leaves_no_temporary_files(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "record.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        write_json_atomic(tmp_path / "sub" / "record.json", circular)  # fails mid-write: old record untouched
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]


def test_a_cpu_is_named_with_its_model_kernels_and_cores():
    """Two x86_64 CPUs gave a twofold different LoRA step and different TeRA ratios: a figure names which one."""
    text = device_description("cpu")
    assert text.startswith(f"CPU {platform.machine()}")
    assert f"{torch.backends.cpu.get_cpu_capability()} kernels" in text
    assert f"({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)" in text


def test_a_virtual_token_method_in_a_preset_is_one_sentence(capsys):
    from experiments.benchmarks.efficiency.presets import method_spec

    with pytest.raises(SystemExit) as stop:
        method_spec({"name": "pt", "method": "prompt-tuning"})
    assert stop.value.code == 2 and "adds virtual tokens and adapts no layer" in capsys.readouterr().err
