"""The typed config: every mistake a user can make on the command line is one sentence and exit 2 before anything
loads, for each job of a sweep, with Hydra's own --config-dir and searchpath working; and the one budget rule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from experiments.errors import ConfigError
from experiments.run import cli, distributed
from experiments.run.budget import plan_budget
from experiments.run.loop import train
from experiments.run.schema import validate
from tests.helpers import cli as run_cli
from tests.helpers import compose, last_error
from tests.toy_models import Regressor


def _preflight_error(capsys, *argv: str) -> str:
    """The sentence run.py prints for ``argv``, checked in this process (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        cli.preflight(list(argv))
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # one sentence, no traceback
    return lines[0].removeprefix("error: ")


MISTAKES = [
    (["train.max_steps=-5"], "train.max_steps should be greater than or equal to 0, got -5."),
    (["train.grad_accum=0"], "train.grad_accum should be greater than or equal to 1, got 0."),
    (["train.batch_size=0"], "train.batch_size should be greater than or equal to 1, got 0."),
    (["train.batch_size=-1"], "train.batch_size should be greater than or equal to 1, got -1."),
    (["train.batch_size=abc"], "train.batch_size should be a valid integer, got 'abc'"),
    (["train.batch_size=16.0"], "train.batch_size takes a whole number, written without a decimal point, got 16.0"),
    (["seed=1.0"], "seed takes a whole number, written without a decimal point, got 1.0"),
    (["method.lr=inf"], "method.lr must be a finite number, got inf"),
    (["method.target_modules=[]"], "method.target_modules=[] adapts nothing"),
    (["train.eval_batch_size=0"], "train.eval_batch_size should be greater than or equal to 1, got 0."),
    (["train.precision=fp8"], "train.precision should be 'fp32', 'bf16', 'fp16' or 'auto', got 'fp8'."),
    (["eval.protocol=foo"], "eval.protocol should be 'lm-eval', 'llm-adapters' or 'both', got 'foo'."),
    (["eval.batch_size=0"], "eval.batch_size should be greater than or equal to 1, got 0."),
    (["logger=wandb", "logger.mode=foo"], "logger.mode should be 'auto', 'online', 'offline' or 'disabled', got"),
    (["method.peft.core_rank_ratio=0"], "Method 'tera' refuses these options: core_rank_ratio must lie in (0, 1]"),
    (["method.peft.core_rank_ratio=1.5"], "Method 'tera' refuses these options: core_rank_ratio must lie in (0, 1]"),
    (["method.peft.core_rank_ratio=-1"], "Method 'tera' refuses these options: core_rank_ratio must lie in (0, 1]"),
    (["method.peft.tensor_order=0"], "Method 'tera' refuses these options: tensor_order must be at least 1, got 0"),
    (["method.peft.diagonal_placement=diag"], "refuses these options: diagonal_placement must be one of"),
    (["+method.peft.bogus=1"], "Method 'tera' does not accept these options"),
    (["+train.bogus=1"], "train.bogus is not a setting; check the key's spelling"),
    (["method.lr=0"], "method.lr should be greater than 0, got 0."),
    (["run_name=a/b"], "run_name becomes a file name: no '/' and no leading '.'."),
    (["method=nope"], "Could not find 'method/nope'; choose one of method: dora, full, hira, hira-r1, lokr, lora,"),
    (["+method.peft.target_modules=[query]"], "method.peft.target_modules is set by the suite"),
    (["task=glue/sst3"], "Could not find 'task/glue/sst3'; choose one of task: commonsense/all,"),
    (["model=tiny", "task=math/gsm8k"], "Task math/gsm8k needs a decoder model (kind: decoder), but model=tiny is an"),
    (["model=tiny-llama"], "Task sentiment/tweets needs an encoder model (kind: encoder), but model=tiny-llama is a"),
    (["task.data_files={train: /nope.csv, validation: /v.csv, test: /t.csv}"], "task.data_files.train points at"),
    (["task=glue/rte", "task.data_files={train: a.csv, validation: b.csv, test: c.csv}"], "set task.test_split=test"),
    (["task.data_files={train: a.txt, validation: b.csv, test: c.csv}"], "task.data_files.train must be a .csv/"),
    (
        ["model=tiny-llama", "task=commonsense/offline", "task.data_files={validation: /tmp/x.jsonl}"],
        "task.data_files has key(s) ['validation'] that this task does not read; it reads ['train', 'bb_siqa',",
    ),
    (["model=tiny-llama", "task=math/gsm8k", "task.evaluate_on=[metamath]"], "task.evaluate_on takes choice or math"),
    (["task.main_metric=f1"], "task.main_metric 'f1' must be one of task.metrics ['accuracy']."),
    (
        ["train.keep_best=metric"],
        "train.keep_best=metric chooses among the validation evaluations of every train.eval_every steps, but "
        "train.eval_every is null; set it (e.g. train.eval_every=80) or drop train.keep_best.",
    ),
    (["train.keep_best=best", "train.eval_every=80"], "train.keep_best should be 'metric' or 'loss', got 'best'."),
    (["train.keep_best=loss", "train.eval_every=0"], "train.eval_every should be greater than or equal to 1, got 0."),
    (
        ["model=tiny-llama", "task=math/gsm8k", "train.keep_best=loss", "train.eval_every=80"],
        "train.keep_best=loss chooses a step on a validation split, but task math/gsm8k has none (its evaluated items "
        "are the test figures); hold part of train out with ",
    ),
]


@pytest.mark.parametrize(("argv", "sentence"), MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_every_mistake_is_one_sentence_before_anything_loads(capsys, argv, sentence):
    assert sentence in _preflight_error(capsys, *argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the mistake is asking for a GPU that is not there")
def test_asking_for_a_missing_gpu(capsys):
    assert _preflight_error(capsys, "device=cuda") == (
        "device=cuda was asked for, but this machine has no CUDA GPU; use device=auto or cpu."
    )


def test_every_job_of_a_sweep_is_checked_and_the_bad_one_named(capsys):
    message = _preflight_error(capsys, "-m", "method=tera,lora", "seed=0,1", "method.lr=0.1,0")
    assert message.startswith("method.lr should be greater than 0, got 0 (job 1 of the sweep: method=tera seed=0")
    assert "method.lr=0" in message


def test_good_command_lines_pass(capsys):
    cli.preflight(["-m", "method=tera,lora,vera", "seed=0,1,2", "train.max_steps=5"])
    cli.preflight(["model=smollm2-135m", "task=math/gsm8k", "train.max_steps=2", "eval.limit=4"])
    cli.preflight(["-m", "hydra/launcher=submitit_local", "method=tera,full"])
    assert capsys.readouterr().err == ""


def _user_task_dir(tmp_path: Path, *, num_labels: int = 2, metric: str = "accuracy") -> Path:
    """A task YAML outside the repository, as a user adds one through --config-dir."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"sample {i},{i % 2}\n" for i in range(12)))
    folder = tmp_path / "myconf" / "task" / "mine"
    folder.mkdir(parents=True)
    (folder / "topics.yaml").write_text(
        "name: topics\nsuite: mine\nkind: classification\ntext_fields: [text]\n"
        f"num_labels: {num_labels}\nmetrics: [{metric}]\nmain_metric: {metric}\ntest_split: test\n"
        f"data_files: {{train: {data}, validation: {data}, test: {data}}}\n"
    )
    return tmp_path / "myconf"


def test_a_task_of_ones_own_through_config_dir_and_searchpath(tmp_path, capsys):
    conf = _user_task_dir(tmp_path)
    cli.preflight(["--config-dir", str(conf), "task=mine/topics", "model=tiny"])
    cli.preflight([f"hydra.searchpath=[file://{conf}]", "task=mine/topics", "model=tiny"])
    assert capsys.readouterr().err == ""
    broken = _user_task_dir(tmp_path / "broken", metric="auc")
    message = _preflight_error(capsys, "--config-dir", str(broken), "task=mine/topics", "model=tiny")
    assert message.startswith(
        "task.metrics.0 should be 'accuracy', 'f1', 'macro_f1', 'matthews', 'pearson' or 'spearman'"
    )


@pytest.mark.slow
def test_run_py_refuses_before_loading_and_trains_a_task_of_ones_own(tmp_path):
    conf = _user_task_dir(tmp_path)
    proc = run_cli("--config-dir", str(conf), "task=mine/topics", "model=tiny", "train.batch_size=abc")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error(proc).startswith("error: train.batch_size should be a valid integer")
    common = ["task=mine/topics", "model=tiny", "logger=none", f"output_dir={tmp_path / 'runs'}", "train.max_steps=2"]
    proc = run_cli("--config-dir", str(conf), *common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "budget: 2 steps (train.max_steps)" in proc.stdout
    assert len(list((tmp_path / "runs").glob("tera-mine-topics-tiny-s0-*.json"))) == 1


def test_validate_returns_typed_settings():
    settings = validate(compose("task=glue/mrpc", "model=roberta-base", "train.grad_accum=2"))
    assert settings.family == "classification" and settings.task.metrics == ["accuracy", "f1"]
    assert settings.train.grad_accum == 2 and settings.train.epochs == 30 and settings.train.max_steps is None
    with pytest.raises(ConfigError, match="train.warmup_ratio should be less than or equal to 1"):
        validate(compose("train.warmup_ratio=2"))


# ---------------------------------------------------------------- the budget


def test_an_explicit_max_steps_wins_over_the_task_epochs():
    cfg = compose("task=glue/sst2", "model=roberta-base", "train.max_steps=60")
    budget = plan_budget(cfg.train, 67349)
    assert (budget.steps, budget.source) == (60, "train.max_steps")
    assert "the task's 60 epochs are not used" in budget.note
    decoder = compose("model=smollm2-135m", "task=math/gsm8k", "train.max_steps=2")
    assert plan_budget(decoder.train, 819).steps == 2


def test_epochs_count_the_global_batch_including_accumulation():
    cfg = compose("task=glue/mrpc", "model=roberta-base", "train.batch_size=16", "train.grad_accum=4")
    budget = plan_budget(cfg.train, 3668)
    assert budget.source == "epochs" and budget.global_batch == 64
    assert budget.steps == math.ceil(30 * 3668 / 64)  # not 30 * 3668 / 16: accumulation does not add epochs


def test_without_steps_or_epochs_the_default_steps():
    budget = plan_budget(compose().train, 1000)
    assert (budget.steps, budget.source) == (200, "train.default_steps")
    assert plan_budget(compose("train.default_steps=7").train, 1000).steps == 7
    assert plan_budget(compose("train.max_steps=0").train, 1000).steps == 0  # evaluate the pretrained model


# ---------------------------------------------------------------- the loop: fp16 scaling, DDP sync, loss reads


def _loop(model, steps: int, **options):
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randn(64)

    def batches():
        while True:
            yield list(range(8))

    return train(
        model,
        batches=batches(),
        make_batch=lambda idx: {"x": x[idx], "labels": y[idx]},
        param_groups=[{"params": list(model.parameters()), "lr": 1e-2}],
        steps=steps,
        device=torch.device("cpu"),
        **options,
    )


def test_fp16_trains_through_a_gradient_scaler(monkeypatch):
    scaled = []
    real = torch.amp.GradScaler.scale
    monkeypatch.setattr(
        torch.amp.GradScaler, "scale", lambda self, loss: scaled.append(self.is_enabled()) or real(self, loss)
    )
    torch.manual_seed(0)
    result = _loop(Regressor(), 4, precision="fp16", max_grad_norm=1.0)
    assert all(math.isfinite(v) for v in result.losses) and len(result.losses) == 4
    assert scaled and all(scaled)  # fp16: every backward went through an enabled scaler
    scaled.clear()
    _loop(Regressor(), 2, precision="fp32")
    assert scaled and not any(scaled)


def test_losses_are_read_once_per_step_and_match_the_micro_batches():
    torch.manual_seed(0)
    accumulated = _loop(Regressor(), 3, grad_accum=2, log_every=100)
    torch.manual_seed(0)
    single = _loop(Regressor(), 3, grad_accum=1, log_every=1)
    assert len(accumulated.losses) == 3  # one value per optimizer step, read in one go at the end
    # The same batch twice at half weight each is the same loss and gradient as the batch once.
    assert accumulated.losses == pytest.approx(single.losses, rel=1e-5)


def test_gradients_are_all_reduced_on_the_last_micro_batch_only():
    entered = []

    class FakeDDP:
        def no_sync(self):
            entered.append("no_sync")
            return torch.enable_grad()  # any context manager

    for micro in range(4):
        with distributed.sync_gradients(FakeDDP(), sync=micro == 3):
            pass
    assert entered == ["no_sync"] * 3
    with distributed.sync_gradients(torch.nn.Linear(1, 1), sync=False):  # not DDP: nothing to skip
        pass


def test_a_key_the_chosen_option_does_not_have(capsys):
    assert _preflight_error(capsys, "logger=none", "logger.mode=offline") == (
        "Could not override 'logger.mode': the chosen config has no such key (a typo?); to append to your config use "
        "+logger.mode=offline."
    )
