"""train.keep_best: the state of the best validation step is kept (adapters in memory, full fine-tuning on disk),
restored before the test, recorded with the curve it was chosen on, and chosen the same after a resume."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from baselines import apply_method
from experiments.errors import ConfigError
from experiments.families.causal import CausalFamily, main_metric
from experiments.models.encoders import tiny_classifier
from experiments.records import identity
from experiments.run import pipeline
from experiments.run.checkpoints import Checkpointer, best_files
from experiments.run.loop import encode, evaluate, labels_of, parameter_groups, shuffled_batches, train
from experiments.run.schema import validate
from experiments.run.summary import selection_lines, summarise
from experiments.tasks.decoder import training_example
from experiments.tasks.decoder.batching import IGNORE, collate, tokenize_example
from tests.helpers import compose

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
EXAMPLES = [{"text_a": t, "text_b": None, "label": y} for t, y in SENTENCES]
CPU = torch.device("cpu")


def _tiny(method: str = "tera"):
    model, tokenizer = tiny_classifier(num_labels=2, seed=0)
    for module in model.modules():  # no dropout: a resumed run draws the same (no) random numbers
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return apply_method(model, method, ["query", "value", "dense"], modules_to_save=["classifier"]), tokenizer


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _test_accuracy(model, tokenizer) -> float:
    return evaluate(model, tokenizer, EXAMPLES, ["accuracy"], 32, 8, False, CPU)["accuracy"]


class Curve:
    """A validation 'evaluation' whose values are given per step (a curve one can predict), which also snapshots the
    trainable state and measures the test accuracy of every evaluated step, to compare the restored state with."""

    def __init__(self, model, tokenizer, by: str, values: dict[int, float]) -> None:
        self.model, self.tokenizer, self.by, self.values = model, tokenizer, by, values
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.test: dict[int, float] = {}

    def __call__(self, step: int) -> dict:
        self.states[step] = _trainable(self.model)
        self.test[step] = _test_accuracy(self.model, self.tokenizer)
        value = self.values[step]
        if self.by == "loss":
            return {"validation": {}, "validation_loss": value}
        return {"validation": {"accuracy": value}, "main_metric": "accuracy", "main_value": value}


def _train(model, tokenizer, steps: int, curve: Curve, checkpoint=None, log_fn=None, eval_every: int = 2):
    def make_batch(idx):
        chunk = [EXAMPLES[i] for i in idx]
        return {**encode(tokenizer, chunk, 32, CPU), "labels": labels_of(chunk, False, CPU)}

    return train(
        model,
        batches=shuffled_batches(len(EXAMPLES), 4, seed=0),
        make_batch=make_batch,
        param_groups=parameter_groups(model, 5e-2, 1e-2, ["classifier"]),
        steps=steps,
        device=CPU,
        warmup_ratio=0.2,
        eval_every=eval_every,
        evaluate_fn=curve,
        log_fn=log_fn,
        log_every=1,
        checkpoint=checkpoint,
        keep_best=curve.by,
    )


def _assert_state(model, expected: dict[str, torch.Tensor]) -> None:
    got = _trainable(model)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------ the loop


@pytest.mark.parametrize(
    ("by", "values", "chosen"),
    [
        ("metric", {2: 0.6, 4: 0.9, 6: 0.7}, 4),
        ("metric", {2: 0.9, 4: 0.9, 6: float("nan")}, 2),  # a tie keeps the earlier step; NaN never wins
        ("loss", {2: 0.5, 4: 0.6, 6: 0.3}, 6),  # the last step is a candidate too
        ("loss", {2: 0.5, 4: 0.2, 5: 0.4}, 4),  # 5 steps, every 2: the last step (5) is evaluated as well
    ],
)
def test_the_best_step_is_chosen_and_its_state_restored_for_the_test(by, values, chosen, capsys):
    model, tokenizer = _tiny()
    curve = Curve(model, tokenizer, by, values)
    result = _train(model, tokenizer, max(values), curve)
    assert [e["step"] for e in result.evaluations] == sorted(values)
    assert result.chosen_step == chosen
    assert result.selection == {
        "by": by,
        "metric": "loss" if by == "loss" else "accuracy",
        "value": values[chosen],
        "kept": "in memory",
    }
    _assert_state(model, curve.states[chosen])
    assert _test_accuracy(model, tokenizer) == curve.test[chosen]  # the test figure is that step's
    out = capsys.readouterr().out
    assert f"keep_best: restored step {chosen} of {max(values)}" in out
    what = "loss" if by == "loss" else "accuracy"
    assert f"validation at step {chosen} of {max(values)}: {what}" in out and "(best so far, kept)" in out


def test_no_value_at_all_tests_the_last_step(capsys):
    model, tokenizer = _tiny()
    curve = Curve(model, tokenizer, "metric", {2: float("nan"), 4: float("nan")})
    result = _train(model, tokenizer, 4, curve)
    assert result.chosen_step is None
    _assert_state(model, curve.states[4])
    assert "no validation metric had a value" in capsys.readouterr().out


def test_full_fine_tuning_keeps_the_best_state_on_disk_not_in_memory(tmp_path):
    model, tokenizer = _tiny("full")
    checkpoint = Checkpointer(tmp_path / "run.pt", every=100, signature="same")
    seen: dict[int, list[str]] = {}

    class Watched(Curve):
        def __call__(self, step):
            seen[step] = [p.name for p in best_files(checkpoint.path)]
            return super().__call__(step)

    curve = Watched(model, tokenizer, "loss", {2: 0.5, 4: 0.3, 6: 0.4})
    result = _train(model, tokenizer, 6, curve, checkpoint=checkpoint)
    assert result.selection["kept"] == "on disk" and result.chosen_step == 4
    # One file per kept step; the older one goes once the newer one is written (no checkpoint named it).
    assert seen == {2: [], 4: ["run.best2.pt"], 6: ["run.best4.pt"]}
    saved = torch.load(tmp_path / "run.best4.pt", weights_only=True)
    assert saved["step"] == 4 and saved["trainable"].keys() == curve.states[4].keys()
    _assert_state(model, curve.states[4])
    # The final checkpoint (step 6) names it, so a run preempted during its evaluation restores it again.
    assert torch.load(checkpoint.path, weights_only=False)["best"]["step"] == 4
    assert torch.load(checkpoint.path, weights_only=False)["best"]["tensors"] is None
    checkpoint.remove()  # what the pipeline does once the record is written
    assert best_files(checkpoint.path) == [] and not checkpoint.path.exists()


def test_without_a_checkpoint_folder_full_fine_tuning_uses_a_temporary_one(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    model, tokenizer = _tiny("full")
    curve = Curve(model, tokenizer, "metric", {2: 0.9, 4: 0.1})
    result = _train(model, tokenizer, 4, curve)
    assert result.chosen_step == 2 and result.selection["kept"] == "on disk"
    _assert_state(model, curve.states[2])
    assert list(tmp_path.iterdir()) == []  # removed once restored


@pytest.mark.parametrize("method", ["tera", "full"])
def test_a_resumed_run_chooses_the_step_an_uninterrupted_one_chooses(tmp_path, method):
    values = {2: 0.5, 4: 0.6, 6: 0.9, 8: 0.7}
    reference_model, tokenizer = _tiny(method)
    reference_curve = Curve(reference_model, tokenizer, "metric", values)
    reference = _train(reference_model, tokenizer, 8, reference_curve)
    assert reference.chosen_step == 6

    def crash_at_7(step, loss):
        if step == 7:
            raise RuntimeError("the node died")  # no save on the way out: the last checkpoint is step 4's

    checkpoint = Checkpointer(tmp_path / "run.pt", every=4, signature="same")
    model, _ = _tiny(method)
    with pytest.raises(RuntimeError, match="the node died"):
        _train(model, tokenizer, 8, Curve(model, tokenizer, "metric", values), checkpoint, log_fn=crash_at_7)
    saved = torch.load(checkpoint.path, weights_only=False)
    assert saved["step"] == 4 and saved["best"]["step"] == 4
    if method == "full":  # step 6's state was kept after that checkpoint; step 4's stays, since the checkpoint names it
        assert [p.name for p in best_files(checkpoint.path)] == ["run.best4.pt", "run.best6.pt"]

    resumed_model, _ = _tiny(method)  # a fresh process
    resumed_curve = Curve(resumed_model, tokenizer, "metric", values)
    resumed = _train(resumed_model, tokenizer, 8, resumed_curve, checkpoint)
    assert [e["step"] for e in resumed.evaluations] == [2, 4, 6, 8]  # the curve survived the resume
    assert resumed.chosen_step == reference.chosen_step == 6
    _assert_state(resumed_model, reference_curve.states[6])


def test_a_best_state_from_before_the_checkpoint_survives_the_resume(tmp_path):
    """The best step (2) lies before the checkpoint (4) and is never beaten after it: only the checkpoint has it."""
    values = {2: 0.9, 4: 0.5, 6: 0.6}
    reference_model, tokenizer = _tiny()
    reference_curve = Curve(reference_model, tokenizer, "metric", values)
    _train(reference_model, tokenizer, 6, reference_curve)

    def interrupt_at_5(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    checkpoint = Checkpointer(tmp_path / "run.pt", every=4, signature="same")
    model, _ = _tiny()
    with pytest.raises(KeyboardInterrupt):
        _train(model, tokenizer, 6, Curve(model, tokenizer, "metric", values), checkpoint, log_fn=interrupt_at_5)
    resumed_model, _ = _tiny()
    resumed = _train(resumed_model, tokenizer, 6, Curve(resumed_model, tokenizer, "metric", values), checkpoint)
    assert resumed.chosen_step == 2
    _assert_state(resumed_model, reference_curve.states[2])


# ------------------------------------------------------------------------------------------------ through the pipeline


def _tweets_csv(folder: Path) -> str:
    path = folder / "tweets.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(SENTENCES * 2)
    return str(path)


def _classification_cfg(tmp_path, *overrides: str):
    data = _tweets_csv(tmp_path)
    files = f"task.data_files={{train: {data}, validation: {data}, test: {data}}}"
    common = ["model=tiny", files, "train.max_steps=4", "train.batch_size=4", "logger=none", "method.lr=0.05"]
    return compose(*common, f"output_dir={tmp_path / 'runs'}", "train.eval_every=1", *overrides)


def test_a_run_records_the_curve_and_the_chosen_step_and_tests_that_state(tmp_path):
    record, path = pipeline.run_experiment(_classification_cfg(tmp_path, "train.keep_best=loss"))
    curve = record["validation_curve"]
    assert [row["step"] for row in curve] == [1, 2, 3, 4]
    losses = [row["loss"] for row in curve]
    assert record["chosen_step"] == curve[losses.index(min(losses))]["step"]  # the lowest loss, the earliest on a tie
    assert record["chosen_by"] == {"keep_best": "loss", "metric": "loss", "value": min(losses), "kept": "in memory"}
    chosen = next(row for row in curve if row["step"] == record["chosen_step"])
    # The final evaluation runs on the restored state: its validation accuracy is the chosen step's.
    assert record["final_metrics"]["validation_accuracy"] == chosen["accuracy"]
    lines = summarise(record, path).splitlines()
    assert f"best step    {record['chosen_step']} of 4 by validation loss {min(losses):.4f}" in "\n".join(lines)
    assert any(line.startswith("curve        validation loss at step: 1 ") for line in lines)
    assert json.loads(path.read_text())["chosen_step"] == record["chosen_step"]
    assert not list((tmp_path / "runs" / ".checkpoints").iterdir())  # checkpoint (and any kept state) removed


def test_a_run_without_keep_best_records_no_choice(tmp_path):
    record, path = pipeline.run_experiment(_classification_cfg(tmp_path, "train.max_steps=2"))
    assert [row["step"] for row in record["validation_curve"]] == [1]  # the last step is the final evaluation's
    assert "chosen_step" not in record and "best step" not in summarise(record, path)


def test_a_killed_run_resumes_to_the_same_choice(tmp_path, monkeypatch, capsys):
    cfg = _classification_cfg(tmp_path, "train.keep_best=metric", "train.max_steps=6", "train.checkpoint_every=2")
    real_train = pipeline.train

    def preempted(*args, **kwargs):
        def stop_at_5(step, loss):
            if step == 5:
                raise KeyboardInterrupt

        return real_train(*args, **{**kwargs, "log_fn": stop_at_5, "log_every": 1})

    monkeypatch.setattr(pipeline, "train", preempted)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_experiment(cfg)
    monkeypatch.setattr(pipeline, "train", real_train)
    resumed, _ = pipeline.run_experiment(cfg)
    assert "at step 6 of 6" in capsys.readouterr().out  # resumed after step 5
    (tmp_path / "again").mkdir()  # the same run, uninterrupted, elsewhere
    overrides = ["train.keep_best=metric", "train.max_steps=6", "train.checkpoint_every=2"]
    again, _ = pipeline.run_experiment(_classification_cfg(tmp_path / "again", *overrides))
    assert again["run_id"] == resumed["run_id"] and "resuming from" not in capsys.readouterr().out
    assert [row["step"] for row in resumed["validation_curve"]] == list(range(1, 7))
    for mine, theirs in zip(resumed["validation_curve"], again["validation_curve"]):
        assert mine == pytest.approx(theirs, rel=1e-6, abs=1e-7)
    assert resumed["chosen_step"] == again["chosen_step"] and resumed["final_metrics"] == again["final_metrics"]


# ------------------------------------------------------------------------------------------------ decoder validation


def _choice_items(count: int) -> list[dict]:
    questions = [("Is ice cold?", ["yes", "no"], 0), ("Pick the even number.", ["3", "4"], 1)]
    rows = [questions[i % 2] for i in range(count)]
    return [{"question": f"{q} ({i})", "choices": c, "answer": a} for i, (q, c, a) in enumerate(rows)]


def test_the_decoder_validation_loss_is_the_mean_token_loss_over_the_answers(tmp_path):
    rows = _choice_items(6)
    for name, part in (("train", rows), ("dev", rows[:3]), ("test", rows)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    files = f"{{train: {tmp_path}/train.jsonl, validation: {tmp_path}/dev.jsonl, test: {tmp_path}/test.jsonl}}"
    cfg = compose("task=custom/choice", "model=tiny-llama", f"task.data_files={files}", "train.eval_every=2")
    cfg.train.keep_best = "loss"
    family = CausalFamily(cfg)
    data = family.load_data()
    model, tokenizer = family.load_model(CPU)
    on_eval = family.periodic_evaluation(model, tokenizer, data, CPU, lambda values, step: None)
    point = on_eval(2)
    assert set(point) == {"validation_loss"}  # keep_best=loss: no generation, no lm-eval
    # By hand: every answer token's cross-entropy, one item at a time, averaged over all of them.
    total, count = 0.0, 0
    for item in data.validation["custom_choice"]:
        pair = training_example(item)
        batch = collate([tokenize_example(tokenizer, pair["prompt"], pair["target"], 256)], tokenizer.pad_token_id, CPU)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
        labels = batch["labels"][0, 1:]
        kept = labels != IGNORE
        total += float(torch.nn.functional.cross_entropy(logits[kept], labels[kept], reduction="sum"))
        count += int(kept.sum())
    assert point["validation_loss"] == pytest.approx(total / count, rel=1e-5)


def test_the_decoder_main_metric_follows_the_protocol_and_averages_tasks():
    kinds = {"a": "choice", "b": "choice", "m": "math"}
    one = {"a": {"lmeval_acc": 0.5, "llmadapters_gen_acc": 0.25, "n": 4}}
    assert main_metric(one, kinds, "lm-eval") == ("a_lmeval_acc", 0.5)
    assert main_metric(one, kinds, "llm-adapters") == ("a_llmadapters_gen_acc", 0.25)
    two = {"a": {"lmeval_acc": 0.5}, "b": {"lmeval_acc": 1.0}}
    assert main_metric(two, kinds, "lm-eval") == ("average_lmeval_acc", 0.75)
    mixed = {"a": {"lmeval_acc": 0.5}, "m": {"lmeval_exact_match_strict": 0.0}}
    assert main_metric(mixed, kinds, "lm-eval") == ("average_main_metric", 0.25)


@pytest.mark.slow
def test_a_decoder_run_keeps_the_lowest_validation_loss(tmp_path):
    rows = _choice_items(12)
    for name, part in (("train", rows), ("dev", rows[:4])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    files = f"{{train: {tmp_path}/train.jsonl, validation: {tmp_path}/dev.jsonl, test: {tmp_path}/train.jsonl}}"
    cfg = compose(
        "task=custom/choice",
        "model=tiny-llama",
        f"task.data_files={files}",
        "logger=none",
        f"output_dir={tmp_path / 'runs'}",
        "train.max_steps=4",
        "train.batch_size=4",
        "train.eval_every=2",
        "train.keep_best=loss",
        "eval.limit=3",
        "eval.batch_size=2",
    )
    record, path = pipeline.run_experiment(cfg)
    losses = {row["step"]: row["loss"] for row in record["validation_curve"]}
    assert list(losses) == [2, 4] and record["chosen_step"] == min(losses, key=losses.get)
    assert "best step    " in summarise(record, path)


# ------------------------------------------------------------------------------------------------ config and identity


def test_a_decoder_task_without_a_validation_split_is_refused_and_with_one_passes(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps(_choice_items(1)[0]) + "\n")
    base = ["model=tiny-llama", "task=custom/choice", "train.eval_every=2", "train.keep_best=metric"]
    with pytest.raises(ConfigError, match=r"or give task.data_files a validation file beside the test file\)"):
        validate(compose(*base, f"task.data_files={{train: {tmp_path}/t.jsonl, validation: {tmp_path}/t.jsonl}}"))
    both = f"task.data_files={{train: {tmp_path}/t.jsonl, validation: {tmp_path}/t.jsonl, test: {tmp_path}/t.jsonl}}"
    validate(compose(*base, both))
    validate(compose(*base, f"task.data_files={{train: {tmp_path}/t.jsonl}}", "++task.tune_holdout=0.2"))
    validate(compose("model=tiny", "train.eval_every=80", "train.keep_best=metric"))  # classification: always one


def test_keep_best_is_part_of_the_run_id_and_null_changes_no_earlier_id():
    def run_id(*overrides: str, drop_key: bool = False) -> str:
        config = identity.resolved(compose("model=tiny", *overrides))
        if drop_key:  # a config from before the option existed
            del config["train"]["keep_best"]
        return identity.short_hash(identity.run_signature(config))

    assert run_id() == run_id(drop_key=True)  # keep_best: null computes what every earlier run computed
    chosen = run_id("train.eval_every=80", "train.keep_best=metric")
    assert chosen != run_id("train.eval_every=80")
    assert chosen != run_id("train.eval_every=40", "train.keep_best=metric")
    assert chosen != run_id("train.eval_every=80", "train.keep_best=loss")


def test_a_long_curve_is_shortened_around_the_chosen_step():
    curve = [{"step": 80 * i, "accuracy": i / 100} for i in range(1, 31)]
    curve[9]["accuracy"] = 0.99  # step 800
    record = {"steps": 2400, "chosen_step": 800, "chosen_by": {"keep_best": "metric", "metric": "accuracy",
              "value": 0.99}, "validation_curve": curve}  # fmt: skip
    head, line = selection_lines(record)
    assert head == (
        "best step    800 of 2400 by validation accuracy 0.9900 (train.keep_best=metric); the test figures are this "
        "step's"
    )
    assert line == (
        "curve        validation accuracy at step: 80 0.010, 160 0.020, 240 0.030, ..., 720 0.090, 800 0.990, "
        "880 0.110, ..., 2320 0.290, 2400 0.300 (30 evaluations; all in the record's validation_curve)"
    )
    assert math.isclose(record["chosen_by"]["value"], 0.99)
