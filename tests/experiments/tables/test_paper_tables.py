"""Declared tables (``experiments/specs``): parsing, grid expansion, run names, Hydra multiruns, rendering through the
one table path (mean/std, missing runs, reference, base rows, variants), the committed tables, plots and table 1."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from experiments.records import naming
from experiments.reproduce.grid import main as reproduce_main
from experiments.reproduce.sweep import multirun_commands
from experiments.tables import plots
from experiments.tables.paper import accuracy_rows, write_spec_table
from experiments.tables.render import HOLLOW, RecordSet, read_records
from experiments.tables.specs import SPECS, SpecError, available, conf_methods, load_tables, parse_spec
from tests.experiments.tables.test_tables import markdown_rows

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "results"


def _options(group: str) -> set[str]:
    root = ROOT / "conf" / group
    return {str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")}


def _has_smoke(name: str) -> bool:
    return bool(yaml.safe_load((SPECS / f"{name}.yaml").read_text()).get("smoke"))


DECLARED = [(name, smoke) for name in available() for smoke in (False, True) if not smoke or _has_smoke(name)]


def _check_decoder_columns(spec) -> None:
    """A decoder task's metrics are named by the protocol that made them (families/causal.py evaluate_all): a column
    without it would read a metric no record has and show "missing" forever."""
    for column in (c for c in spec.columns if c.metric):
        tasks = [column.task] if column.task else spec.grid["task"]
        kinds = {yaml.safe_load((ROOT / "conf" / "task" / f"{t}.yaml").read_text()).get("kind") for t in tasks}
        if "causal" in kinds:
            assert re.search(r"_(lmeval|llmadapters|text)_", column.metric), f"{spec.tag}: column {column.metric}"


def test_every_declared_spec_parses_and_names_real_choices():
    assert available() == sorted(p.stem for p in SPECS.glob("*.yaml")) and len(DECLARED) > len(available())
    models, tasks, methods = _options("model"), _options("task"), _options("method")
    for name, smoke in DECLARED:
        tables = load_tables(name, smoke=smoke)
        names = [run.name for spec in tables for run in spec.runs()]
        assert len(names) == len(set(names))  # every run has its own record
        for spec in tables:
            assert set(conf_methods(spec)) <= methods
            if spec.kind == "accuracy":
                assert set(spec.grid["model"]) <= models and set(spec.grid["task"]) <= tasks
                assert spec.columns and spec.runs()
                _check_decoder_columns(spec)
            assert spec.records_dir.endswith("-smoke") == smoke and spec.out_name.endswith("-smoke") == smoke
    table2, extended = load_tables("table2")
    assert table2.paper["values"]["llama2-7b"]["tera"]["Avg"] == 78.63 and extended.paper is None
    assert conf_methods(table2)[:3] == ["prompt-tuning", "p-tuning", "lora-r32"] and table2.grid["seed"] == list(
        range(5)
    )
    assert load_tables("table2", smoke=True)[0].paper is None  # published figures are not about offline models
    ablations = load_tables("ablations_beyond_paper")[0].variants
    assert len(load_tables("ablations_beyond_paper", smoke=True)[0].variants) == len(ablations)


def test_the_run_name_convention_is_one_function():
    assert naming.run_name("tera", "glue/sst2", "roberta-base", 0) == "tera-glue-sst2-roberta-base-s0"
    assert naming.run_name("tera", "glue/sst2", "m", 1, "core-rank-i-2") == "tera-glue-sst2-m-s1-core-rank-i-2"
    assert naming.slug("core rank I/2") == "core-rank-i-2"
    assert naming.hydra_run_name("glue/sst2", "m") == "${method.name}-glue-sst2-m-s${seed}"
    with pytest.raises(ValueError, match="fields are method, task"):
        naming.run_name("tera", "glue/sst2", "m", 0, template="{method}-{lr}")

    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["method=lora", "task=glue/mrpc", "model=tiny", "seed=3"])
    assert cfg.run_name == naming.run_name("lora", "glue/mrpc", "tiny", 3)  # conf/config.yaml spells the same


def test_grid_expansion_and_multirun_commands(tmp_path):
    [spec] = load_tables("glue")
    grid = spec.grid
    assert len(spec.runs()) == len(grid["model"]) * len(grid["task"]) * len(grid["method"]) * len(grid["seed"])
    commands = multirun_commands(spec, tmp_path, "slurm", ["hydra.launcher.partition=gpu"])
    assert len(commands) == len(grid["model"]) * len(grid["task"])  # methods and seeds swept inside each
    first = commands[0]
    assert first[1:5] == ["run.py", "-m", f"model={grid['model'][0]}", f"task={grid['task'][0]}"]
    assert f"method={','.join(grid['method'])}" in first and f"seed={','.join(map(str, grid['seed']))}" in first
    assert first[-2:] == ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]

    [ablations] = load_tables("ablations_beyond_paper", smoke=True)
    variants = [r.variant.label for r in ablations.runs()]
    assert len(set(variants)) == len(variants) == len(ablations.variants)
    assert "per-layer factors (no sharing)" in variants and ablations.show_frozen
    commands = multirun_commands(ablations, tmp_path, "basic", [])
    assert any("method.peft.layout=whole-side" in c for c in commands[1])  # the paper's layout beside the balanced
    assert any("method.peft.tensor_order=3" in c for c in commands[2])


@pytest.mark.slow
def test_every_multirun_composes_and_names_its_records_as_the_spec_does():
    """Each Hydra multirun a spec launches is valid for the config, applies its variant's overrides, and its run_name
    interpolation gives every (method, seed) job the record name the table reads."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for name, smoke in DECLARED:
            for spec in load_tables(name, smoke=smoke):
                runs = spec.runs()
                for command in multirun_commands(spec, Path("/tmp/out"), "basic", []):
                    args = command[3:]
                    model, task = args[0].split("=")[1], args[1].split("=")[1]
                    methods, seeds = args[2].split("=")[1].split(","), args[3].split("=")[1].split(",")
                    first = [f"method={methods[0]}", f"seed={seeds[0]}", *args[4:]]
                    cfg = compose(config_name="config", overrides=[*args[:2], *first])
                    group = [r for r in runs if (r.model, r.task) == (model, task)]
                    run = next(r for r in group if r.name == cfg.run_name)  # its first job writes a record we read
                    for override in parser.parse_overrides(list(run.variant.overrides)):  # e.g. train.max_steps=0
                        assert OmegaConf.select(cfg, override.key_or_group) == override.value()
                    template = OmegaConf.to_container(cfg)["run_name"]  # the unresolved interpolation
                    for r in (r for r in group if r.variant == run.variant):
                        job = OmegaConf.create({"method": {"name": r.method}, "seed": r.seed, "run_name": template})
                        assert job.run_name == r.name and r.method in methods and str(r.seed) in seeds


