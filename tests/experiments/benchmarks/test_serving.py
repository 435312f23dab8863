"""The serving benchmark (make bench-serving): mixed batches checked against each adapter alone, the record, report and
plot of the tiny preset, the goals' wording, and one-sentence refusals."""

import contextlib
import json

import pytest
import torch

from experiments.benchmarks import gpu_check
from experiments.benchmarks.serving import cli, load_serving_preset, render, run_all, targets
from experiments.benchmarks.serving.measure import ServingBench
from experiments.benchmarks.serving.rounds import serving_figures
from experiments.records.write import environment

TINY = load_serving_preset("serving-tiny")


@pytest.mark.parametrize("name", ["tera", "tera-balanced", "lora-r32"])
def test_a_mixed_batch_computes_what_each_adapter_computes_alone(name):
    entry = next(e for e in TINY["methods"] if (e if isinstance(e, str) else e["name"]) == name)
    bench = ServingBench(TINY, entry)
    assert bench.grow(TINY["distinct"][-1], forced=True) == 4
    bench.check()
    check = bench.row["check"]
    assert check["rows"] == ["default", "a1", "a2", "__base__"]
    assert check["ok"] and check["max_rel_diff"] < 1e-5 and check["merged_rel_diff"] < 1e-5, check
    assert check["greedy_same_rows"] == 4
    assert check["update_rel_size"] > 0.05  # random non-zero adapters: every adapter row differs from the base model
    sweep = bench.row["sweep"]
    assert [c["resident"] for c in sweep] == [1, 4] and all(c["load_ms"] > 0 for c in sweep)
    assert sweep[0]["own_bytes_per_adapter"] == 4 * bench.row["trainable_per_adapter"]  # float32 values
    assert (bench.row["shared_frozen_bytes"] > 0) == name.startswith("tera")
    assert (sweep[-1]["cache_bytes_per_adapter"] > 0) == name.startswith("tera")  # TeRA's stacked per-row tables
    for kind in ("prefill", "decode"):
        for k in (1, 4, "merged"):
            assert bench.infer(kind, k) > 0
    bench.finish()


def test_the_check_fails_when_the_rows_do_not_get_their_own_adapters(monkeypatch):
    from tera.model import TeraModel

    @contextlib.contextmanager
    def ignore_adapter_names(self, *args, **kwargs):  # what PEFT did for TeRA before fa08619: the active adapter only
        kwargs.pop("adapter_names", None)
        yield

    bench = ServingBench(TINY, "tera")
    bench.grow(4, forced=True)
    monkeypatch.setattr(TeraModel, "_enable_peft_forward_hooks", ignore_adapter_names)
    bench.check()
    assert not bench.row["check"]["ok"] and bench.row["check"]["max_rel_diff"] > 1e-2
    bench.finish()


def _figures(ratios: dict[str, list[float]]) -> dict:
    timing = {key: {"s": [0.01 * r for r in values], "ratio": values} for key, values in ratios.items()}
    return serving_figures(TINY, timing)


def _record(judged: bool) -> dict:
    """A record as run_all writes it, with chosen ratios: TeRA's decode 1.2x-1.6x the base model's."""
    preset = dict(TINY, judged=judged)
    ratios = {"prefill:1": [1.1, 1.1], "prefill:2": [1.2, 1.2], "prefill:4": [1.3, 1.3], "prefill:merged": [1.0, 1.0]}
    ratios |= {"decode:1": [1.2, 1.2], "decode:2": [1.4, 1.4], "decode:4": [1.6, 1.6], "decode:merged": [1.0, 1.0]}
    check = {"rows": ["default", "a1", "a2", "__base__"], "max_rel_diff": 3e-7, "tolerance": 1e-4}
    check |= {"update_rel_size": 1.2, "greedy_tokens": 2, "greedy_same_rows": 4, "merged_rel_diff": 2e-7, "ok": True}
    sweep = {"resident": 1, "own_bytes_per_adapter": 352.0, "cache_bytes_per_adapter": 512.0, "decode_k": 1}
    sweep |= {"cuda_allocated_bytes": None, "add_s_per_adapter": None, "load_ms": 3.0, "decode_ms_per_token": 1.0}
    tera = {"method": "tera", "peft": {}, "trainable_per_adapter": 88, "adapter_dtype": "float32", "check": check}
    tera |= {"shared_frozen_bytes": 8512, "adapter_file_bytes": 744, "add_s": 25.0, "resident_reached": 1024}
    tera["add_budget_s"] = 90.0
    tera |= {"sweep": [sweep], "figures": _figures(ratios)}
    tera["sweep_stop"] = {"next": 2048, "estimate_s": 70.0, "spent_s": 25.0}
    base = {"prefill": {"ms": 10.0, "tokens_per_s": 3200.0}, "decode": {"ms": 1.0, "tokens_per_s": 4000.0}}
    measurement = {"rounds": 2, "pairs": 1, "load_before": 0.1, "loads": [0.1], "other_cores": 0.01, "cores": 2}
    return {
        "preset": preset,
        "environment": environment("cpu"),
        "measurement": measurement,
        "base": base,
        "rows": [tera, {"method": "lora-r32", "error": "RuntimeError: out of memory"}],
        "plot": {"path": "plots/serving-tiny.png"},
    }


