"""Nothing a run computed is lost and nothing its record says misleads: a record its folder no longer takes is
rescued (exit 3, one sentence that says where), a run name too long for a file name is refused before training, every
job of a large sweep is checked, and the record's epochs and times say what really happened."""

from __future__ import annotations

import csv
import errno
import os
import tempfile
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from experiments.errors import RunFailed
from experiments.records import write
from experiments.records.read import is_complete, read_record
from experiments.run import cli, pipeline
from experiments.run.budget import plan_budget
from tests.helpers import compose


def _tweets(tmp_path: Path, rows: int = 24) -> str:
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    path = tmp_path / "data.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("text", "label"))
        writer.writerows((f"a {words[i % 6]} day {i}", i % 2) for i in range(rows))
    return str(path)


def _cfg(tmp_path: Path, *overrides: str):
    data = _tweets(tmp_path)
    files = f"task.data_files={{train: {data}, validation: {data}, test: {data}}}"
    runs = f"output_dir={tmp_path / 'runs'}"
    return compose("model=tiny", "logger=none", runs, "train.max_steps=3", files, *overrides)


def _exit_code(cfg) -> int:
    with pytest.raises(SystemExit) as end:
        cli.main(cfg)
    return end.value.code


# ---------------------------------------------------------------- a record the output folder no longer takes


@pytest.fixture
def read_only_runs(tmp_path, monkeypatch):
    """The output folder turns read-only after the run's write probe: the record's rename into it fails (EROFS), as
    on a file system remounted read-only or a disk error at the end (chmod would not stop root, who runs some CIs)."""
    real = os.replace
    runs = (tmp_path / "runs").resolve()

    def replace(source, target, *args, **kwargs):
        if Path(target).resolve().parent == runs:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setenv("TERA_SUITE_CACHE", str(tmp_path / "cache"))
    return runs


def test_a_finished_run_whose_folder_turned_read_only_is_rescued_with_one_sentence(tmp_path, read_only_runs, capsys):
    cfg = _cfg(tmp_path)
    assert _exit_code(cfg) == 3
    path = pipeline.plan_run(cfg).record_path
    rescued = tmp_path / "cache" / "rescued-records" / path.name
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: The run finished, but its record could not be written to {path} (Read-only file system); it was "
        f"saved to {rescued} instead, a rescue copy that no rerun or table looks at: move it into {path.parent} to "
        f"keep the result."
    )
    record = read_record(rescued)
    assert is_complete(record) and record["final_metrics"]["test_accuracy"] is not None
    assert not list(read_only_runs.glob("*.json"))
    assert pipeline.finished_record(pipeline.plan_run(cfg)) is None  # a rerun does not look in the rescue folder


def test_without_a_writable_cache_the_record_goes_to_the_temp_folder(tmp_path, read_only_runs, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TERA_SUITE_CACHE", str(blocker))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    cfg = _cfg(tmp_path)
    with pytest.raises(write.RecordNotWritten) as unwritten:
        pipeline.run_experiment(cfg)
    rescued = tmp_path / "tmp" / "tera-suite-rescued-records" / pipeline.plan_run(cfg).record_path.name
    assert unwritten.value.exit_code == 3 and f"it was saved to {rescued} instead" in str(unwritten.value)
    assert is_complete(read_record(rescued))


def test_a_record_no_folder_takes_gives_its_metrics_in_the_sentence(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(write, "rescue_folders", lambda: [blocker / "cache", blocker / "tmp"])
    with pytest.raises(write.RecordNotWritten, match=r"its final metrics were \{\"test_accuracy\": 0.75\}\.$"):
        write.rescue_record(tmp_path / "runs" / "r-01234567.json", {"final_metrics": {"test_accuracy": 0.75}}, "EIO")


def test_a_failed_run_whose_folder_turned_read_only_keeps_its_own_error(tmp_path, read_only_runs, capsys):
    cfg = _cfg(tmp_path, "method=full", "method.lr=1e30", "train.max_steps=20")
    with pytest.raises(RunFailed, match="Training stopped at step"):
        pipeline.run_experiment(cfg)
    rescued = tmp_path / "cache" / "rescued-records" / pipeline.plan_run(cfg).record_path.name
    assert f"it is at {rescued}" in capsys.readouterr().out
    assert read_record(rescued)["status"] == "failed"


# ---------------------------------------------------------------- a run name too long for a file name


def test_a_run_name_too_long_for_a_file_name_is_refused_before_anything_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "plan_run", lambda cfg: pytest.fail("the run was planned"))
    assert _exit_code(_cfg(tmp_path, f"run_name={'a' * 250}")) == 2
    assert capsys.readouterr().err.strip() == (
        "error: run_name is 250 bytes long, too long for the file names made from it (<run_name>-<run id>.json, its "
        "checkpoint and their temporary files must fit the file system's 255-byte limit); use at most 216 bytes."
    )


def test_preflight_refuses_a_run_name_one_byte_too_long(tmp_path, capsys):
    runs = f"output_dir={tmp_path / 'runs'}"
    cli.preflight(["model=tiny", "logger=none", runs, f"run_name='{'é' * 108}'"])  # 216 bytes (108 characters): fits
    with pytest.raises(SystemExit) as end:
        cli.preflight(["model=tiny", "logger=none", runs, f"run_name={'a' * 217}"])
    assert end.value.code == 2 and "run_name is 217 bytes long" in capsys.readouterr().err


# ---------------------------------------------------------------- every job of a large sweep is checked


def test_the_600th_job_of_a_sweep_is_checked_before_the_first_starts(capsys):
    steps = ",".join([*map(str, range(1, 600)), "-1"])
    started = time.perf_counter()
    with pytest.raises(SystemExit) as end:
        cli.preflight(["-m", "model=tiny", "logger=none", f"train.max_steps={steps}"])
    seconds = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert end.value.code == 2 and "checking the 600 jobs of the sweep before the first one starts" in out
    assert err.strip() == (
        "error: train.max_steps should be greater than or equal to 0, got -1 (job 599 of the sweep: model=tiny "
        "logger=none train.max_steps=-1)."
    )
    assert seconds < 60  # about 5 s here (Hydra's full composition of each job: 47 s)


def _hydra():
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    search_path = create_config_search_path(f"file://{cli.CONF}")
    return Hydra.create_main_hydra2(task_name="run", config_search_path=search_path)


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=lora", "seed=3", "train.max_steps=5"],
        ["task=glue/mrpc", "model=tiny", "task.max_length=64", "method.lr=0.1", "+method.peft.extra=1"],
        ["~logger", "method=vera", "run_name=x-${seed}", "seed=7", "train=default"],
        ["method=lora", "~method.peft.lora_dropout", "device=cpu"],
    ],
)
def test_the_sweep_check_composes_each_job_as_hydra_does(overrides):
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    try:
        hydra = _hydra()
        composed, compose_config = [], hydra.compose_config
        hydra.compose_config = lambda name, jobs, **kw: composed.append(jobs) or compose_config(name, jobs, **kw)
        compose_job = cli._composer(hydra, "config")
        compose_job(["method=tera"])  # another job first: its composition must not leak into the next
        fast = compose_job(overrides)
        assert overrides not in composed  # Hydra composed its group choices only: the rest was applied to a copy
        full = hydra.compose_config("config", overrides, run_mode=RunMode.RUN)
        with open_dict(full):
            del full["hydra"]
        assert OmegaConf.to_container(fast, resolve=True) == OmegaConf.to_container(full, resolve=True)
    finally:
        GlobalHydra.instance().clear()


