"""The one table path for any folder of records (``python -m experiments.tables``): mean and std over seeds, trainable
parameters, median rank, base rows, sweeps told apart, Markdown through tabulate and CSV through pandas."""

import json

import pandas as pd
import pytest

from experiments.records.write import environment
from experiments.tables.render import main, mean_std, write_table


def markdown_rows(markdown: str) -> list[dict[str, str]]:
    """The cells of the (first) pipe table in ``markdown``, by header, padding stripped."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [dict(zip(split[0], cells)) for cells in split[2:]]


def _record(method: str, seed: int, accuracy: float, rank, complete: bool = True, config=None, **extra) -> dict:
    steps = extra.get("steps", 100)
    settings = {"method": {"name": method}, "task": {"main_metric": "accuracy"}, "train": {"max_steps": steps}}
    for key, value in (config or {}).items():
        settings[key] = {**settings.get(key, {}), **value}
    return {
        "method": method,
        "run_name": f"{method}-sentiment-tweets-minilm-s{seed}",
        "task": "sentiment/tweets",
        "model": "minilm",
        "seed": seed,
        "steps": steps,
        "complete": complete,
        "config": {**settings, "seed": seed},
        "environment": environment("cpu"),
        "final_metrics": {"test_accuracy": accuracy},
        "trainable_params": 100,
        "median_rank": rank,
        "train_seconds": 10.0 + seed,
    } | extra


def _write(folder, records) -> None:
    folder.mkdir(exist_ok=True)
    for i, record in enumerate(records):
        (folder / f"{i}.json").write_text(json.dumps(record))


def test_mean_std_over_seeds_and_incomplete_records_ignored(tmp_path):
    runs = tmp_path / "runs"
    _write(
        runs,
        [
            _record("tera", 0, 0.80, 384),
            _record("tera", 1, 0.90, 380),
            _record("full", 0, 0.85, None),
            _record("lora", 0, 0.1, 8, complete=False),  # a killed run: never counted
        ],
    )
    (runs / "torn.json").write_text('{"complete": tr')  # an interrupted write: never counted either
    rows = write_table(runs, tmp_path / "table", "Demo")
    assert [r["method"] for r in rows] == ["full", "tera"]
    tera = rows[1]
    assert tera["test_accuracy"] == [0.80, 0.90] and mean_std(tera["test_accuracy"])[1] == pytest.approx(0.0707107)
    assert tera["median_rank"] == 382 and tera["seeds"] == [0, 1] and tera["train_seconds"] == 10.5

    markdown = (tmp_path / "table.md").read_text()
    assert markdown.startswith("# Demo\n") and "Rendered from 3 run records" in markdown and "CPU" in markdown
    shown = {row["method"]: row for row in markdown_rows(markdown)}
    assert shown["tera"] == {
        "model": "minilm",
        "task": "sentiment/tweets",
        "method": "tera",
        "test_accuracy": "85.00 ± 7.07",
        "seeds": "2",
        "trainable params": "100",
        "median rank of dW": "382",
        "train s": "10",
    }
    assert shown["full"]["test_accuracy"] == "85.00 ± 0.00" and shown["full"]["median rank of dW"] == "full FT"
    assert "|:--" in markdown  # a tabulate pipe table, not hand-joined cells

    table = pd.read_csv(tmp_path / "table.csv").set_index("method")
    assert table.loc["tera", "test_accuracy mean"] == pytest.approx(0.85)  # as recorded, not in %
    assert table.loc["tera", "test_accuracy std"] == pytest.approx(0.0707107, rel=1e-5)
    assert table.loc["tera", "test_accuracy n"] == 2 and table.loc["full", "runs_found"] == 1


def test_a_zero_step_run_is_the_base_model_and_trains_nothing(tmp_path):
    runs = tmp_path / "runs"
    _write(runs, [_record("tera", 0, 0.455, 0.0, steps=0, train_seconds=0.0), _record("tera", 0, 0.45, 575)])
    rows = write_table(runs, tmp_path / "table", "Before and after")
    assert [(r["method"], r["trainable_params"]) for r in rows] == [("base (no training)", 0), ("tera", 100)]
    shown = markdown_rows((tmp_path / "table.md").read_text())
    assert [(r["method"], r["test_accuracy"], r["trainable params"]) for r in shown] == [
        ("base (no training)", "45.50 ± 0.00", "0"),
        ("tera", "45.00 ± 0.00", "100"),
    ]


def test_label_by_keeps_the_runs_of_a_sweep_apart(tmp_path):
    runs = tmp_path / "runs"
    records = []
    for i, (lr, accuracy) in enumerate([(5e-3, 0.80), (2e-2, 0.84), (2e-2, 0.86)]):
        config = {"task": {"main_metric": "accuracy"}, "method": {"decoder_lr": lr}}
        records.append(_record("tera", i, accuracy, 384, config=config))
    _write(runs, records)
    rows = write_table(runs, tmp_path / "table", "Sweep", label_by=("method.decoder_lr",))
    assert [(r["method"], len(r["seeds"])) for r in rows] == [
        ("tera (decoder_lr=0.005)", 1),
        ("tera (decoder_lr=0.02)", 2),
    ]
    assert mean_std(rows[1]["test_accuracy"])[0] == pytest.approx(0.85)
    # Without --label-by, runs of other settings are still never averaged as seeds: rows of their own, labelled.
    apart = write_table(runs, tmp_path / "apart", "Sweep")
    assert [(r["method"], r["test_accuracy"]) for r in apart] == [
        ("tera [decoder_lr=0.005]", [0.80]),
        ("tera [decoder_lr=0.02]", [0.84, 0.86]),
    ]


def test_command_line_flags(tmp_path, capsys):
    runs = tmp_path / "runs"
    gsm8k = {"task": "math/gsm8k", "final_metrics": {"test_gsm8k_flexible": 0.04}}
    _write(runs, [_record("tera", 0, 0.8, 384), _record("tera", 0, 0, 575, config={"method": {"decoder_lr": 0.02}})])
    (runs / "1.json").write_text(json.dumps(json.loads((runs / "1.json").read_text()) | gsm8k))
    out = tmp_path / "gsm8k"
    argv = [str(runs), "--out", str(out), "--title", "GSM8K", "--metric", "test_gsm8k_flexible"]
    assert main([*argv, "--task", "math/gsm8k", "--label-by", "method.decoder_lr"]) == 0
    shown = markdown_rows(out.with_suffix(".md").read_text())
    assert shown == [
        {
            "model": "minilm",
            "task": "math/gsm8k",
            "method": "tera (decoder_lr=0.02)",
            "test_gsm8k_flexible": "4.00 ± 0.00",
            "seeds": "1",
            "trainable params": "100",
            "median rank of dW": "575",
            "train s": "10",
        }
    ]
    assert "# GSM8K" in capsys.readouterr().out
    assert main([*argv, "--task", "glue/rte"]) == 2
    assert capsys.readouterr().err.startswith(f"error: No complete run records under {runs} for task glue/rte.")
    assert main([str(runs), "--out", str(out), "--task", "math/gsm8k"]) == 2
    assert "no single main metric" in capsys.readouterr().err
