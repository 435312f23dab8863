"""Long runs and sweeps: checkpoint and resume, skipping finished runs, submitit_local multiruns, DDP equivalence."""

import csv
import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch

from baselines import apply_method
from experiments.models.encoders import tiny_classifier
from experiments.run import pipeline
from experiments.run.checkpoints import Checkpointer
from experiments.run.loop import encode, labels_of, parameter_groups, shuffled_batches, train
from tests.helpers import cli, compose

SENTENCES = [
    ("a wonderful, moving film", 1),
    ("dull and far too long", 0),
    ("I loved every minute", 1),
    ("a waste of an evening", 0),
    ("sharp, funny and warm", 1),
    ("the plot makes no sense", 0),
    ("great acting all round", 1),
    ("boring from start to end", 0),
]


def _examples():
    return [{"text_a": t, "text_b": None, "label": y} for t, y in SENTENCES]


def _tiny_tera(seed: int = 0):
    model, tokenizer = tiny_classifier(num_labels=2, seed=seed)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():  # no dropout: runs that split batches differently draw no random numbers
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return apply_method(model, "tera", ["query", "value", "dense"], modules_to_save=["classifier"]), tokenizer


def _train(
    model, tokenizer, steps: int, checkpoint=None, log_fn=None, batch_size: int = 4, seen=None, grad_accum: int = 1
):
    examples = _examples()
    device = torch.device("cpu")
    seen = [] if seen is None else seen

    def make_batch(idx):
        seen.append(len(idx))
        chunk = [examples[i] for i in idx]
        return {**encode(tokenizer, chunk, 32, device), "labels": labels_of(chunk, False, device)}

    return train(
        model,
        batches=shuffled_batches(len(examples), batch_size, seed=0),
        make_batch=make_batch,
        param_groups=parameter_groups(model, 5e-2, 1e-2, ["classifier"]),
        steps=steps,
        device=device,
        warmup_ratio=0.2,
        log_fn=log_fn,
        log_every=1,
        checkpoint=checkpoint,
        grad_accum=grad_accum,
    )


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_a_crashed_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    reference_model, tokenizer = _tiny_tera()
    reference = _train(reference_model, tokenizer, steps=6)

    def crash_at_5(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    checkpoint = Checkpointer(tmp_path / "run.pt", every=2, signature="same")
    model, _ = _tiny_tera()
    with pytest.raises(KeyboardInterrupt):
        _train(model, tokenizer, steps=6, checkpoint=checkpoint, log_fn=crash_at_5)
    # Saved at step 4 (every 2 steps), then on the interruption after step 5 had finished (Ctrl-C keeps it too).
    assert torch.load(tmp_path / "run.pt", weights_only=False)["step"] == 5

    resumed_model, _ = _tiny_tera()  # a fresh process: the same initial weights, the checkpoint on disk
    resumed = _train(resumed_model, tokenizer, steps=6, checkpoint=checkpoint)
    assert resumed.losses == pytest.approx(reference.losses, rel=1e-6, abs=1e-7)
    expected, got = _trainable(reference_model), _trainable(resumed_model)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7)

    stale = Checkpointer(tmp_path / "run.pt", every=2, signature="other settings")
    other_model, _ = _tiny_tera()
    assert len(_train(other_model, tokenizer, steps=6, checkpoint=stale).losses) == 6  # started over


class _Requeued(Exception):
    """What submitit's handler does on its preemption signal: checkpoint, requeue, leave the process."""