def test_the_report_names_device_versions_date_and_says_how_far_goals_are_missed():
    record = _record(judged=True)
    report = render(record)
    env = record["environment"]
    assert f"Device: {env['device']}; date {env['date']}; torch {env['versions']['torch']}, " in report
    assert f"transformers {env['versions']['transformers']}, peft {env['versions']['peft']}" in report
    assert "| tera | 4 | 2,462 | 1.30 (1.30-1.30) | 0.85 (0.85-0.85) |" in report  # 1.1x the base at k=1, 1.3x at 4
    assert "| lora-r32 | failed: RuntimeError: out of memory |" in report
    assert "![tokens/s against distinct adapters per batch](plots/serving-tiny.png)" in report
    stopped = "1024 adapters resident at the end after 25.0 s of adding (budget 90 s). Stopped before 2048: about 70 s "
    assert stopped in report
    lines = "\n".join(targets(record))
    assert "decode time over the base model's (k = 1, 2, 4 distinct adapters: 1.20x, 1.40x, 1.60x)" in lines
    assert "goal <= 1.5x at every k: **missed** by 7%: 1.60x at k = 4" in lines
    assert "goal <= 1.4x at every k: **met**: 1.30x at k = 4, 7% under the goal" in lines
    assert "decode tokens/s of a batch of 4 with 4 distinct adapters" in lines and "**missed** by 17%: 0.75x" in lines
    # On a CPU preset the same ratios stand beside the GPU goals, without a verdict.
    cpu = "\n".join(targets(_record(judged=False)))
    assert "**met**" not in cpu and "**missed**" not in cpu and "GPU goal, not judged on this device" in cpu
    # The GPU check's section: where the report is, the check per method, the goals.
    section = "\n".join(gpu_check._render_serving({"report": "results/gpu-check/serving-tiny.md", "record": record}))
    assert "## Serving many adapters" in section and "- tera: mixed batch = each adapter alone: yes" in section
    assert "- lora-r32: failed: RuntimeError: out of memory" in section and "### Serving targets" in section


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "nope"], "unknown serving preset 'nope'; choose one of: serving-cpu, serving-llama2-7b, "),
        (["--preset", "tiny", "--methods", "tera", "lroa"], "preset 'serving-tiny' has no method lroa; choose from: "),
    ],
)
def test_a_mistaken_request_is_one_sentence_and_exit_2_before_anything_runs(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--out", str(tmp_path), "--report", str(tmp_path / "r.md"), "--plot", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"distinct": [2, 4]}, "distinct must ascend from 1 to at most the batch (4), got [2, 4]."),
        ({"resident": [1, 2, 8]}, "resident must ascend from 1 and include the largest batch mix (4)"),
        ({"methods": ["dora", "nope"]}, "PEFT serves mixed-adapter batches (adapter_names=) only for lora, tera, "),
        ({"goals": {"decode_vs_bsae": 1.5}}, "unknown goals decode_vs_bsae; known: decode_vs_base, "),
        ({"add_budget_s": {"tera": 5}}, "add_budget_s maps method names of the preset and `default` to seconds."),
    ],
)
def test_a_mistaken_preset_is_one_sentence(tmp_path, capsys, change, message):
    with pytest.raises(SystemExit) as stop:
        run_all(dict(TINY, **change), tmp_path, tmp_path / "r.md", tmp_path / "p.png")
    assert stop.value.code == 2 and message in capsys.readouterr().err and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusal only where there is no GPU")
def test_the_gpu_preset_refuses_without_a_gpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--preset", "serving-llama2-7b", "--out", str(tmp_path), "--report", str(tmp_path / "r.md")])
    assert stop.value.code == 2 and "needs a CUDA GPU; use the serving-cpu preset" in capsys.readouterr().err


@pytest.mark.slow
def test_the_tiny_preset_end_to_end_writes_record_report_and_plot(tmp_path, capsys):
    report, plot = tmp_path / "serving-tiny.md", tmp_path / "plots" / "serving-tiny.png"
    argv = ["--preset", "serving-tiny", "--methods", "tera", "lora-r32", "--out", str(tmp_path)]
    assert cli.main([*argv, "--report", str(report), "--plot", str(plot)]) == 0
    record = json.loads((tmp_path / "serving-tiny.json").read_text())
    rows = {r["method"]: r for r in record["rows"]}
    assert list(rows) == ["tera", "lora-r32"] and all(r["check"]["ok"] for r in rows.values()), rows
    for row in rows.values():
        assert [c["resident"] for c in row["sweep"]] == TINY["resident"] and row["resident_reached"] == 8
        for key in ("prefill:1", "prefill:4", "decode:4", "decode:merged"):
            assert row["figures"][key]["tokens_per_s"] > 0 and row["figures"][key]["vs_base"]["median"] > 0
        assert len(row["round_s"]["decode:4"]["ratio"]) == TINY["rounds"]
    assert record["base"]["decode"]["tokens_per_s"] > 0 and record["measurement"]["other_cores"] is not None
    assert plot.stat().st_size > 10_000 and record["plot"] == {"path": "plots/serving-tiny.png"}
    text = report.read_text()
    assert text.startswith("# Serving many adapters, preset `serving-tiny`") and "## Targets" in text
    assert render(record) == text  # the report re-renders from its JSON record, byte for byte
    assert capsys.readouterr().out.strip() == text.strip()


def test_a_method_stops_adding_where_its_budget_would_run_out():
    preset = dict(TINY, add_budget_s={"default": 30, "lora-r32": 1e-6})
    bench = ServingBench(preset, TINY["methods"][-1])
    bench.grow(4, forced=True)  # the rounds' adapters are always added, whatever the budget
    assert bench.grow(8, forced=False) == 4
    stop = bench.row["sweep_stop"]
    assert stop["next"] == 8 and stop["estimate_s"] > 0 and [c["resident"] for c in bench.row["sweep"]] == [1, 4]
    bench.finish()
