"""The benchmark measures real steps at tiny shapes; records are written atomically."""

import json

import pytest

from experiments.benchmarks import tera_step
from experiments.records import environment, write_json_atomic


@pytest.mark.parametrize("name", ["lora-r32", "tera-full-merged", "tera-half-auto"])
def test_measure_one_method_at_tiny_shapes(name):
    row = tera_step.measure("tiny", name)
    assert row["step_ms"] > 0 and row["trainable"] > 0 and row["loss_finite"]
    assert row["peak_rss_gib"] > 0
    if name.startswith("tera"):
        assert set(row["paths"]) == {"32x32", "48x32", "32x48"}


def test_render_names_device_versions_and_ratio():
    record = {
        "preset": "tiny",
        "shapes": "test",
        "warmup": 1,
        "steps": 2,
        "environment": environment("cpu"),
        "rows": [
            {"method": "lora-r32", "step_ms": 10.0, "trainable": 5, "peak_rss_gib": 1.0},
            {"method": "tera-full-auto", "step_ms": 12.0, "trainable": 3, "peak_rss_gib": 1.0, "paths": {"4x4": "m"}},
            {"method": "vera-r256", "error": "boom"},
        ],
    }
    text = tera_step.render(record)
    assert "| tera-full-auto | 12.0 | 1.20 |" in text
    assert "failed: boom" in text
    assert record["environment"]["versions"]["torch"] in text and "CPU" in text


def test_write_json_atomic_leaves_no_temporary_files(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "record.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        write_json_atomic(tmp_path / "sub" / "record.json", circular)  # fails mid-write: old record untouched
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["record.json"]


def test_run_all_writes_record_and_table(tmp_path):
    record = tera_step.run_all("tiny", ["lora-r32", "tera-full-auto"], tmp_path)
    assert [r["method"] for r in record["rows"]] == ["lora-r32", "tera-full-auto"]
    assert all("error" not in r for r in record["rows"]), record["rows"]
    saved = json.loads((tmp_path / "tera_step-tiny.json").read_text())
    assert saved["rows"][1]["step_ms"] > 0
    assert "| tera-full-auto |" in (tmp_path / "tera_step-tiny.md").read_text()
