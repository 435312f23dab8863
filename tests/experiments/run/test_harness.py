"""The run pipeline: config composition, short runs of every method, records, errors, W&B tables."""

import csv
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from baselines import METHODS, VIRTUAL_TOKEN_METHODS, UnknownMethod, make_peft_config
from experiments.errors import ConfigError, IncompatibleChoice
from experiments.run import pipeline
from experiments.run.schema import validate
from tests.helpers import cli, last_error, options
from tests.helpers import compose as _compose

TASKS = options("task")
CONF = Path(__file__).resolve().parents[3] / "conf"
ALL_METHODS = options("method")
# Prompt Tuning and P-Tuning run on decoder tasks only (tests/experiments/run/test_virtual_tokens.py runs them)
ENCODER_METHODS = [m for m in ALL_METHODS if m not in VIRTUAL_TOKEN_METHODS]


MODELS = options("model")
DECODER_TASKS = [t for t in TASKS if yaml.safe_load((CONF / "task" / f"{t}.yaml").read_text())["kind"] == "causal"]


def _model_for(task: str) -> str:
    return "llama2-7b" if task in DECODER_TASKS else "roberta-base"


def test_the_method_group_is_the_registry():
    assert ALL_METHODS == sorted(METHODS)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_passes_the_schema(task, tmp_path):
    """Every task on disk composes with a model of its kind and passes the schema (each method below); the custom
    tasks read one's own files and are refused without them."""
    overrides = [f"task={task}", f"model={_model_for(task)}"]
    if task.startswith("custom/"):
        with pytest.raises(ConfigError, match=rf"^task {task} reads your own files: set task.data_files="):
            validate(_compose(*overrides))
        (tmp_path / "train.jsonl").write_text("{}\n")
        overrides.append(f"task.data_files={{train: {tmp_path / 'train.jsonl'}}}")
    cfg = _compose(*overrides)
    settings = validate(cfg)
    assert settings.family == ("causal" if task in DECODER_TASKS else "classification")
    assert (
        OmegaConf.to_container(cfg, resolve=True)["run_name"] == f"tera-{task.replace('/', '-')}-{_model_for(task)}-s0"
    )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_and_model_passes_the_schema(method, model):
    task = (
        "math/gsm8k"
        if model in ("gemma3-270m", "llama2-7b", "llama3-8b", "smollm2-135m", "tiny-llama")
        else "glue/sst2"
    )
    cfg = _compose(f"method={method}", f"task={task}", f"model={model}")
    if method in VIRTUAL_TOKEN_METHODS and task == "glue/sst2":  # virtual tokens go before a decoder's input only
        with pytest.raises(IncompatibleChoice, match=rf"^Method {method} prepends trained virtual tokens"):
            validate(cfg)
        return
    settings = validate(cfg)
    task_type = "CAUSAL_LM" if settings.family == "causal" else None
    config = make_peft_config(method, settings.model.target_modules, None, task_type, **(settings.method.peft or {}))
    assert (config is None) == (method == "full")


def test_glue_protocol_fields():
    cfg = _compose("task=glue/mrpc")
    assert cfg.task.metrics == ["accuracy", "f1"] and cfg.train.epochs == 30 and cfg.train.max_length == 512
    assert _compose("task=glue/stsb").task.num_labels == 1
    assert _compose("task=glue/cola").task.metrics == ["matthews"]
    assert _compose().train.epochs is None and _compose().train.max_length == 128


def _write_csv(path: Path, header: list[str], rows: list[list]) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def glue_fixture(tmp_path_factory):
    """Tiny local files in the GLUE schema: sst2 (one sentence), mrpc (pairs), stsb (pairs, regression)."""
    root = tmp_path_factory.mktemp("glue")
    words = ["good", "great", "fine", "bad", "awful", "poor", "nice", "sad"]
    single = [[f"a {w} movie number {i}", int(w in ("good", "great", "fine", "nice"))] for i in range(6) for w in words]
    pairs = [[f"the {w} cat {i}", f"a {w} dog {i}", i % 2] for i in range(12) for w in words[:4]]
    scores = [[f"he is {w} {i}", f"she is {w}", float(i % 5)] for i in range(10) for w in words[:4]]
    files = {}
    for name, header, rows in (
        ("sst2", ["sentence", "label"], single),
        ("mrpc", ["sentence1", "sentence2", "label"], pairs),
        ("stsb", ["sentence1", "sentence2", "label"], scores),
    ):
        files[name] = {
            split: _write_csv(root / f"{name}-{split}.csv", header, rows[: 32 if split == "train" else 16])
            for split in ("train", "validation")
        }
    return files


def _data_files_override(files: dict) -> str:
    return "task.data_files={" + ",".join(f"{k}:{v}" for k, v in files.items()) + "}"


def _run(tmp_path, *overrides):
    cfg = _compose(
        "model=tiny",
        "logger=none",
        f"output_dir={tmp_path}",
        "train.max_steps=3",
        "train.batch_size=4",
        "train.eval_every=2",
        *overrides,
    )
    return pipeline.run_experiment(cfg)


