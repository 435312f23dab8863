"""The paper's figures as specs (figure3-6): the exact trained counts of Figure 4's x axis, runs shared between
figures and tables, the per-layer rank frame and plots, and the figure section rendered beside the paper's points."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import get_peft_model
from transformers import LlamaForCausalLM

from experiments.reproduce.properties import SHAPES, _llama_config
from experiments.tables.figures import layer_rank_frame, tera_trained_count, variant_peft
from experiments.tables.paper import write_spec_table
from experiments.tables.specs import SpecError, load_tables
from tera import TeraConfig
from tests.experiments.tables.test_tables import markdown_rows

PAPER_COUNTS = [263_680, 263_680, 264_192, 265_216, 270_336, 11_264, 6_144, 5_120]


def test_figure4_trained_counts_are_the_papers_x_positions():
    [spec] = load_tables("figure4")
    counts = [
        tera_trained_count("llama2-7b-shapes", ["q_proj", "v_proj"], variant_peft(spec, v.overrides))
        for v in spec.variants
    ]
    assert counts == PAPER_COUNTS
    points = spec.figure["paper"]["points"]
    assert [points[v.label]["trained"] for v in spec.variants] == PAPER_COUNTS


@pytest.mark.parametrize(
    "peft",
    [
        {"mode_size": 2},
        {"mode_size": 8, "whole_side": "output"},
        {"tensor_shape": {"64x64": [[4, 16], [8, 8]], "32x64": [[4, 8], [64]]}},
        {"layout": "balanced"},
    ],
)
def test_counts_from_the_tensor_plans_equal_a_built_adapters_trainable_values(peft):
    config = _llama_config("tiny-llama-shapes", SHAPES["tiny-llama-shapes"]["layers"], 64)  # Table 1's builder
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config), TeraConfig(target_modules=["q_proj", "v_proj"], **peft))
    built = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert tera_trained_count("tiny-llama-shapes", ["q_proj", "v_proj"], peft) == built


def test_figures_reuse_the_runs_of_the_table_or_figure_they_are_drawn_from():
    for smoke in (False, True):
        [figure4] = load_tables("figure4", smoke=smoke)
        figure4_runs = {run.name: tuple(run.overrides("")) for run in figure4.runs()}
        [figure5] = load_tables("figure5", smoke=smoke)
        assert figure5.records_dir == figure4.records_dir
        assert {run.name: tuple(run.overrides("")) for run in figure5.runs()} == figure4_runs
        [figure6] = load_tables("figure6", smoke=smoke)
        random = [run for run in figure6.runs() if run.variant.label.endswith("random")]
        assert len(random) == 2 and all(figure4_runs[run.name] == tuple(run.overrides("")) for run in random)
        assert all(
            "method.peft.factor_init=identity" in run.overrides("")
            for run in figure6.runs()
            if run.variant.label.endswith("identity")
        )
        table2 = {run.name: tuple(run.overrides("")) for run in load_tables("table2", smoke=smoke)[0].runs()}
        [figure3] = load_tables("figure3", smoke=smoke)
        assert figure3.records_dir == load_tables("table2", smoke=smoke)[0].records_dir
        assert all(table2[run.name] == tuple(run.overrides("")) for run in figure3.runs())
        assert "prompt-tuning" not in figure3.grid["method"]  # no dW to draw


def _record(folder: Path, name: str, variant_piece: str, ranks: dict[str, list[int]], accuracy: float) -> None:
    layers = [
        {
            "name": f"model.layers.{i}.self_attn.{module}",
            "d_out": 64 if module == "q_proj" else 32,
            "d_in": 64,
            "rank": rank,
            "rank_bound": 64 if module == "q_proj" else 32,
            "tolerance": 1e-6,
            "method": "tera",
        }
        for module, values in ranks.items()
        for i, rank in enumerate(values)
    ]
    record = {
        "complete": True,
        "run_name": name,
        "config": {"variant": variant_piece},
        "model": "m",
        "task": "suite/a",
        "method": "tera",
        "seed": 0,
        "steps": 10,
        "final_metrics": {"test_accuracy": accuracy},
        "trainable_params": 160,
        "median_rank": 60,
        "layers": layers,
        "environment": {"date": "2026-12-05T00:00:00", "device": "CPU", "versions": {"torch": "2"}},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record))


def _figure_spec(folder: Path, plot: str, **figure) -> None:
    spec = {
        "name": "fig",
        "title": "A figure",
        "grid": {"model": ["m"], "task": ["suite/a"], "method": ["tera"], "seed": [0]},
        "variants": [{"label": "(8, 8)", "name": "a"}, {"label": "(64)", "name": "b"}],
        "columns": [{"metric": "test_accuracy", "label": "Acc"}],
        "figure": {"plot": plot, **figure},
    }
    (folder / "fig.yaml").write_text(yaml.safe_dump(spec))


def test_rank_and_accuracy_figures_render_with_plots_csv_and_the_papers_points(tmp_path):
    records = tmp_path / "runs"
    _record(records, "tera-suite-a-m-s0-a", "a", {"q_proj": [64, 63, 64], "v_proj": [32, 32, 30]}, 0.7)
    _record(records, "tera-suite-a-m-s0-b", "b", {"q_proj": [60, 61, 62], "v_proj": [31, 32, 32]}, 0.6)
    _figure_spec(tmp_path, "layer-ranks", modules=["q_proj", "v_proj"])
    [spec] = load_tables("fig", folder=tmp_path)
    markdown = write_spec_table(spec, records, tmp_path / "out" / "fig")
    frame = (tmp_path / "out" / "fig-ranks.csv").read_text().splitlines()
    assert frame[0] == "series,module,layer,rank,full rank,rank bound,tolerance" and len(frame) == 1 + 12
    summary = markdown_rows(markdown.split("## The figure")[1])
    assert {(r["series"], r["module"]): r["rank min / median / max"] for r in summary}[("(8, 8)", "v_proj")] == (
        "30 / 32 / 32"
    )
    assert "float64 SVD" in markdown
    assert (tmp_path / "out" / "plots" / "fig.png").stat().st_size > 1000

    paper = {"source": "a paper's figure", "points": {"(8, 8)": {"trained": 160, "Acc": 72.5}}}
    _figure_spec(tmp_path, "accuracy-vs-trained", column="Acc", paper=paper)
    [spec] = load_tables("fig", folder=tmp_path)
    markdown = write_spec_table(spec, records, tmp_path / "out2" / "fig")
    [first, _] = markdown_rows(markdown.split("## The figure")[1])
    assert (first["setting"], first["ours"], first["paper (read off)"], first["ours - paper"]) == (
        "(8, 8)",
        "70.00",
        "72.50",
        "-2.50",
    )
    assert "Paper's points: a paper's figure" in markdown and (tmp_path / "out2" / "plots" / "fig.png").exists()

    _figure_spec(tmp_path, "task-bars", paper=paper)
    [spec] = load_tables("fig", folder=tmp_path)
    assert "72.50" in write_spec_table(spec, records, tmp_path / "out3" / "fig")


def test_layer_rank_frame_reads_the_layer_index_and_skips_other_modules():
    record = {
        "layers": [
            {"name": "model.layers.12.self_attn.q_proj", "d_out": 8, "d_in": 4, "rank": 4},
            {"name": "model.layers.12.mlp.up_proj", "d_out": 8, "d_in": 4, "rank": 4},
            {"name": "model.layers.3.self_attn.v_proj", "d_out": 2, "d_in": 4, "rank": None},  # prompt methods
        ]
    }
    frame = layer_rank_frame([("lora", record)], ["q_proj", "v_proj"])
    assert frame[["layer", "rank", "full rank"]].values.tolist() == [[12, 4, 4]]


def test_figure_spec_errors_are_one_sentence(tmp_path):
    _figure_spec(tmp_path, "pie")
    with pytest.raises(SpecError, match="figure takes plot"):
        load_tables("fig", folder=tmp_path)
    _figure_spec(tmp_path, "accuracy-vs-trained", paper={"source": "s", "points": {"(4, 4)": {"Acc": 1.0}}})
    with pytest.raises(SpecError, match=r"names variants the spec lacks: \(4, 4\)"):
        load_tables("fig", folder=tmp_path)
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"extends": "b", "name": "a"}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"extends": "a", "name": "b"}))
    with pytest.raises(SpecError, match="extends a, which extends it again"):
        load_tables("a", folder=tmp_path)
