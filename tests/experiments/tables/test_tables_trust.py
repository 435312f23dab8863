"""Tables a reader can trust when the records folder holds surprises: two complete records of one run that disagree
are both named, and a damaged record is skipped with a warning that says why, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.reproduce import compare
from experiments.tables.render import main as tables_main
from experiments.tables.render import read_records, write_table


def _record(seed: int, accuracy, date: str = "2026-11-28T10:00:00", **extra) -> dict:
    return {
        "run_name": f"tera-sentiment-tweets-minilm-s{seed}",
        "run_id": f"0000000{seed}",
        "settings_id": "settings1",
        "method": "tera",
        "task": "sentiment/tweets",
        "model": "minilm",
        "seed": seed,
        "steps": 10,
        "status": "complete",
        "complete": True,
        "config": {"method": {"name": "tera", "lr": 1e-3}, "task": {"main_metric": "accuracy"}, "seed": seed},
        "environment": {"date": date, "device": "CPU", "versions": {"torch": "2", "peft": "0"}},
        "final_metrics": {"test_accuracy": accuracy},
        "trainable_params": 100,
        "median_rank": 8,
        "train_seconds": 1.0,
    } | extra


def _folder(tmp_path: Path, records: dict[str, dict]) -> Path:
    runs = tmp_path / "runs"
    runs.mkdir()
    for name, record in records.items():
        (runs / name).write_text(json.dumps(record))
    return runs


# ---------------------------------------------------------------- one run, two different results


def test_two_complete_records_of_one_run_with_different_metrics_are_both_named(tmp_path, capsys):
    runs = _folder(
        tmp_path,
        {
            "a-old.json": _record(0, 0.80),
            "b-new.json": _record(0, 0.90, date="2026-11-29T10:00:00"),
            "seed1.json": _record(1, 0.70),
        },
    )
    rows = write_table(runs, tmp_path / "table", "T")
    assert rows[0]["test_accuracy"] == [0.9, 0.7]  # the newest of the two is used
    sentence = (
        "2 complete records of one run (settings settings1, seed 0) have different metrics: a-old.json "
        "(2026-11-28T10:00:00: test_accuracy 0.8), b-new.json (2026-11-29T10:00:00: test_accuracy 0.9); "
        "the table uses b-new.json, the newest."
    )
    markdown = (tmp_path / "table.md").read_text()
    assert sentence in markdown and "counted once" not in markdown
    assert f"warning: {sentence}" in capsys.readouterr().err


def test_equally_new_records_that_disagree_say_which_one_was_used(tmp_path):
    runs = _folder(tmp_path, {"x.json": _record(0, 0.80), "y.json": _record(0, 0.90)})
    found = read_records(runs, warn=False)
    assert [r["final_metrics"]["test_accuracy"] for r in found.records] == [0.8]
    [note] = found.notes()
    assert note.endswith("the table uses x.json, the first by file name of the equally new ones.")


def test_copies_with_equal_metrics_stay_a_quiet_count(tmp_path, capsys):
    runs = _folder(tmp_path, {"r.json": _record(0, 0.8), "r (copy).json": _record(0, 0.8, date="2026-11-30")})
    found = read_records(runs)
    assert found.notes() == ["1 record(s) repeat a (settings, seed) already counted; counted once."]
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- damaged records are skipped, with the reason


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"final_metrics": None}, "final_metrics is not an object"),
        ({"final_metrics": {"test_accuracy": "0.8"}}, "final_metrics.test_accuracy is not a number: '0.8'"),
        ({"final_metrics": {"test_accuracy": True}}, "final_metrics.test_accuracy is not a number: True"),
        ({"environment": None}, "environment is not an object"),
        ({"environment": {"device": "CPU"}}, "environment.date is not a string"),
        ({"seed": "0"}, "seed is not an integer: '0'"),
        ({"train_seconds": "1 s"}, "train_seconds is not a number: '1 s'"),
    ],
)
def test_a_damaged_record_is_skipped_with_a_warning_that_says_why(tmp_path, capsys, change, why):
    bad = _record(0, 0.8) | change
    runs = _folder(tmp_path, {"bad.json": bad, "good.json": _record(1, 0.9)})
    assert tables_main([str(runs), "--out", str(tmp_path / "t")]) == 0
    assert f"warning: skipping {runs / 'bad.json'} ({why})" in capsys.readouterr().err
    markdown = (tmp_path / "t.md").read_text()
    assert f"Skipped 1 unreadable file(s): bad.json ({why})." in markdown
    assert "90.00 ± 0.00" in markdown


def test_a_record_without_an_environment_is_skipped_not_a_traceback(tmp_path, capsys):
    bad = _record(0, 0.8)
    del bad["environment"]
    runs = _folder(tmp_path, {"bad.json": bad, "good.json": _record(1, 0.9)})
    assert tables_main([str(runs), "--out", str(tmp_path / "t")]) == 0
    assert f"warning: skipping {runs / 'bad.json'} (no environment)" in capsys.readouterr().err


def test_a_folder_of_damaged_records_only_is_one_sentence(tmp_path, capsys):
    runs = _folder(tmp_path, {"bad.json": _record(0, 0.8) | {"final_metrics": None}})
    assert tables_main([str(runs), "--out", str(tmp_path / "t")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: No complete run records under {runs}."


# ---------------------------------------------------------------- compare: seeds that are not integers


@pytest.mark.parametrize("seed", ["range(0,2)", "1.5", "one"])
def test_compare_refuses_a_seed_that_is_not_an_integer(capsys, seed):
    assert compare.main(["model=tiny", "method=tera", f"seed={seed}", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: seed takes integers separated by commas (seed=0,1,2), got {seed!r}."
    )