@pytest.mark.parametrize("method", ENCODER_METHODS)
def test_every_method_trains_on_the_tiny_model_with_glue_schema_files(tmp_path, glue_fixture, method):
    record, path = _run(tmp_path, f"method={method}", "task=glue/sst2", _data_files_override(glue_fixture["sst2"]))
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(record, default=str))
    for key in (
        "config",
        "environment",
        "seed",
        "trainable_params",
        "total_params",
        "layers",
        "evaluations",
        "train_seconds",
        "eval_seconds",
        "peak_memory_gib",
        "final_metrics",
    ):
        assert key in saved, key
    assert saved["environment"]["versions"]["peft"]
    assert 0 < saved["trainable_params"] <= saved["total_params"]
    assert [e["step"] for e in saved["evaluations"]] == [2, 3]
    assert 0.0 <= saved["final_metrics"]["validation_accuracy"] <= 1.0
    assert saved["test_is_validation"] and saved["data_sizes"] == {"train": 32, "validation": 16, "test": 16}
    if method == "full":
        assert saved["layers"] == [] and saved["trainable_params"] == saved["total_params"]
    else:
        assert len(saved["layers"]) == 11 and all(layer["rank"] <= layer["rank_bound"] for layer in saved["layers"])


def test_pair_and_regression_tasks(tmp_path, glue_fixture):
    record, _ = _run(tmp_path, "method=lora", "task=glue/mrpc", _data_files_override(glue_fixture["mrpc"]))
    assert set(record["final_metrics"]) == {"validation_accuracy", "validation_f1", "test_accuracy", "test_f1"}
    record, _ = _run(tmp_path, "method=tera", "task=glue/stsb", _data_files_override(glue_fixture["stsb"]))
    assert -1.0 <= record["final_metrics"]["validation_pearson"] <= 1.0
    assert "validation_spearman" in record["final_metrics"]


def test_wandb_offline_tables(tmp_path, glue_fixture, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    record, _ = _run(
        tmp_path,
        "method=tera",
        "task=glue/sst2",
        _data_files_override(glue_fixture["sst2"]),
        "logger=wandb",
        "logger.mode=offline",
        f"logger.dir={tmp_path}",
    )
    tables = {
        p.name.split("_")[0]: json.loads(p.read_text())
        for p in (tmp_path / "wandb").glob("offline-run-*/files/media/table/*.table.json")
    }
    assert set(tables) == {"layers", "summary"}
    assert tables["layers"]["columns"] == ["layer", "d_out", "d_in", "trainable", "rank_bound", "rank"]
    assert len(tables["layers"]["data"]) == len(record["layers"])
    assert tables["summary"]["columns"][:8] == [
        "method",
        "task",
        "model",
        "seed",
        "trainable_params",
        "frozen_factor_values",
        "total_params",
        "median_rank",
    ]
    assert (
        tables["summary"]["columns"][8] == "learning_rate"
        and tables["summary"]["data"][0][8] == record["learning_rate"]
    )
    assert tables["summary"]["data"][0][:3] == ["tera", "glue/sst2", "tiny"]
    assert tables["summary"]["data"][0][5] == record["frozen_factor_values"] > 0  # TeRA's shared factors


def test_interrupted_run_leaves_no_record(tmp_path, glue_fixture, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "task=glue/sst2", _data_files_override(glue_fixture["sst2"]))
    assert list(tmp_path.glob("*.json")) == []


@pytest.mark.slow
def test_cli_errors_are_one_sentence_with_nonzero_exit(tmp_path):
    proc = cli("method=nope")
    assert proc.returncode == 2
    assert last_error(proc) == (
        f"error: In 'config': Could not find 'method/nope'; choose one of method: {', '.join(ALL_METHODS)}."
    )
    proc = cli(
        "task=glue/rte",
        "model=tiny",
        "logger=none",
        f"output_dir={tmp_path}",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    assert proc.returncode == 2
    assert last_error(proc).startswith("error: Cannot load nyu-mll/glue (rte) from the hub")
    assert "task.data_files=" in last_error(proc)
    assert list(tmp_path.glob("*.json")) == []
    proc = cli(
        "model=tiny", "logger=none", "task.data_files={train: /nonexistent.csv, validation: /n.csv, test: /t.csv}"
    )
    assert proc.returncode == 2 and last_error(proc) == (
        "error: task.data_files.train points at '/nonexistent.csv', which does not exist."
    )
    # found once the model is loaded, still before training: targets that name no layer of the model
    proc = cli("model=tiny", "logger=none", f"output_dir={tmp_path}", "method.target_modules=[q_proj]")
    assert proc.returncode == 2 and last_error(proc) == (
        "error: Target module(s) ['q_proj'] match nothing in BertForSequenceClassification; its linear layers are "
        "named ['classifier', 'dense', 'key', 'query', 'value'] (set method.target_modules)."
    )
    assert list(tmp_path.glob("*.json")) == []


def test_unknown_method_options():
    with pytest.raises(UnknownMethod, match="'lora' does not accept these options"):
        make_peft_config("lora", ["query"], rank=8)
    with pytest.raises(UnknownMethod, match="Full fine-tuning takes no adapter options"):
        make_peft_config("full", ["query"], r=8)