def test_spec_errors_are_one_sentence(tmp_path):
    with pytest.raises(SpecError, match="No table spec 'table9'"):
        load_tables("table9")
    assert reproduce_main(["table9"]) == 2
    with pytest.raises(SpecError, match="non-empty list for seed"):
        parse_spec({"name": "t", "title": "t", "grid": {"model": ["m"], "task": ["t"], "method": ["x"]}})
    grid = {"model": ["m"], "task": ["s/t"], "method": ["lora", "tera"], "seed": [0]}
    base = {"name": "t", "title": "t", "grid": grid, "columns": [{"metric": "x", "label": "X"}]}
    cases = {
        "unknown keys colums": {"colums": []},
        "names methods outside the grid": {"variants": [{"label": "v", "methods": ["vera"]}]},
        "share the record name 't-m-s0'": {"run_name": "t-{model}-s{seed}"},  # both methods would write one record
        "fields are method, task": {"run_name": "{method}-{lr}"},
        "own out": {"tables": [{"title": "a"}, {"title": "b"}]},
    }
    for message, change in cases.items():
        (tmp_path / "t.yaml").write_text(yaml.safe_dump(base | change))
        with pytest.raises(SpecError, match=message):
            load_tables("t", folder=tmp_path)


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
    folder: Path,
    name: str,
    accuracy: float,
    trainable: int,
    method: str,
    steps: int = 10,
    frozen: int = 0,
    seed=0,
    task: str | None = None,
) -> None:
    spectrum = {"layer": "l0", "singular_values": [1.0, 0.5, 0.25]}
    task = task or ("suite/b" if "suite-b" in name else "suite/a")
    # What a run's resolved config would hold: the seeds of one cell share it, variants differ in it.
    config = {"method": {"name": method}, "task": {"name": task}, "train": {"max_steps": steps}, "seed": seed}
    config["variant"] = re.sub(r"-s\d+", "", name)
    record = {
        "complete": True,
        "run_name": name,
        "config": config,
        "model": "m1",
        "task": task,
        "method": method,
        "seed": seed,
        "steps": steps,
        "final_metrics": {"test_accuracy": accuracy},
        "trainable_params": trainable,
        "frozen_factor_values": frozen,
        "median_rank": 8 if method == "lora" else 384,
        "train_seconds": 30.0,
        "spectrum": spectrum,
        "environment": {"date": "2026-11-27T00:00:00", "device": "CPU", "versions": {"torch": "2", "peft": "0"}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record))


