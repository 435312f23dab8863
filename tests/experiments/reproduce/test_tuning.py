"""The tuning protocol (README "Fair comparisons"): every method's search space, the choice on validation only, a share
of train that chooses where the test figure is the validation split, trials and finals as ordinary runs named as
Hydra names them, the tuned table (chosen lr column, budget caption), the report and the lr plot, W&B tables, and
one-sentence errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from baselines import VIRTUAL_TOKEN_METHODS
from experiments.errors import ConfigError
from experiments.reproduce import sweep, tune_protocol
from experiments.reproduce.grid import main as reproduce_main
from experiments.reproduce.tuning import Cell, Setting, Trial, TuningError, budget_note, choose, search_space
from experiments.run import cli as run_cli
from experiments.run import pipeline
from experiments.run.schema import validate
from experiments.tables.specs import SpecError, load_tables, parse_spec
from experiments.tasks import decoder as decoder_tasks
from experiments.tasks.classification import load_task
from tests.helpers import cli, compose, last_error, options

COLUMNS = [{"metric": "test_accuracy", "label": "test accuracy"}]


def _spec(**changes) -> dict:
    grid = {"model": ["tiny"], "task": ["sentiment/tweets"], "method": ["lora", "tera"], "seed": [0, 1]}
    return {"name": "t", "title": "T", "grid": grid, "overrides": ["train.max_steps=2"], "columns": COLUMNS} | changes


# ------------------------------------------------------------------------------------------------ search spaces


def test_every_method_searches_the_same_log_grid_around_its_conventional_rate():
    for method in options("method"):
        # Prompt Tuning and P-Tuning run on decoder tasks only
        where = ["model=tiny-llama", "task=math/gsm8k"] if method in VIRTUAL_TOKEN_METHODS else ["model=tiny"]
        settings = validate(compose(f"method={method}", *where))
        assert settings.method.tune.lr_factors == [0.25, 1.0, 4.0], method  # one budget for every method
        lrs = [s.lr for s in search_space("method.lr", settings.method.lr, settings.method.tune.lr_factors)]
        assert lrs == pytest.approx([settings.method.lr / 4, settings.method.lr, settings.method.lr * 4])
    grid = search_space("method.lr", 4e-4, [0.25, 1, 4], {"r": [256, 1024]})
    assert [s.piece for s in grid[:2]] == ["lr0.0001-r256", "lr0.0001-r1024"] and len(grid) == 6
    assert grid[0].lr == 0.0001 and grid[0].label == "lr=0.0001, r=256"  # 4e-4 / 4 is 0.0001, not 0.00010000000000001
    assert grid[5].overrides() == ["method.lr=0.0016", "++method.peft.r=1024"]
    # a search space is not what a run computes: adding one keeps every run id (and every finished record) as it was
    plain = compose("method=lora", "model=tiny")
    wider = compose("method=lora", "model=tiny", "method.tune.lr_factors=[0.5,2]")
    assert pipeline.plan_run(plain).run_id == pipeline.plan_run(wider).run_id


def test_decoder_tasks_search_around_the_decoder_rate_and_hold_out_a_share_of_train():
    spec = parse_spec(_spec(grid={"model": ["tiny-llama"], "task": ["math/gsm8k"], "method": ["tera"], "seed": [0]}))
    spec.columns[0] = spec.columns[0].__class__(label="acc", metric="test_gsm8k_lmeval_exact_match_strict")
    [plan] = tune_protocol.plan_table(spec)
    assert [s.values[0] for s in plan.settings] == [("method.decoder_lr", lr) for lr in (0.005, 0.02, 0.08)]
    assert plan.metric == "validation_gsm8k_lmeval_exact_match_strict" and plan.holdout == 0.1


# ------------------------------------------------------------------------------------------------- the choice


def _trial(lr: float, factor: float, validation: float | None, test: float | None, status: str = "complete") -> Trial:
    record = {"status": status, "complete": status == "complete"}
    if status == "complete":
        record["final_metrics"] = {"validation_accuracy": validation, "test_accuracy": test}
    return Trial(Setting((("method.lr", lr),), factor), f"lora-lr{lr}", record)


def test_the_choice_reads_the_validation_metric_only():
    trials = [_trial(1e-4, 0.25, 0.70, 0.90), _trial(4e-4, 1, 0.80, 0.60), _trial(1.6e-3, 4, 0.75, 0.95)]
    assert choose(trials, "validation_accuracy") is trials[1]  # the test figures would pick 1.6e-3
    with pytest.raises(TuningError, match="validation metrics only"):
        choose(trials, "test_accuracy")
    with pytest.raises(TuningError, match="validation metrics only"):
        trials[0].value("test_accuracy")
    diverged = _trial(1.6e-3, 4, None, None, status="failed")
    assert choose([trials[0], diverged], "validation_accuracy") is trials[0]  # a result, never the choice
    missing = Trial(Setting((("method.lr", 4e-4),), 1), "lora-lr0.0004")
    assert choose([trials[0], missing], "validation_accuracy") is None  # no choice before every trial is in
    ties = [_trial(1e-4, 0.25, 0.8, 0.0), _trial(4e-4, 1, 0.8, 0.0), _trial(1.6e-3, 4, 0.8, 0.0)]
    assert choose(ties, "validation_accuracy") is ties[1]  # the conventional rate wins a tie
    assert Cell("", "m", "t", "lora", "validation_accuracy", [diverged]).state == "no usable trial"
    assert Cell("", "m", "t", "lora", "validation_accuracy", [trials[0], missing]).state == "trials missing"
    assert Cell("", "m", "t", "lora", "validation_accuracy", []).state == "not tuned"


# ------------------------------------------------------------------------------- held-out share, trial names


def _csv(path: Path, rows: list[tuple[str, int]]) -> str:
    path.write_text("sentence,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    return str(path)


def test_glue_trials_choose_on_a_share_of_train_and_never_see_the_reported_split(tmp_path):
    train = _csv(tmp_path / "train.csv", [(f"train sentence {i}", i % 2) for i in range(40)])
    dev = _csv(tmp_path / "dev.csv", [(f"dev sentence {i}", i % 2) for i in range(16)])
    cfg = compose("task=glue/sst2", "model=tiny", f"task.data_files={{train: {train}, validation: {dev}}}")
    task = dict(cfg.task)
    final = load_task(task)
    assert final.test_is_validation  # GLUE reports its validation split
    trial = load_task({**task, "tune_holdout": 0.25})

    def texts(examples):
        return {e["text_a"] for e in examples}

    assert texts(trial.test) == texts(final.test) == texts(final.validation)  # the reported split, unchanged
    assert texts(trial.validation) < texts(final.train) and not texts(trial.validation) & texts(final.test)
    assert not texts(trial.validation) & texts(trial.train) and (len(trial.train), len(trial.validation)) == (30, 10)
    assert not trial.test_is_validation and trial.validation_carved["tuning"]
    assert tune_protocol.needs_holdout(validate(cfg).task)
    assert not tune_protocol.needs_holdout(validate(compose("model=tiny")).task)  # the tweets have a test split


def test_decoder_trials_hold_out_training_items_never_the_evaluated_ones(tmp_path):
    rows = [{"question": f"Question {i}?", "choices": ["yes", "no"], "answer": i % 2} for i in range(20)]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {**dict(compose("task=custom/choice", "model=tiny-llama").task), "data_files": {"train": str(path)}}
    final = decoder_tasks.load_decoder_task(task)  # no test file: a carved share is the reported figure
    trial = decoder_tasks.load_decoder_task({**task, "tune_holdout": 0.25})
    evaluated = {i["prompt"] for i in final.evaluation["custom_choice"]}
    assert {i["prompt"] for i in trial.evaluation["custom_choice"]} == evaluated
    held = {i["prompt"] for i in trial.validation["custom_choice"]}
    assert len(held) == 4 and not held & evaluated and not held & {e["prompt"] for e in trial.train}
    with pytest.raises(ConfigError, match=r"task math/metamath trains on metamath, which it does not evaluate"):
        validate(compose("task=math/metamath", "model=tiny-llama", "++task.tune_holdout=0.1"))


def test_each_trial_is_named_as_its_hydra_job_names_itself_and_finals_reuse_trials(tmp_path):
    """Every job of a trial multirun (rates x other options) composes to the record name the choice reads; on a task
    with its own test split the first seed's final is the trial itself (same name, same run id), on GLUE it is not."""
    vera = _spec(
        grid={"model": ["tiny"], "task": ["glue/sst2"], "method": ["vera"], "seed": [0, 1]},
        overrides=["train.max_steps=2", "++method.tune.peft={r:[16,32]}"],
        tune={"steps": 1},
    )
    [plan] = tune_protocol.plan_table(parse_spec(vera))
    assert len(plan.settings) == 6 and plan.holdout == 0.1
    [command] = tune_protocol.trial_commands(parse_spec(vera), [plan], tmp_path, "basic", [])
    jobs = list(run_cli._jobs(command[3:], multirun=True))
    assert len(jobs) == 6
    for job, setting in zip(jobs, plan.settings):
        cfg = compose(*job)
        assert cfg.run_name == plan.trial_name(setting) and cfg.run_name.endswith("-holdout-steps1")
        assert (cfg.method.lr, cfg.method.peft.r) == (setting.lr, setting.values[1][1])
        assert cfg.task.tune_holdout == 0.1 and cfg.train.max_steps == 1 and cfg.skip_failed
    final = plan.final_variant(plan.settings[0])
    assert "holdout" not in final.piece and "++task.tune_holdout=0.1" not in final.overrides

    [tweets, _] = tune_protocol.plan_table(parse_spec(_spec()))
    assert tweets.holdout is None and tweets.steps is None
    setting = tweets.settings[1]
    [trial_job] = [
        j
        for j in run_cli._jobs(
            tune_protocol.trial_commands(parse_spec(_spec()), [tweets], tmp_path, "basic", [])[0][3:], True
        )
        if f"method.lr={setting.lr}" in j
    ]
    final_job = [
        f"model={tweets.model}",
        f"task={tweets.task}",
        f"method={tweets.method}",
        "seed=0",
        *tweets.final_variant(setting).overrides,
        *parse_spec(_spec()).overrides,
    ]
    trial_cfg, final_cfg = compose(*trial_job), compose(*final_job)
    assert pipeline.plan_run(trial_cfg).run_id == pipeline.plan_run(final_cfg).run_id  # one run, computed once
    assert trial_cfg.run_name == tune_protocol.naming.run_name("lora", "sentiment/tweets", "tiny", 0, setting.piece)