def test_a_preemption_signal_saves_the_step_in_progress_then_reaches_the_previous_handler(tmp_path):
    reference_model, tokenizer = _tiny_tera()
    reference = _train(reference_model, tokenizer, steps=6)

    handled: list[int] = []
    checkpoint = Checkpointer(tmp_path / "run.pt", every=100, signature="same")  # no periodic save before step 6

    def submitit_like(signum, frame):
        handled.append(torch.load(tmp_path / "run.pt", weights_only=False)["step"])  # saved before we are called
        raise _Requeued

    def preempt_at_3(step, loss):
        if step == 3:
            signal.raise_signal(signal.SIGUSR2)  # arrives in the middle of training, as Slurm's would

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        model, _ = _tiny_tera()
        with pytest.raises(_Requeued):
            _train(model, tokenizer, steps=6, checkpoint=checkpoint, log_fn=preempt_at_3)
        assert handled == [3]
        assert signal.getsignal(signal.SIGUSR2) is submitit_like  # the guard put the previous handler back

        resumed_model, _ = _tiny_tera()
        resumed = _train(resumed_model, tokenizer, steps=6, checkpoint=checkpoint)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert resumed.losses == pytest.approx(reference.losses, rel=1e-6, abs=1e-7)
    for name, value in _trainable(reference_model).items():
        torch.testing.assert_close(_trainable(resumed_model)[name], value, rtol=1e-6, atol=1e-7)
    # The last step is saved too: a run preempted while it evaluates does not train again.
    assert torch.load(tmp_path / "run.pt", weights_only=False)["step"] == 6


