"""Results a reader can trust: a failed run never looks finished, bad data is refused before training, records are
strict JSON, tables count each run once and never average different settings, and faults lose nothing."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from experiments.errors import ConfigError, DataUnavailable, RunFailed
from experiments.records.read import is_complete, read_record
from experiments.run import pipeline
from experiments.run.checkpoints import Checkpointer
from experiments.run.loop import train
from experiments.run.summary import summarise
from experiments.tables.render import main as tables_main
from experiments.tables.render import read_records, write_table
from tests.helpers import compose
from tests.toy_models import Regressor


def _csv(path: Path, rows: list[tuple], header=("text", "label")) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _tweets(tmp_path: Path, labels=(0, 1), name: str = "data.csv") -> str:
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    return _csv(tmp_path / name, [(f"a {w} day {i}", labels[i % len(labels)]) for i in range(4) for w in words])


def _cfg(tmp_path: Path, train: str, validation: str | None = None, *overrides: str):
    validation = validation or train
    files = f"task.data_files={{train: {train}, validation: {validation}, test: {validation}}}"
    return compose(
        "model=tiny", "logger=none", f"output_dir={tmp_path / 'runs'}", "train.max_steps=3", files, *overrides
    )


# ---------------------------------------------------------------- a failed run is never a success


def test_a_diverging_run_stops_at_once_and_leaves_a_failed_record(tmp_path):
    cfg = _cfg(tmp_path, _tweets(tmp_path), None, "method=full", "method.lr=1e30", "train.max_steps=20")
    with pytest.raises(RunFailed, match=r"Training stopped at step \d+ of 20: the loss is nan") as stop:
        pipeline.run_experiment(cfg)
    [path] = (tmp_path / "runs").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and record["complete"] is False and record["failed_at_step"] == stop.value.step
    assert stop.value.step < 20 and not is_complete(record)
    assert pipeline.finished_record(pipeline.plan_run(cfg)) is None  # a rerun does not skip it
    assert read_records(tmp_path / "runs").records == []  # and no table counts it


def test_a_non_finite_trainable_value_stops_training_at_that_step():
    torch.manual_seed(0)
    model, x, y = Regressor(), torch.randn(8, 4), torch.randn(8)
    with pytest.raises(RunFailed, match="Training stopped at step 1 of 5: a trainable value is not finite"):
        train(
            model,
            batches=iter([list(range(8))] * 5),
            make_batch=lambda idx: {"x": x[idx], "labels": y[idx]},
            param_groups=[{"params": list(model.parameters()), "lr": math.inf}],  # the loss of step 1 is finite
            steps=5,
            device=torch.device("cpu"),
        )


@pytest.mark.parametrize(
    ("labels", "split", "message"),
    [
        ((0, 0.5), "train", "label(s) are not integers in [0, 2) (first: 0.5)"),
        ((0, 1, 2), "train", "label(s) are not integers in [0, 2) (first: 2)"),
        ((0, 3), "validation", "validation label(s) are not integers in [0, 2) (first: 3)"),
    ],
)
def test_labels_the_task_cannot_take_are_refused_before_training(tmp_path, labels, split, message):
    good = _tweets(tmp_path)
    bad = _tweets(tmp_path, labels, name="bad.csv")
    cfg = _cfg(tmp_path, bad if split == "train" else good, bad if split == "validation" else None)
    with pytest.raises(DataUnavailable, match=re_escape(message)):
        pipeline.run_experiment(cfg)
    assert not list((tmp_path / "runs").glob("*.json"))


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_a_one_class_training_set_is_a_warning_in_record_and_summary(tmp_path):
    cfg = _cfg(tmp_path, _tweets(tmp_path, (1,)), _tweets(tmp_path, name="validation.csv"))
    record, path = pipeline.run_experiment(cfg)
    assert record["complete"] and record["warnings"] == [
        "the training set has one class only (label 1 in all 24 examples): the model can only learn to predict it"
    ]
    assert "warning      the training set has one class only" in summarise(record, path)


def test_an_undefined_metric_is_null_with_a_reason_and_the_record_strict_json(tmp_path):
    constant = _csv(tmp_path / "stsb.csv", [(f"a {i}", f"b {i}", 2.5) for i in range(16)], ("s1", "s2", "label"))
    files = f"task.data_files={{train: {constant}, validation: {constant}}}"
    cfg = compose(
        "model=tiny",
        "task=glue/stsb",
        "logger=none",
        f"output_dir={tmp_path}",
        "train.max_steps=2",
        files,
        "task.text_fields=[s1,s2]",
    )
    record, path = pipeline.run_experiment(cfg)
    text = path.read_text()
    strict = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-strict JSON token {token}"))
    assert strict["final_metrics"]["test_pearson"] is None and strict["final_metrics"]["validation_spearman"] is None
    assert "constant" in strict["metric_notes"]["test_pearson"]
    assert "test_pearson is n/a" in summarise(record, path)


# ---------------------------------------------------------------- faults


def test_an_unwritable_output_folder_is_found_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = compose("model=tiny", "logger=none", f"output_dir={blocker / 'runs'}", "train.max_steps=2")
    with pytest.raises(ConfigError, match="Cannot write to .*a-file/runs .*; choose a writable output_dir"):
        pipeline.run_experiment(cfg)


def test_an_unreadable_checkpoint_is_moved_aside_and_the_run_starts_afresh(tmp_path, capsys):
    cfg = _cfg(tmp_path, _tweets(tmp_path))
    checkpoint = pipeline.plan_run(cfg).checkpoint.path
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")  # `: > checkpoint`, or a write cut short by a full disk
    record, _ = pipeline.run_experiment(cfg)
    assert record["complete"] and record["steps"] == 3
    assert "cannot be read (EOFError); moved it to" in capsys.readouterr().out
    assert [p.name.split(".pt.")[1].split("-")[0] for p in checkpoint.parent.iterdir()] == ["unreadable"]


def test_a_checkpoint_that_cannot_be_saved_is_a_warning_and_training_goes_on(tmp_path, monkeypatch, capsys):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Checkpointer, "save", full_disk)
    record, path = pipeline.run_experiment(_cfg(tmp_path, _tweets(tmp_path), None, "train.checkpoint_every=1"))
    assert record["complete"] and path.exists()
    assert "warning: could not save the checkpoint of step 1" in capsys.readouterr().out


def test_checkpoints_are_also_due_after_some_minutes(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("experiments.run.checkpoints.time.monotonic", lambda: clock[0])
    checkpoint = Checkpointer(tmp_path / "run.pt", every=200, minutes=5)
    assert not checkpoint.due(150, 200)
    clock[0] += 5 * 60
    assert checkpoint.due(151, 200)  # a kill at step 150 of 200 no longer loses everything
    assert not Checkpointer(tmp_path / "run.pt", every=0, minutes=5).due(151, 200)  # 0: all checkpointing off


# ---------------------------------------------------------------- tables count and label right


def _record(method: str, seed: int, accuracy, lr: float = 1e-3, **extra) -> dict:
    return {
        "run_name": f"{method}-sentiment-tweets-minilm-s{seed}",
        "method": method,
        "task": "sentiment/tweets",
        "model": "minilm",
        "seed": seed,
        "steps": 10,
        "status": "complete",
        "complete": True,
        "config": {"method": {"name": method, "lr": lr}, "task": {"main_metric": "accuracy"}, "seed": seed},
        "environment": {"date": "2026-11-28T10:00:00", "device": "CPU", "versions": {"torch": "2", "peft": "0"}},
        "final_metrics": {"test_accuracy": accuracy},
        "trainable_params": 100,
        "median_rank": 8,
        "train_seconds": 1.0,
    } | extra


def test_a_copied_record_is_one_seed_and_bad_files_are_named(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "r.json").write_text(json.dumps(_record("tera", 0, 0.8)))
    (runs / "r (copy).json").write_text((runs / "r.json").read_text())
    (runs / "seed1.json").write_text(json.dumps(_record("tera", 1, 0.9)))
    (runs / "truncated.json").write_text('{"complete": tr')
    (runs / "empty.json").write_text("")
    (runs / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    (runs / "list.json").write_text("[1, 2]")
    (runs / "failed.json").write_text(json.dumps(_record("tera", 2, 0.1, status="failed", complete=False)))
    rows = write_table(runs, tmp_path / "table", "T")
    assert [(r["method"], r["test_accuracy"]) for r in rows] == [("tera", [0.8, 0.9])]
    warned = capsys.readouterr().err
    for name in ("truncated.json", "empty.json", "latin1.json", "list.json"):
        assert f"warning: skipping {runs / name} (not a JSON object)" in warned
    markdown = (tmp_path / "table.md").read_text()
    assert "Skipped 4 unreadable file(s): empty.json (not a JSON object)" in markdown
    assert "1 record(s) repeat a (settings, seed) already counted; counted once." in markdown
    assert "1 failed or unfinished run(s) are not counted." in markdown


def test_an_undefined_metric_renders_and_a_metric_typo_lists_the_choices(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.json").write_text(json.dumps(_record("tera", 0, None)))  # e.g. a Pearson of constant predictions
    (runs / "b.json").write_text(json.dumps(_record("tera", 1, 0.9)))
    rows = write_table(runs, tmp_path / "table", "T")
    assert rows[0]["test_accuracy"] == [0.9] and rows[0]["runs_found"] == 2
    assert tables_main([str(runs), "--out", str(tmp_path / "t2"), "--metric", "test_acuracy"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: No record under {runs} has the metric 'test_acuracy'; choose one of: test_accuracy."
    )


def test_a_folder_of_encoder_and_decoder_records_asks_for_a_metric(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "enc.json").write_text(json.dumps(_record("tera", 0, 0.8)))
    decoder = _record("tera", 0, 0.5, task="math/gsm8k", final_metrics={"test_gsm8k_lmeval_exact_match": 0.1})
    decoder["config"]["task"] = {"name": "gsm8k"}
    (runs / "dec.json").write_text(json.dumps(decoder))
    assert tables_main([str(runs), "--out", str(tmp_path / "t")]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: The records under") and "no single main metric" in message
    assert "test_accuracy, test_gsm8k_lmeval_exact_match." in message


def test_a_spec_counts_records_by_what_they_are_not_by_their_file_names(tmp_path):
    from experiments.tables.paper import write_spec_table
    from experiments.tables.specs import parse_spec

    spec = parse_spec(
        {
            "name": "t",
            "title": "T",
            "grid": {"model": ["minilm"], "task": ["sentiment/tweets"], "method": ["tera", "full"], "seed": [0, 1]},
            "columns": [{"metric": "test_accuracy", "label": "Tweets"}],
        }
    )
    runs = tmp_path / "runs"
    runs.mkdir()
    impostor = _record("full", 0, 0.99) | {"run_name": "tera-sentiment-tweets-minilm-s0"}  # named like TeRA
    (runs / "tera-sentiment-tweets-minilm-s0.json").write_text(json.dumps(impostor))
    (runs / "tera-seed1.json").write_text(json.dumps(_record("tera", 1, 0.80)))
    (runs / "full-seed0.json").write_text(json.dumps(_record("full", 0, 0.70, lr=2e-5)))
    (runs / "full-seed1.json").write_text(
        json.dumps(
            _record("full", 1, 0.90, lr=1e-4)
            | {"environment": {"date": "2026-11-29T10:00:00", "device": "CPU", "versions": {"torch": "2", "peft": "0"}}}
        )
    )
    markdown = write_spec_table(spec, runs, tmp_path / "t")
    lines = {line.split("|")[2].strip(): line for line in markdown.splitlines() if line.startswith("| minilm")}
    assert "80.00 ± 0.00 (1/2 seeds)" in lines["tera"]  # the full-FT record named tera-... is not TeRA's seed 0
    assert "90.00 ± 0.00 (1/2 seeds)" in lines["full"]  # two learning rates are never averaged as seeds
    assert "A record named tera-sentiment-tweets-minilm-s0 is of full on minilm" in markdown
    assert "minilm, full, sentiment/tweets: 1 seed(s) were run with other settings than the newest" in markdown


def test_records_read_back_as_written(tmp_path):
    cfg = _cfg(tmp_path, _tweets(tmp_path))
    record, path = pipeline.run_experiment(cfg)
    assert read_record(path)["run_id"] == record["run_id"] == path.stem.rsplit("-", 1)[1]
    assert list(record["data_fingerprint"]) == sorted(cfg.task.data_files)  # by role (train, ...), never by path
    assert all(value.startswith("sha256:") for value in record["data_fingerprint"].values())
    assert record["model_fingerprint"]["weights"].startswith("random BERT")


def test_the_same_settings_on_other_data_are_other_rows(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, (digest, accuracy) in enumerate([("sha256:aaa", 0.6), ("sha256:bbb", 0.9)]):
        record = _record("tera", 0, accuracy, data_fingerprint={"train.csv": digest})
        record["settings_id"] = f"s{i}"  # what the pipeline writes: the data is part of the settings
        (runs / f"{i}.json").write_text(json.dumps(record))
    rows = write_table(runs, tmp_path / "table", "T")
    assert len(rows) == 2 and sorted(r["test_accuracy"][0] for r in rows) == [0.6, 0.9]
    assert all(r["method"].startswith("tera [data=") for r in rows)


def test_an_option_that_only_trades_memory_for_speed_keeps_the_run_identity():
    """Records made before ``cache_merged_weight`` existed, or with it on, are the same runs: no rerun, one row."""
    from experiments.records.identity import run_signature

    def config(**peft):
        return {"method": {"name": "tera", "lr": 0.02, "peft": {"scaling": 1.0, **peft}}, "seed": 0, "train": {}}

    before = run_signature(config())
    assert run_signature(config(cache_merged_weight=False)) == before
    assert run_signature(config(cache_merged_weight=True)) == before
    assert run_signature(config(scaling=2.0)) != before  # what the run computes still counts