# ----------------------------------------------------------------------------------------- the tuned table


def _record(folder: Path, name: str, method: str, seed: int, lr: float, validation: float, test: float) -> None:
    record = {
        "complete": True,
        "status": "complete",
        "run_name": name,
        "settings_id": f"{method}-{lr}",
        "config": {"method": {"name": method, "lr": lr}, "seed": seed},
        "method": method,
        "model": "tiny",
        "task": "sentiment/tweets",
        "seed": seed,
        "steps": 2,
        "learning_rate": lr,
        "final_metrics": {"validation_accuracy": validation, "test_accuracy": test},
        "trainable_params": 100,
        "median_rank": 8,
        "train_seconds": 1.0,
        "wall_seconds": 90.0,
        "run_id": f"{name}-{seed}",
        "environment": {"date": "2026-11-28T00:00:00", "device": "CPU", "versions": {"torch": "2", "peft": "0"}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}-{abs(hash((name, seed))) % 10**8:08d}.json").write_text(json.dumps(record))


def test_the_tuned_table_shows_the_chosen_rate_states_the_budget_and_plots_every_trial(tmp_path):
    spec = parse_spec(_spec())
    plans = tune_protocol.plan_table(spec)
    folder = tmp_path / "runs" / spec.tuned_records_dir
    for plan in plans:  # validation prefers x4 for lora and x1 for tera; test would prefer the opposite
        best = 2 if plan.method == "lora" else 1
        for i, setting in enumerate(plan.settings):
            good = i == best
            _record(
                folder,
                plan.trial_name(setting),
                plan.method,
                0,
                setting.lr,
                0.9 if good else 0.7,
                0.6 if good else 0.95,
            )
        final = plan.final_variant(plan.settings[best])
        _record(
            folder,
            tune_protocol.naming.run_name(plan.method, plan.task, plan.model, 1, final.piece),
            plan.method,
            1,
            plan.settings[best].lr,
            0.88,
            0.8,
        )
    for seed in (0, 1):  # the same table at the conventional rates, beside the tuned one
        conventional = tmp_path / "runs" / spec.records_dir
        _record(conventional, f"lora-sentiment-tweets-tiny-s{seed}", "lora", seed, 4e-4, 0.5, 0.55)
    found = tune_protocol.cells(plans, folder)
    assert [c.chosen.setting.lr for c in found] == [0.0016, 0.02]
    markdown = tune_protocol.render(spec, plans, found, tmp_path, [])
    assert "each method at its chosen learning rate" in markdown.splitlines()[0]
    head, *rows = [line for line in markdown.splitlines() if line.startswith("|")]
    names = ["model", "method", "chosen lr", "test accuracy at conventional lr", "test accuracy"]
    assert [c.strip() for c in head.split("|")[1:6]] == names
    assert "| lora     |      0.0016 |                       55.00 ± 0.00 |" in markdown
    assert "| tera     |        0.02 |                                  — |" in markdown
    assert markdown.count("70.00 ± 14.14") == 2  # seed 0 is the chosen trial (test 60), not the best on test (95)
    assert "Tuned: each method was tuned on validation (validation_accuracy) with the same budget: 3 trials" in markdown
    assert "x0.25, x1, x4 its conventional rate), 2 steps each, seed 0" in markdown
    report = json.loads((tmp_path / f"{spec.tuned_out_name}-tuning.json").read_text())
    assert [c["chosen"] for c in report["cells"]] == ["lr=0.0016", "lr=0.02"]
    tuning_md = (tmp_path / f"{spec.tuned_out_name}-tuning.md").read_text()
    assert "| yes" in tuning_md
    # 6 trials, the seed-1 finals (the seed-0 ones are trials), 90 s each; the conventional lora rows for scale
    cost = "Cost: 6 trials and 2 further final runs, 8 runs in all, 0.20 h of run time"
    assert cost in tuning_md and cost in report["cost"]
    assert "the conventional table: 2 runs, 0.05 h, 4.0x." in tuning_md
    assert (tmp_path / "plots" / f"{spec.tuned_out_name}-lr.png").stat().st_size > 0
    assert "chosen lr" in (tmp_path / f"{spec.tuned_out_name}.csv").read_text().splitlines()[0]


def test_a_diverged_trial_lets_the_sweep_go_on_and_a_crash_stops_it(tmp_path):
    marker = tmp_path / "trial.json"
    # a multirun that stops at a run which diverged, leaving its (failed) record; started again, it finishes
    diverge_once = f"import pathlib,sys; p=pathlib.Path({str(marker)!r}); sys.exit(0 if p.exists() else "
    diverge_once += "p.write_text('{}') and 3)"
    assert sweep.launch([[sys.executable, "-c", diverge_once]], {tmp_path}, dry_run=False)
    assert not sweep.launch([[sys.executable, "-c", "raise SystemExit(1)"]], {tmp_path}, dry_run=False)


def test_a_run_that_failed_before_is_skipped_with_skip_failed(tmp_path, monkeypatch, capsys):
    cfg = compose("model=tiny", "logger=none", f"output_dir={tmp_path}", "skip_failed=true", "train.max_steps=1")
    plan = pipeline.plan_run(cfg)
    plan.record_path.write_text(json.dumps({"status": "failed", "complete": False, "reason": "non-finite loss"}))
    monkeypatch.setattr(pipeline, "run_experiment", lambda *a, **k: pytest.fail("a failed trial was run again"))
    run_cli.main(cfg)
    assert "says this run failed with these settings and data (non-finite loss)" in capsys.readouterr().out


def test_wandb_gets_the_tuned_table_and_its_trials(tmp_path, monkeypatch):
    import pandas as pd

    from experiments.run.tracking import log_tables

    monkeypatch.setenv("WANDB_SILENT", "true")
    frame = pd.DataFrame([{"model": "tiny", "method": "lora", "chosen lr": "0.0016", "test accuracy mean": 0.8}])
    log_tables(
        {"name": "wandb", "mode": "offline", "dir": str(tmp_path)}, "t-tuned", {"summary": frame}, ["T", "Tuned"]
    )
    [table] = (tmp_path / "wandb").glob("offline-run-*/files/media/table/summary_*.table.json")
    assert json.loads(table.read_text())["columns"] == ["model", "method", "chosen lr", "test accuracy mean"]


# ------------------------------------------------------------------------------------------------- errors


def test_a_bad_search_space_or_tune_section_is_one_sentence(tmp_path, capsys):
    cases = {
        "method.tune.lr_factors=[0.25,-1]": "every factor must be a positive number, got -1.0.",
        "method.tune.lr_factors=[1,1]": "names a factor twice",
        "++method.tune.peft={rr:[8]}": "method.tune.peft.rr=8 cannot be searched: Method 'lora' does not accept",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
            validate(compose("method=lora", "model=tiny", override))
    with pytest.raises(ConfigError, match="method full has none"):
        validate(compose("method=full", "model=tiny", "++method.tune.peft={r:[8]}"))
    for tune, message in {
        "{metric: test_accuracy}": "must be a validation metric",
        "{lr_factors: [0, 1]}": "distinct positive multiples",
        "{steps: 0}": "the steps of one trial",
        "{budget: 3}": "unknown keys budget",
    }.items():
        (tmp_path / "t.yaml").write_text(yaml.safe_dump(_spec(tune=yaml.safe_load(tune))))
        with pytest.raises(SpecError, match=message):
            load_tables("t", folder=tmp_path)
    status = reproduce_main(
        ["sentiment", "--smoke", "--tune", "--dry-run", "--results", str(tmp_path), "--", "method.tune.lr_factors=[-1]"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: method.tune.lr_factors multiplies")
    assert reproduce_main(["table1", "--tune", "--dry-run"]) == 2


def test_a_comparison_from_run_py_overrides_goes_the_same_way(capsys, tmp_path):
    from experiments.reproduce.compare import comparison
    from experiments.reproduce.compare import main as compare_main

    spec = comparison(["model=tiny", "method=tera,lora", "seed=0,1", "train.max_steps=2"])
    assert spec.grid == {"model": ["tiny"], "task": ["sentiment/tweets"], "method": ["tera", "lora"], "seed": [0, 1]}
    assert spec.overrides == ["train.max_steps=2"] and spec.columns[0].metric == "test_accuracy"
    argv = ["model=tiny", "method=tera,lora", "train.max_steps=2", "--tune", "--dry-run", "--results", str(tmp_path)]
    assert compare_main(argv) == 0
    printed = capsys.readouterr().out
    assert "method=tera seed=0 train.max_steps=2 method.lr=0.005,0.02,0.08" in printed
    assert compare_main(["model=tiny-llama", "task=math/gsm8k", "--tune", "--dry-run"]) == 2
    assert "name the reported metric with --metric" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_the_smoke_protocol_runs_trials_chooses_and_reports_finals(tmp_path):
    """``reproduce sentiment --smoke --tune`` on a tiny random BERT: 2 methods x 2 rates at seed 0, then the chosen rate
    at seed 1 (seed 0 is the trial); the table, report and plot are written; a bad search space is one sentence."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    assert reproduce_main(["sentiment", "--smoke", "--tune", "--results", str(tmp_path)]) == 0
    [spec] = load_tables("sentiment", smoke=True)
    records = sorted((tmp_path / "runs" / spec.tuned_records_dir).glob("*.json"))
    names = [p.name.rsplit("-", 1)[0] for p in records]
    assert len(records) == 6 and sum("-s0-" in n for n in names) == 4  # 4 trials + 2 finals (seed 0 is a trial)
    markdown = (tmp_path / f"{spec.tuned_out_name}.md").read_text()
    assert "chosen lr" in markdown and "with the same budget: 2 trials" in markdown and "missing" not in markdown
    assert (tmp_path / "plots" / f"{spec.tuned_out_name}-lr.png").exists()
    report = json.loads((tmp_path / f"{spec.tuned_out_name}-tuning.json").read_text())
    assert all(c["chosen"] for c in report["cells"]) and all(len(c["trials"]) == 2 for c in report["cells"])
    proc = cli("model=tiny", "method.tune.lr_factors=[-1]")
    assert proc.returncode == 2 and last_error(proc).startswith("error: method.tune.lr_factors multiplies")


def test_a_choice_at_the_edge_of_the_grid_is_said_in_the_caption():
    top = Cell("", "m", "t", "lora", "validation_accuracy", [_trial(1e-4, 0.25, 0.7, 0), _trial(1.6e-3, 4, 0.9, 0)])
    inside = Cell(
        "",
        "m",
        "t",
        "tera",
        "validation_accuracy",
        [_trial(5e-3, 0.25, 0.7, 0), _trial(2e-2, 1, 0.9, 0), _trial(8e-2, 4, 0.8, 0)],
    )
    bottom = Cell("", "m", "t", "vera", "validation_accuracy", [_trial(1e-3, 0.25, 0.9, 0), _trial(4e-3, 1, 0.5, 0)])
    assert (top.edge, inside.edge, bottom.edge) == ("top", None, "bottom")
    note = budget_note([top, inside, bottom], [0, 1, 2])
    assert "Chosen at the edge of the grid, so the best rate may lie beyond it (widen tune.lr_factors): " in note
    assert note.endswith("lora (top), vera (bottom).")