def test_a_job_hydra_cannot_compose_keeps_hydras_sentence(capsys):
    with pytest.raises(SystemExit) as end:
        cli.preflight(["-m", "model=tiny", "logger=none", "seed=0,1", "method.nosuch=1"])
    assert end.value.code == 2
    assert "Could not override 'method.nosuch'" in capsys.readouterr().err


# ---------------------------------------------------------------- the record says what really happened


def test_a_batch_larger_than_the_data_covers_it_once_a_step():
    big = compose("model=tiny", "train.batch_size=200000", "train.max_steps=1").train
    budget = plan_budget(big, 36)
    assert (budget.epochs, budget.global_batch) == (1.0, 36)  # not 5555.556 epochs of 200,000 examples
    assert "a batch of 200000 is more than the 36 examples" in budget.note
    epochs = plan_budget(compose("model=tiny", "train.batch_size=200000", "train.epochs=3").train, 36)
    assert (epochs.steps, epochs.epochs) == (3, 3.0)  # three passes over the data, not one step called 3 epochs
    accumulated = plan_budget(compose("train.batch_size=50", "train.grad_accum=2", "train.max_steps=3").train, 36)
    assert (accumulated.epochs, accumulated.global_batch) == (6.0, 72)
    usual = plan_budget(compose("train.batch_size=16", "train.grad_accum=4", "train.epochs=30").train, 3668)
    assert (usual.steps, usual.epochs, usual.global_batch) == (1720, 30.0, 64)  # as before


def test_the_record_of_a_batch_larger_than_the_data_counts_real_epochs(tmp_path):
    record, _ = pipeline.run_experiment(_cfg(tmp_path, "train.batch_size=200000", "train.max_steps=2"))
    assert record["budget"]["epochs"] == 2.0 and record["train_examples_per_step"] == 24


def test_a_resumed_run_says_its_train_time_includes_the_earlier_process(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "train.max_steps=6", "train.checkpoint_every=2")
    real_train = pipeline.train

    def preempted(*args, **kwargs):
        def stop_at_5(step, loss):
            if step == 5:
                raise KeyboardInterrupt

        return real_train(*args, **{**kwargs, "log_fn": stop_at_5, "log_every": 1})

    monkeypatch.setattr(pipeline, "train", preempted)
    assert _exit_code(cfg) == 130
    checkpoint = pipeline.plan_run(cfg).checkpoint.path
    saved = torch.load(checkpoint, weights_only=False)
    torch.save(saved | {"train_seconds": 1000.0}, checkpoint)  # a long first process, so train > wall is certain
    monkeypatch.setattr(pipeline, "train", real_train)
    cli.main(cfg)
    [path] = (tmp_path / "runs").glob("*.json")
    record = read_record(path)
    assert record["resumed_from_step"] == 5 and record["train_seconds_before_resume"] == 1000.0
    assert record["train_seconds"] > record["wall_seconds"]  # explained: the earlier process's 1000 s
    assert record["train_seconds"] - record["train_seconds_before_resume"] <= record["wall_seconds"]


def test_a_run_that_started_afresh_says_so(tmp_path):
    cli.main(_cfg(tmp_path))
    [path] = (tmp_path / "runs").glob("*.json")
    record = read_record(path)
    assert record["resumed_from_step"] is None and record["train_seconds_before_resume"] == 0.0
    assert record["train_seconds"] <= record["wall_seconds"]