def test_a_handler_that_returns_lets_training_go_on(tmp_path):
    calls: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))  # like submitit's bypass
    try:
        model, tokenizer = _tiny_tera()

        def term_at_2(step, loss):
            if step == 2:
                signal.raise_signal(signal.SIGTERM)

        checkpoint = Checkpointer(tmp_path / "run.pt", every=100, signature="same")
        result = _train(model, tokenizer, steps=4, checkpoint=checkpoint, log_fn=term_at_2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert calls == [signal.SIGTERM] and len(result.losses) == 4


# ---------------------------------------------------------------- through run.py: skip, resume, launchers


def _tweets_csv(folder: Path) -> str:
    path = folder / "tweets.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(SENTENCES * 2)
    return str(path)


def _cli(*args):
    return cli(*args, HYDRA_FULL_ERROR="1")


def _common(tmp_path, data: str):
    files = f"task.data_files={{train: {data}, validation: {data}, test: {data}}}"
    return ["model=tiny", files, "train.max_steps=4", "train.batch_size=4", "logger=none", f"output_dir={tmp_path}"]


@pytest.mark.slow
def test_one_record_per_distinct_run_finished_ones_skipped(tmp_path):
    data = _tweets_csv(tmp_path)
    args = _common(tmp_path / "runs", data)
    first = _cli(*args)
    assert first.returncode == 0, first.stderr
    [record] = (tmp_path / "runs").glob("tera-sentiment-tweets-tiny-s0-*.json")  # the readable name, then the run id
    stamp = record.stat().st_mtime_ns
    # A sweep over a setting that is not in the name: the finished run is skipped, the other gets a record of its own.
    sweep = _cli("-m", *args, "method.lr=0.02,0.001")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert sweep.stdout.count("skip tera-sentiment-tweets-tiny-s0") == 1 and record.stat().st_mtime_ns == stamp
    records = sorted((tmp_path / "runs").glob("*.json"))
    assert len(records) == 2
    assert sorted(json.loads(p.read_text())["config"]["method"]["lr"] for p in records) == [0.001, 0.02]
    # The same path, other rows: the data is part of the run, so it runs again instead of keeping the old record.
    with open(data, "a", newline="") as handle:
        csv.writer(handle).writerow(["one more rather good line", 1])
    edited = _cli(*args)
    assert edited.returncode == 0 and "skip" not in edited.stdout
    assert len(list((tmp_path / "runs").glob("*.json"))) == 3
    assert not list((tmp_path / "runs" / ".checkpoints").glob("*.pt"))  # removed once each record was written


def test_a_killed_run_writes_no_record_and_the_next_launch_resumes(tmp_path, monkeypatch, capsys):
    data = _tweets_csv(tmp_path)
    cfg = compose(*_common(tmp_path / "runs", data), "train.max_steps=6", "train.checkpoint_every=2")
    real_train = pipeline.train

    def preempted(*args, **kwargs):
        def stop_at_5(step, loss):
            if step == 5:
                raise KeyboardInterrupt  # what a Slurm preemption signal does to the process

        return real_train(*args, **{**kwargs, "log_fn": stop_at_5, "log_every": 1})

    monkeypatch.setattr(pipeline, "train", preempted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_experiment(cfg)
    assert list((tmp_path / "runs").glob("*.json")) == []
    checkpoint = pipeline.plan_run(cfg).checkpoint.path
    assert checkpoint.parent == tmp_path / "runs" / ".checkpoints" and checkpoint.name.startswith(cfg.run_name)
    assert checkpoint.exists()

    monkeypatch.setattr(pipeline, "train", real_train)
    record, path = pipeline.run_experiment(cfg)
    assert "resuming from" in capsys.readouterr().out
    assert record["complete"] and record["steps"] == 6 and path.exists() and not checkpoint.exists()


@pytest.mark.slow
def test_submitit_local_multirun_of_two_tiny_jobs(tmp_path):
    args = _common(tmp_path / "runs", _tweets_csv(tmp_path))
    result = _cli(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "method=tera,lora",
        *args,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").glob("*.json"))
    assert records == ["lora-sentiment-tweets-tiny-s0", "tera-sentiment-tweets-tiny-s0"]
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))  # they ran as submitit jobs

    again = _cli(
        "-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'sweep2'}", "method=tera,lora", *args
    )
    logs = "".join(p.read_text() for p in (tmp_path / "sweep2" / ".submitit").glob("*/*_log.out"))
    assert again.returncode == 0 and logs.count("skip ") == 2


# ---------------------------------------------------------------- data parallel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from experiments.run import distributed

    distributed.init_from_env()
    torch.manual_seed(0)
    model, tokenizer = _tiny_tera()
    distributed.check_same_buffers(model)
    seen: list[int] = []
    _train(model, tokenizer, steps=5, seen=seen)
    # Accumulation: the gradients are all-reduced on the last micro-batch only (no_sync before), same result.
    accumulated, _ = _tiny_tera()
    _train(accumulated, tokenizer, steps=3, batch_size=2, grad_accum=2)
    if rank == 0:
        torch.save({"trainable": _trainable(model), "batch_sizes": seen, "accumulated": _trainable(accumulated)}, out)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_lambdas_of_one_process_with_the_same_global_batch(tmp_path):
    torch.manual_seed(0)
    single, tokenizer = _tiny_tera()
    _train(single, tokenizer, steps=5)
    out = tmp_path / "ddp.pt"
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    saved = torch.load(out, weights_only=False)
    assert saved["batch_sizes"] == [2] * 5  # each rank ran half of every global batch of 4
    parallel, expected = saved["trainable"], _trainable(single)
    assert parallel.keys() == expected.keys() and any("tera_lambda" in n for n in expected)
    # float32: two ranks sum the gradient in another order than one process, and Adam's normalised step amplifies a
    # rounding difference where a gradient is near zero (1.7e-6 on a value of 0.06 seen on one machine).
    for name in expected:
        # float32 sums in another order (two ranks' halves, all-reduced): the paper's layout has one whole mode as
        # wide as the weight, so its reductions are longer than the balanced layout's and differ by a few 1e-5
        torch.testing.assert_close(parallel[name], expected[name], rtol=1e-4, atol=1e-4)
    single_accumulated, _ = _tiny_tera()
    _train(single_accumulated, tokenizer, steps=3, batch_size=2, grad_accum=2)
    for name, value in _trainable(single_accumulated).items():
        torch.testing.assert_close(saved["accumulated"][name], value, rtol=1e-4, atol=1e-4)


def test_slurm_launcher_optionscompose():
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=lab"]
    cfg = compose(*overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu" and launcher.account == "lab"
    assert launcher.gpus_per_node == 1 and launcher.max_num_timeout > 0 and launcher.array_parallelism == 16
