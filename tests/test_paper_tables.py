"""Table specs: parsing, grid expansion, rendering from fixture records (mean/std, missing runs, reference), plots,
and the properties table on a small model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from experiments import plots
from experiments.paper_tables import accuracy_rows, read_records, write_spec_table
from experiments.reproduce import main as reproduce_main
from experiments.reproduce import multirun_commands
from experiments.specs import SpecError, available, load_spec, parse_spec
from run import _options

ROOT = Path(__file__).resolve().parents[1]


def test_every_declared_table_parses_and_names_real_choices():
    assert available() == ["table1", "table2", "table3", "table4", "table5"]
    models, tasks, methods = set(_options("model")), set(_options("task")), set(_options("method"))
    for name in available():
        for smoke in (False, True):
            spec = load_spec(name, smoke=smoke)
            assert set(spec.grid["method"]) <= methods
            if spec.kind == "accuracy":
                assert set(spec.grid["model"]) <= models and set(spec.grid["task"]) <= tasks
                assert spec.columns and spec.runs()
                names = [r.name for r in spec.runs()]
                assert len(names) == len(set(names))  # every run has its own record
    assert load_spec("table2").reference["values"]["llama2-7b"]["dora"] == 79.7
    assert load_spec("table2", smoke=True).reference is None  # published figures are not about the offline models
    assert len(load_spec("table5", smoke=True).variants) == len(load_spec("table5").variants)


def test_grid_expansion_and_multirun_commands(tmp_path):
    spec = load_spec("table3")
    assert len(spec.runs()) == 2 * 6 * 9 * 5
    commands = multirun_commands(spec, tmp_path, "slurm", ["hydra.launcher.partition=gpu"])
    assert len(commands) == 2 * 6  # methods and seeds swept inside each (model, task)
    first = commands[0]
    assert first[1:5] == ["run.py", "-m", "model=roberta-base", "task=glue/sst2"]
    assert "method=lora,dora,vera,hira,mora,lokr,randlora,tera,full" in first and "seed=0,1,2,3,4" in first
    assert first[-2:] == ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]

    ablations = load_spec("table5", smoke=True)
    variants = [r.variant.label for r in ablations.runs()]
    assert len(set(variants)) == len(variants) == 9
    assert "per-layer factors (no sharing)" in variants and ablations.show_frozen
    assert any("method.peft.tensor_order=3" in c for c in multirun_commands(ablations, tmp_path, "basic", [])[1])


def test_spec_errors_are_one_sentence():
    with pytest.raises(SpecError, match="No table spec 'table9'"):
        load_spec("table9")
    with pytest.raises(SpecError, match="non-empty list for seed"):
        parse_spec({"name": "t", "title": "t", "grid": {"model": ["m"], "task": ["t"], "method": ["x"]}})
    assert reproduce_main(["table9"]) == 2


SPEC = {
    "name": "tablex",
    "title": "Fixture table",
    "grid": {"model": ["m1"], "task": ["suite/a", "suite/b"], "method": ["lora", "tera"], "seed": [0, 1]},
    "columns": [
        {"metric": "test_accuracy", "label": "A", "task": "suite/a"},
        {"metric": "test_accuracy", "label": "B", "task": "suite/b"},
        {"average": True, "label": "Avg."},
    ],
    "reference": {"column": "Avg.", "source": "a paper", "values": {"m1": {"lora": 81.5}}},
}


def _record(
    folder: Path, name: str, accuracy: float, trainable: int, method: str, steps: int = 10, frozen: int = 0
) -> None:
    spectrum = {"layer": "l0", "singular_values": [1.0, 0.5, 0.25]}
    record = {
        "complete": True,
        "model": "m1",
        "method": method,
        "steps": steps,
        "final_metrics": {"test_accuracy": accuracy},
        "trainable_params": trainable,
        "frozen_factor_values": frozen,
        "median_rank": 8 if method == "lora" else 384,
        "spectrum": spectrum,
        "environment": {"date": "2026-11-27T00:00:00", "device": "CPU", "versions": {"torch": "2", "peft": "0"}},
    }
    (folder / f"{name}.json").write_text(json.dumps(record))


def test_rendering_means_std_missing_runs_and_reference(tmp_path):
    spec = parse_spec(SPEC)
    _record(tmp_path, "lora-suite-a-m1-s0", 0.80, 1000, "lora")
    _record(tmp_path, "lora-suite-a-m1-s1", 0.90, 1000, "lora")
    _record(tmp_path, "lora-suite-b-m1-s0", 0.70, 1000, "lora")
    _record(tmp_path, "lora-suite-b-m1-s1", 0.70, 1000, "lora")
    _record(tmp_path, "tera-suite-a-m1-s0", 0.60, 50, "tera")  # tera: one of four runs
    (tmp_path / "tera-suite-a-m1-s1.json").write_text(json.dumps({"complete": False}))  # killed: not counted
    markdown = write_spec_table(spec, tmp_path, tmp_path / "out" / "tablex")
    lines = markdown.splitlines()
    assert "| model | method | A | B | Avg. | trainable params | median rank of dW | reference Avg. |" in lines
    assert "| m1 | lora | 85.00 ± 7.07 | 70.00 ± 0.00 | 77.50 ± 0.00 | 1,000 | 8 | 81.5 |" in lines
    assert "| m1 | tera | 60.00 ± 0.00 (1/2 seeds) | missing | missing | 50 | 384 | — |" in lines
    assert "3 of 8 runs have no complete record yet." in markdown and "Reference: a paper" in markdown
    csv_text = (tmp_path / "out" / "tablex.csv").read_text()
    assert csv_text.splitlines()[0].startswith("variant,model,method,A mean,A std,A n,B mean")

    rows = accuracy_rows(spec, read_records(tmp_path))
    figure = plots.accuracy_vs_parameters(rows, "A", "fixture", tmp_path / "plots" / "acc.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*-s0.json")]
    spectra = plots.spectra(records, tmp_path / "plots" / "spectra.png")
    assert spectra.stat().st_size > 1000
    assert plots.spectra([], tmp_path / "none.png") is None


def test_ablation_table_shows_frozen_values_per_variant(tmp_path):
    spec = parse_spec(
        {
            "name": "tabley",
            "title": "Sharing fixture",
            "grid": {"model": ["m1"], "task": ["suite/a"], "method": ["tera"], "seed": [0]},
            "variants": [
                {"label": "shared", "overrides": []},
                {"label": "per layer", "overrides": ["method.peft.share_factors=false"]},
            ],
            "show_frozen": True,
            "columns": [{"metric": "test_accuracy", "label": "A"}],
        }
    )
    _record(tmp_path, "tera-suite-a-m1-s0-shared", 0.80, 50, "tera", frozen=1_000)
    _record(tmp_path, "tera-suite-a-m1-s0-per-layer", 0.82, 50, "tera", frozen=12_000)
    lines = write_spec_table(spec, tmp_path, tmp_path / "out" / "tabley").splitlines()
    assert "| variant | model | method | A | trainable params | frozen random values | median rank of dW |" in lines
    assert "| shared | m1 | tera | 80.00 ± 0.00 | 50 | 1,000 | 384 |" in lines
    assert "| per layer | m1 | tera | 82.00 ± 0.00 | 50 | 12,000 | 384 |" in lines
    assert "frozen_factor_values" in (tmp_path / "out" / "tabley.csv").read_text().splitlines()[0]
    rows = accuracy_rows(spec, read_records(tmp_path))
    assert rows[1]["frozen_factor_values"] == 12_000
    figure = plots.variant_dots(rows, "A", spec.title, tmp_path / "plots" / "variants.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.variant_dots(accuracy_rows(parse_spec(SPEC), {}), "A", "none", tmp_path / "no.png") is None


def test_records_keep_one_layer_spectrum_for_the_plots():
    from baselines import apply_method
    from experiments.records import adapter_fields

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    adapted = apply_method(model, "lora", ["0", "2"], r=4)
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.normal_()
    fields = adapter_fields(adapted, "lora")
    assert fields["frozen_factor_values"] == 0
    spectrum = fields["spectrum"]
    assert spectrum["layer"].endswith("2") and len(spectrum["singular_values"]) == 16
    assert sum(v > 1e-6 * spectrum["singular_values"][0] for v in spectrum["singular_values"]) == 4


def test_properties_table_on_minilm(tmp_path):
    from experiments.properties import measure

    record = measure("minilm", "tera")
    assert record["frozen_factor_values"] > 0  # the shared factors, once for all layers of one shape
    # Full rank by construction; random diagonal entries near zero cost a few numerical ranks at fp32 tolerance.
    assert record["median_rank_bound"] == 384 and record["median_rank"] >= 0.9 * 384 and record["trainable_params"] > 0
    vera = measure("minilm", "vera")
    assert vera["median_rank"] <= 256 and vera["median_rank_bound"] == 256
    lokr = measure("minilm", "lokr")  # kron(W1, W2): the bound is rank(W1) rank(W2), and it is reached
    assert lokr["median_rank"] == lokr["median_rank_bound"] < 384


def test_reproduce_renders_only_from_existing_records(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.reproduce",
            "table3",
            "--smoke",
            "--render-only",
            "--results",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "table3-smoke.md").read_text()
    assert "| minilm | tera | missing |" in table and "6 of 6 runs have no complete record yet." in table


def test_every_run_of_every_table_composes_with_hydra():
    """The overrides a table passes to run.py (grid, spec, variants) are valid Hydra overrides for the config."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name in available():
            for smoke in (False, True):
                spec = load_spec(name, smoke=smoke)
                seen = set()
                for run in spec.runs():
                    key = (run.variant, run.model, run.task, run.method)
                    if key in seen:
                        continue
                    seen.add(key)
                    cfg = compose(config_name="config", overrides=run.overrides("/tmp/out"))
                    assert cfg.run_name == run.name
