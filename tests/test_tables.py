"""Tables are rendered from run records: mean and std over seeds, parameters, median rank."""

import json

import pytest

from experiments.records import environment
from experiments.tables import write_table


def _record(method: str, seed: int, accuracy: float, rank, complete: bool = True) -> dict:
    return {
        "method": method,
        "task": "sentiment/tweets",
        "model": "minilm",
        "seed": seed,
        "complete": complete,
        "config": {"task": {"main_metric": "accuracy"}},
        "environment": environment("cpu"),
        "final_metrics": {"test_accuracy": accuracy},
        "trainable_params": 100,
        "median_rank": rank,
        "train_seconds": 10.0,
    }


def test_mean_std_over_seeds_and_incomplete_records_ignored(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    records = [
        _record("tera", 0, 0.80, 384),
        _record("tera", 1, 0.90, 380),
        _record("full", 0, 0.85, None),
        _record("lora", 0, 0.1, 8, complete=False),
    ]
    for i, record in enumerate(records):
        (runs / f"{i}.json").write_text(json.dumps(record))
    rows = write_table(runs, tmp_path / "table", "Demo")
    assert [r["method"] for r in rows] == ["full", "tera"]
    tera = rows[1]
    assert tera["mean"] == pytest.approx(0.85) and tera["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert tera["median_rank"] == 382 and tera["seeds"] == [0, 1]
    text = (tmp_path / "table.md").read_text()
    assert "| minilm | sentiment/tweets | tera | 85.00 ± 7.07 | 2 | 100 | 382 | 10 |" in text
    assert "| full | 85.00 ± 0.00 | 1 | 100 | full FT |" in text
    assert "Rendered from 3 run records" in text and "CPU" in text
    assert (tmp_path / "table.csv").read_text().splitlines()[0].startswith("model,task,method,seeds,mean,std")


def test_label_by_keeps_the_runs_of_a_sweep_apart(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, (lr, accuracy) in enumerate([(5e-3, 0.80), (2e-2, 0.84), (2e-2, 0.86)]):
        record = _record("tera", i, accuracy, 384)
        record["config"]["method"] = {"decoder_lr": lr}
        (runs / f"{i}.json").write_text(json.dumps(record))
    rows = write_table(runs, tmp_path / "table", "Sweep", label_by=("method.decoder_lr",))
    assert [(r["method"], len(r["seeds"])) for r in rows] == [
        ("tera (decoder_lr=0.005)", 1),
        ("tera (decoder_lr=0.02)", 2),
    ]
    assert rows[1]["mean"] == pytest.approx(0.85)
    merged = write_table(runs, tmp_path / "merged", "Sweep")
    assert [r["method"] for r in merged] == ["tera"]