def test_a_finished_run_without_a_columns_metric_is_said_not_left_as_missing(tmp_path):
    """Table 3's first smoke: every record finished, every cell read missing (the records held another metric name)."""
    spec = parse_spec(SPEC)
    _record(tmp_path, "lora-suite-a-m1-s0", 0.80, 1000, "lora")
    _record(tmp_path, "lora-suite-b-m1-s0", 0.70, 1000, "lora")
    renamed = json.loads((tmp_path / "lora-suite-b-m1-s0.json").read_text())
    renamed["final_metrics"] = {"test_exact_match": 0.0}
    (tmp_path / "lora-suite-b-m1-s0.json").write_text(json.dumps(renamed))
    markdown = write_spec_table(spec, tmp_path, tmp_path / "out" / "tablex")
    assert f"{HOLLOW} test_accuracy: those cells read missing although their runs finished." in markdown
    assert markdown_rows(markdown)[0]["B"] == "missing"


def test_rendering_means_std_missing_runs_and_reference(tmp_path):
    spec = parse_spec(SPEC)
    _record(tmp_path, "lora-suite-a-m1-s0", 0.80, 1000, "lora")
    _record(tmp_path, "lora-suite-a-m1-s1", 0.90, 1000, "lora", seed=1)
    _record(tmp_path, "lora-suite-b-m1-s0", 0.70, 1000, "lora")
    _record(tmp_path, "lora-suite-b-m1-s1", 0.70, 1000, "lora", seed=1)
    _record(tmp_path, "tera-suite-a-m1-s0", 0.60, 50, "tera")  # tera: one of four runs
    (tmp_path / "tera-suite-a-m1-s1.json").write_text(json.dumps({"complete": False}))  # killed: not counted
    markdown = write_spec_table(spec, tmp_path, tmp_path / "out" / "tablex")
    rows = {row["method"]: row for row in markdown_rows(markdown)}
    assert list(rows["lora"]) == [
        "model",
        "method",
        "A",
        "B",
        "Avg.",
        "seeds",
        "trainable params",
        "median rank of dW",
        "train s",
        "reference Avg.",
    ]
    assert list(rows["lora"].values()) == ["m1", "lora", "85.00 ± 7.07", "70.00 ± 0.00", "77.50 ± 0.00", "2"] + [
        "1,000",
        "8",
        "30",
        "81.5",
    ]
    assert [rows["tera"][k] for k in ("A", "B", "Avg.", "seeds", "trainable params", "reference Avg.")] == [
        "60.00 ± 0.00 (1/2 seeds)",
        "missing",
        "missing",
        "1",
        "50",
        "—",
    ]
    assert "3 of 8 runs have no complete record yet." in markdown and "Reference: a paper" in markdown
    assert "Warning" not in markdown  # cells of runs not yet run are missing, and nothing more is said of them
    table = pd.read_csv(tmp_path / "out" / "tablex.csv").set_index("method")
    assert table.loc["lora", "A mean"] == pytest.approx(0.85) and table.loc["lora", "Avg. mean"] == pytest.approx(0.775)
    assert (
        table.loc["tera", "A n"] == 1
        and table.loc["tera", "runs_found"] == 1
        and table.loc["tera", "runs_expected"] == 4
    )

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
    shown = markdown_rows(write_spec_table(spec, tmp_path, tmp_path / "out" / "tabley"))
    cells = [(r["variant"], r["A"], r["trainable params"], r["frozen random values"]) for r in shown]
    assert cells == [("shared", "80.00 ± 0.00", "50", "1,000"), ("per layer", "82.00 ± 0.00", "50", "12,000")]
    assert "frozen_factor_values" in (tmp_path / "out" / "tabley.csv").read_text().splitlines()[0]
    rows = accuracy_rows(spec, read_records(tmp_path))
    assert rows[1]["frozen_factor_values"] == 12_000
    figure = plots.variant_dots(rows, "A", spec.title, tmp_path / "plots" / "variants.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.variant_dots(accuracy_rows(parse_spec(SPEC), RecordSet()), "A", "none", tmp_path / "no.png") is None


BEFORE_AFTER = """
name: ba
records: ba-runs
grid: {model: [m1], method: [tera, lora], seed: [0]}
overrides: [train.batch_size=8]
run_name: "{task}-{model}-{method}-s{seed}"
variants:
  - label: base (no training)
    methods: [tera]
    overrides: [train.max_steps=0]
    run_name: "{task}-{model}-base-s{seed}"
  - {label: trained, overrides: [train.max_steps=60]}
tables:
  - {out: ba_a, title: A, grid: {task: [suite/a]}, columns: [{metric: test_accuracy, label: A}]}
  - out: ba_b
    title: B
    grid: {task: [suite/b]}
    overrides: [eval.limit=50]
    columns: [{metric: test_accuracy, label: B}]
"""


def test_a_spec_with_a_base_row_and_a_table_per_task(tmp_path):
    (tmp_path / "ba.yaml").write_text(BEFORE_AFTER)
    tables = load_tables("ba", folder=tmp_path)
    assert [(t.out_name, t.records_dir) for t in tables] == [("ba_a", "ba-runs"), ("ba_b", "ba-runs")]
    assert [r.name for r in tables[0].runs()] == ["suite-a-m1-base-s0", "suite-a-m1-tera-s0", "suite-a-m1-lora-s0"]
    base, trained = tables[1].runs()[0], tables[1].runs()[1]
    assert base.overrides("o")[4:7] == ["train.batch_size=8", "eval.limit=50", "train.max_steps=0"]
    assert trained.overrides("o")[-1] == "run_name=suite-b-m1-tera-s0"

    records = tmp_path / "ba-runs"
    _record(records, "suite-a-m1-base-s0", 0.455, 15_120, "tera", steps=0)  # TeRA's adapter, trained for no steps
    _record(records, "suite-a-m1-tera-s0", 0.45, 15_120, "tera")
    shown = markdown_rows(write_spec_table(tables[0], records, tmp_path / "ba_a"))
    cells = [(r["variant"], r["method"], r["A"], r["trainable params"]) for r in shown]
    assert cells == [
        ("base (no training)", "tera", "45.50 ± 0.00", "0"),  # nothing was trained
        ("trained", "tera", "45.00 ± 0.00", "15,120"),
        ("trained", "lora", "missing", "missing"),
    ]


def _check_tuned_table_renders(spec, scratch: Path) -> None:
    """A committed tuned table and its tuning report are what the protocol renders from the committed records."""
    from experiments.reproduce import tune_protocol

    scratch.mkdir()
    (scratch / "runs").symlink_to(RESULTS / "runs")  # the records, read in place; everything rendered lands here
    plans = tune_protocol.plan_table(spec)
    found = tune_protocol.cells(plans, RESULTS / "runs" / spec.tuned_records_dir)
    tune_protocol.render(spec, plans, found, scratch, [])
    for name in (f"{spec.tuned_out_name}.md", f"{spec.tuned_out_name}.csv", f"{spec.tuned_out_name}-tuning.md"):
        stale = f"results/{name} is stale: python -m experiments.reproduce {spec.name} --tune --render-only"
        assert (scratch / name).read_text() == (RESULTS / name).read_text(), stale


def test_committed_tables_are_what_the_code_renders_from_the_committed_records(tmp_path):
    """Every table in results/ whose records are committed re-renders byte for byte (tables are never typed)."""
    rendered = set()
    for name, smoke in DECLARED:
        for spec in load_tables(name, smoke=smoke):
            committed = RESULTS / f"{spec.out_name}.md"
            if not committed.exists():
                continue
            records = RESULTS / "runs" / spec.records_dir
            if not records.is_dir():  # a table that renders before any run (the paper's cells, ours "to run")
                records = tmp_path / "no-records"
                records.mkdir(exist_ok=True)
            write_spec_table(spec, records, tmp_path / spec.out_name)
            for suffix in (".md", ".csv"):
                fresh, kept = (tmp_path / spec.out_name).with_suffix(suffix), committed.with_suffix(suffix)
                stale = f"results/{kept.name} is stale: python -m experiments.reproduce {name} --render-only"
                assert fresh.read_text() == kept.read_text(), stale
            rendered.add(spec.out_name)
            tuned = RESULTS / f"{spec.tuned_out_name}.md"
            if spec.tune is not None and tuned.exists() and (RESULTS / "runs" / spec.tuned_records_dir).is_dir():
                _check_tuned_table_renders(spec, tmp_path / f"tuned-{spec.out_name}")
                rendered.add(spec.tuned_out_name)
    # Every results table has a spec; benchmark reports (efficiency, serving) and tuning reports are not tables.
    reports = ("efficiency", "serving")
    tables = {p.stem for p in RESULTS.glob("*.md") if not p.stem.startswith(reports) and not p.stem.endswith("-tuning")}
    assert tables == rendered

    # The decoder tables keep the numbers of their Makefile days: the base row is its own record and trains nothing.
    rows = markdown_rows((tmp_path / "decoder_smollm2.md").read_text())
    assert [(r["variant"], r["method"], r["average lm-eval acc"], r["trainable params"]) for r in rows] == [
        ("base (no training)", "tera-balanced", "45.50 ± 0.00", "0"),
        ("60 steps", "lora", "47.50 ± 0.00", "1,658,880"),
        ("60 steps, decoder_lr 5e-3", "tera-balanced", "45.17 ± 0.00", "15,120"),  # the rate its records were made at
    ]
    rates = markdown_rows((tmp_path / "decoder_smollm2_tera_lr_gsm8k.md").read_text())
    assert [(r["variant"], r["GSM8K flexible"]) for r in rates] == [
        ("decoder_lr=0.005", "4.00 ± 0.00"),
        ("decoder_lr=0.02", "2.00 ± 0.00"),
    ]
    sentiment = {r["method"]: r for r in markdown_rows((tmp_path / "sentiment_minilm.md").read_text())}
    assert len(sentiment) == 10 and sentiment["tera-balanced"]["test accuracy"] == "78.00 ± 1.93"
    assert sentiment["tera"]["test accuracy"] == "84.70 ± 0.61" and sentiment["tera"]["trainable params"] == "29,616"
    assert sentiment["full"]["median rank of dW"] == "full FT" and sentiment["full"]["trainable params"] == "22,713,986"


def test_records_keep_one_layer_spectrum_for_the_plots():
    from baselines import apply_method
    from experiments.records.write import adapter_fields

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


def test_properties_table_on_tiny_shapes(tmp_path):
    """Table 1's measurement on one tiny LLaMA layer (conf/model/tiny-llama's dimensions), then its rendering."""
    from experiments.reproduce.properties import measure, run_properties

    model = "tiny-llama-shapes"
    grid = {"model": [model], "method": ["tera", "lora", "vera"]}
    spec = parse_spec({"name": "t1", "kind": "properties", "title": "Properties", "grid": grid})
    run_properties([model], ["tera", "lora"], tmp_path)
    tera, lora = (
        json.loads((tmp_path / f"{naming.properties_name(m, model)}.json").read_text()) for m in grid["method"][:2]
    )
    # TeRA: full rank on every layer (q/up/down 64, k/v 32 wide) from a few hundred trained values, shared factors.
    assert [(layer["rank_bound"], layer["rank"]) for layer in tera["layers"]] == [
        (64, 64),
        (32, 32),
        (32, 32),
        (64, 64),
        (64, 64),
    ]
    assert tera["trainable_params"] == 2 * sum(layer["trainable"] for layer in tera["layers"])  # scaled to 2 layers
    assert tera["frozen_factor_values"] > 0 and tera["trainable_params"] < lora["trainable_params"] / 10
    assert {layer["rank"] for layer in lora["layers"]} == {8} and lora["frozen_factor_values"] == 0

    shown = markdown_rows(write_spec_table(spec, tmp_path, tmp_path / "t1"))
    assert [(r["method"], r["rank of dW (median)"], r["trainable params"]) for r in shown] == [
        ("tera", "64", f"{tera['trainable_params']:,}"),
        ("lora", "8", f"{lora['trainable_params']:,}"),
        ("vera", "", "missing"),
    ]
    assert "1 of 3 measurements have no record yet." in (tmp_path / "t1.md").read_text()

    real = measure("smollm2-135m-shapes", "tera")  # one layer of SmolLM2-135M's real dimensions: still cheap
    assert real["median_rank_bound"] == 576 and real["median_rank"] >= 0.9 * 576 and real["layers"][0]["rank"] >= 500
    # The paper's layout: per layer q 576 + (4+4+6+6), k and v 576 + (4+6+8), up and down 1536 + (4+4+6+6); times 30
    assert real["trainable_params"] == 30 * (596 + 2 * 594 + 2 * 1556) == 146_880


def test_reproduce_renders_only_from_existing_records(tmp_path, capsys):
    assert reproduce_main(["glue", "--smoke", "--render-only", "--results", str(tmp_path)]) == 0
    shown = markdown_rows((tmp_path / "glue-smoke.md").read_text())
    assert {r["method"]: r["Tweets"] for r in shown}["tera-balanced"] == "missing"
    assert "6 of 6 runs have no complete record yet." in (tmp_path / "glue-smoke.md").read_text()

    assert reproduce_main(["decoder_tera_lr", "--render-only", "--results", str(tmp_path)]) == 0
    for out, runs in (("decoder_smollm2_tera_lr", 3), ("decoder_smollm2_tera_lr_gsm8k", 2)):
        assert f"{runs} of {runs} runs have no complete record yet." in (tmp_path / f"{out}.md").read_text()

    capsys.readouterr()
    assert reproduce_main(["decoder_offline", "--dry-run", "--results", str(tmp_path)]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ run.py")]
    assert len(printed) == 6  # (base, LoRA trained, TeRA trained at its pinned rate) x (commonsense, GSM8K)
    assert "run_name=commonsense-offline-smollm2-135m-base-s${seed}" in printed[0]
    assert "method=tera-balanced " in printed[0]
    assert "method=lora " in printed[1] and f"output_dir={tmp_path}/runs/decoder-smollm2" in printed[1]
    assert "method=tera-balanced " in printed[2] and "method.decoder_lr=5e-3" in printed[2]


def test_table1_counts_the_whole_published_models_and_names_variants(tmp_path):
    """The percentage divides by the whole model, counted on the meta device (the paper's totals); a grid entry
    {name, method, peft} is a named variant; a record made with other targets is measured again."""
    from experiments.reproduce.properties import full_model_params, measure, method_spec, run_properties

    assert full_model_params("llama2-7b-shapes") == 6_738_415_616
    assert full_model_params("llama3-8b-shapes") == 8_030_261_248
    entry = {"name": "tera-output", "method": "tera", "peft": {"whole_side": "output"}}
    assert method_spec(entry)[:2] == ("tera-output", "tera") and method_spec(entry)[2]["whole_side"] == "output"

    model = "tiny-llama-shapes"  # 64 hidden, q 64x64, v 32x64 (2 key/value heads), 2 layers
    lora = measure(model, {"name": "lora-r4", "method": "lora", "peft": {"r": 4}}, ["q_proj", "v_proj"])
    trained = 2 * 4 * ((64 + 64) + (64 + 32))
    assert lora["trainable_params"] == trained and lora["targets"] == ["q_proj", "v_proj"]
    assert lora["trainable_percent"] == pytest.approx(100 * trained / (full_model_params(model) + trained))

    run_properties([model], ["lora"], tmp_path, {model: ["q_proj"]})
    first = json.loads((tmp_path / f"{naming.properties_name('lora', model)}.json").read_text())
    run_properties([model], ["lora"], tmp_path, {model: ["q_proj", "v_proj"]})  # other targets: measured again
    second = json.loads((tmp_path / f"{naming.properties_name('lora', model)}.json").read_text())
    assert first["targets"] == ["q_proj"] and second["targets"] == ["q_proj", "v_proj"]
    assert second["trainable_params"] > first["trainable_params"]


def test_paper_cells_render_beside_ours_with_the_difference(tmp_path):
    """A spec's paper section: three lines per model and method, the paper's, ours (or "to run"), and the difference;
    the paper's % beside ours (trained over the adapted model's parameters)."""
    paper = {"source": "a paper, Table 9", "values": {"m1": {"tera": {"%": 0.5, "A": 60.0}, "lora": {"A": 70.0}}}}
    spec = parse_spec(
        {
            "name": "t9",
            "title": "Against the paper",
            "grid": {"model": ["m1"], "task": ["suite/a"], "method": ["tera", "lora"], "seed": [0, 1]},
            "columns": [{"metric": "test_accuracy", "label": "A"}],
            "paper": paper,
        }
    )
    for seed, accuracy in ((0, 0.62), (1, 0.64)):
        _record(tmp_path, f"tera-suite-a-m1-s{seed}", accuracy, 50, "tera", seed=seed)
    for path in tmp_path.glob("tera-*.json"):
        path.write_text(json.dumps(json.loads(path.read_text()) | {"total_params": 10_000}))
    text = write_spec_table(spec, tmp_path, tmp_path / "t9")
    section = text.split("## Beside the paper")[1]
    lines = {(r["method"], r[""]): r for r in markdown_rows(section)}
    assert (lines[("tera", "paper")]["%"], lines[("tera", "paper")]["A"]) == ("0.5000", "60.00")
    assert (lines[("tera", "ours")]["%"], lines[("tera", "ours")]["A"]) == ("0.5000", "63.00 ± 1.41")
    assert lines[("tera", "ours - paper")]["A"] == "+3.00" and lines[("tera", "ours - paper")]["%"] == "+0.0000"
    assert lines[("lora", "ours")]["A"] == "to run" and lines[("lora", "ours - paper")]["A"] == ""
    assert "ours minus the paper's A: mean +3.00 over 1 rows" in section and "Paper: a paper, Table 9" in section
    with pytest.raises(SpecError, match="paper values of m1 tera map column labels to numbers"):
        parse_spec(
            {
                "name": "t9",
                "title": "x",
                "grid": spec.grid,
                "columns": [{"metric": "test_accuracy", "label": "A"}],
                "paper": {"source": "s", "values": {"m1": {"tera": {"A": "sixty"}}}},
            }
        )


def test_a_tables_plot_shows_its_average_not_whatever_column_comes_last():
    """Table 3 ends on "empty" (responses cut to nothing) and Table 2 on lm-eval's second reading: both plot Avg."""
    from experiments.tables.paper import main_label

    for name in ("table2", "table3"):
        for smoke in (False, True):
            assert main_label(load_tables(name, smoke=smoke)[0]) == "Avg"
    assert main_label(parse_spec(SPEC)) == "Avg."
