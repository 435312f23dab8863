"""The dry run's GPU-hours estimate: from the committed GPU efficiency record and the published training sizes, with
every stand-in figure named."""

import pytest

from experiments.reproduce import estimate
from experiments.reproduce.grid import main as reproduce_main


@pytest.mark.slow  # composes the 140 runs' configs twice
def test_dry_run_prints_gpu_hours_and_names_its_stand_ins(capsys, tmp_path):
    assert reproduce_main(["table2", "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "table2: about " in out and " GPU-hours of training for 140 run(s) still to do" in out
    assert "commonsense/all: 3 epochs x 170,420 examples (LLM-Adapters' commonsense_170k.json) x 256 tokens" in out
    assert "loretta: not in the GPU record; LoRA r=32's rate stands in" in out  # a method the record did not time
    assert "dora: the GPU record's dora-r32 row" in out
    assert "llama3-8b: LLaMA-2-7B's rate scaled by parameter count (1.19x)" in out


def test_estimate_arithmetic_and_models_without_a_measurement():
    record = estimate._record()
    lora = next(r for r in record["rows"] if r["method"] == "lora-r32")
    layers = record["preset"]["model"]["layers"]

    class Run:
        model, task, method = "llama2-7b", "commonsense/all", "lora-r32"

    class Cfg:
        task = {"train_on": ["commonsense170k"], "name": "all"}
        train = {"epochs": 3, "max_length": 256}

    Cfg.task = type("T", (dict,), {"name": "all"})(Cfg.task)
    result = estimate.estimate([(Run(), Cfg())])
    tokens = 3 * 170_420 * 256
    assert result.runs == 1 and abs(result.hours - tokens / (lora["tokens_per_s"] * layers / 32) / 3600) < 1e-9

    Run.model = "smollm2-135m"
    offline = estimate.estimate([(Run(), Cfg())])
    assert offline.runs == 0 and "smollm2-135m: no GPU measurement covers it; not estimated" in offline.notes
    assert estimate.describe(offline, "t")[0].startswith("t: no run to estimate on a GPU")
