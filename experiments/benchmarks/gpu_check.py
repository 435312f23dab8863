"""One GPU check, ready to run in the few minutes a GPU machine is lent: ``make gpu-check`` (<= 10 min on an H200).

Sections, each reported even when another fails:

1. ``paths``: TeRA's factorised and merged paths on the device in float32 and bfloat16 (forward output, input
   gradient, lambda gradients) against the float64 CPU reference (:mod:`tera.reference`): the paper's whole-side
   layout at LLaMA-2-7B's q/v (4096 x 4096) and LLaMA-3-8B's v (1024 x 4096), the balanced layout at 4096 x 4096 and
   11008 x 4096.
2. ``efficiency``: the efficiency report at LLaMA-2-7B shapes, every method on q and v (``conf/bench/llama2-7b.yaml``:
   base, LoRA r32, VeRA, full FT, TeRA in the paper's layout auto / merged / factorised, core I/2, the balanced
   layout and the other methods), timed round-robin.
3. ``train``: one short real training run through ``run.py`` on the device, bf16 autocast and gradient checkpointing,
   on a decoder (``model=tiny-llama``, ``task=custom/math``) and on an encoder (``model=tiny``,
   ``task=custom/classification``), on small generated data files.
4. ``serving``: the serving benchmark at LLaMA-2-7B shapes (``conf/bench/serving-llama2-7b.yaml`` with its
   ``gpu_check`` overrides: few rounds, up to 1024 resident adapters; about two minutes): TeRA and LoRA r32 with
   batches mixing k distinct adapters through ``adapter_names=``, resident adapters, load time, the serving goals.

The GPU machine has torch, transformers and peft but not Hydra, pydantic, W&B or datasets, and cannot reach the
network: ``make gpu-check-prepare`` (here, with PyPI) puts the wheels ``run.py`` needs and the two tokenizers into
``.gpu-check/`` (ignored by git; ``carry`` it), and ``make gpu-check`` installs those wheels into a scratch folder
first.  Anything still missing skips its section with one line that says what is missing.

Everything lands in ``results/gpu-check/`` (``report.md``, ``gpu-check.json``, the efficiency record and report) and,
when ``$OUT`` is set (the device tool), is copied there flat.  ``--tiny`` runs the same sections at tiny shapes on any
device in about a minute: that is what the test suite runs on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from experiments.benchmarks.efficiency.goals import targets
from experiments.benchmarks.efficiency.presets import load_preset
from experiments.benchmarks.efficiency.run import run_all
from experiments.benchmarks.efficiency.workers import child_env
from experiments.benchmarks.serving import for_gpu_check, load_serving_preset
from experiments.benchmarks.serving import run_all as run_serving_all
from experiments.benchmarks.serving import targets as serving_targets

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / ".gpu-check"  # made by --prepare: wheels/ and tokenizers/{minilm,smollm2}
# What run.py needs beyond torch, transformers and peft (pinned to what pyproject.toml installs here).
RUN_WHEELS = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "pydantic", "pydantic-core", "annotated-types")
RUN_WHEELS += ("typing-inspection",)
RUN_MODULES = ("hydra", "omegaconf", "pydantic")
# (d_out, d_in, layout): the paper's whole-side layout where the paper adapts (q, v), the balanced one beside it.
FULL_SHAPES = [(4096, 4096, "whole-side"), (1024, 4096, "whole-side")]
FULL_SHAPES += [(4096, 4096, "balanced"), (11008, 4096, "balanced")]
TINY_SHAPES = [(12, 12, "whole-side"), (24, 12, "whole-side"), (12, 30, "balanced")]
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}  # relative error, norm-wise, against float64


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).norm() / want.norm().clamp_min(1e-300))


def check_paths(device: str, shapes: list[tuple[int, int, str]], tokens: int) -> list[dict[str, Any]]:
    """Forward output, input gradient and lambda gradients of both paths, per dtype, against float64 on the CPU."""
    from tera.contraction import factorised_delta, merged_linear
    from tera.factors import generate_factors
    from tera.reference import reference_linear
    from tera.tensorize import plan_for_weight

    rows = []
    for d_out, d_in, layout in shapes:
        plan = plan_for_weight(d_out, d_in, layout=layout)
        shared = generate_factors(plan, prng_key=0)
        gen = torch.Generator().manual_seed(0)
        lambdas = [torch.rand(n, generator=gen, dtype=torch.float64) + 0.5 for n in plan.ranks]
        weight = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) / d_in**0.5
        x = torch.randn(tokens, d_in, generator=gen, dtype=torch.float64)
        upstream = torch.randn(tokens, d_out, generator=gen, dtype=torch.float64)
        core, factors = shared.core.double(), [f.double() for f in shared.factors]
        start = time.perf_counter()
        x_ref = x.clone().requires_grad_(True)
        lam_ref = [lam.clone().requires_grad_(True) for lam in lambdas]
        out_ref = reference_linear(x_ref, weight, None, plan, core, factors, lam_ref, "rank", 1.0)
        grads_ref = torch.autograd.grad(out_ref, [x_ref, *lam_ref], upstream)
        reference_s = time.perf_counter() - start
        for dtype in (torch.float32, torch.bfloat16):
            cast = dict(device=device, dtype=dtype)
            d_core, d_factors = core.to(**cast), [f.to(**cast) for f in factors]
            d_weight, d_up = weight.to(**cast), upstream.to(**cast)
            for path in ("factorised", "merged"):
                d_x = x.to(**cast).requires_grad_(True)
                d_lam = [lam.to(device=device, dtype=torch.float32).requires_grad_(True) for lam in lambdas]
                if path == "merged":
                    out = merged_linear(plan, d_x, d_weight, None, d_core, d_factors, d_lam, "rank", 1.0)
                else:
                    out = d_x @ d_weight.t() + factorised_delta(plan, d_x, d_core, d_factors, d_lam, "rank", 1.0)
                grads = torch.autograd.grad(out, [d_x, *d_lam], d_up)
                errors = {
                    "output": _relative_error(out, out_ref),
                    "input_grad": _relative_error(grads[0], grads_ref[0]),
                    "lambda_grads": _relative_error(torch.cat(grads[1:]), torch.cat(grads_ref[1:])),
                }
                rows.append(
                    {
                        "shape": f"{d_out}x{d_in}",
                        "layout": layout,
                        "modes": f"{plan.out_modes} x {plan.in_modes}",
                        "tokens": tokens,
                        "dtype": str(dtype).split(".")[-1],
                        "path": path,
                        "errors": errors,
                        "tolerance": TOLERANCE[dtype],
                        "ok": max(errors.values()) <= TOLERANCE[dtype],
                        "reference_s": reference_s,
                    }
                )
    return rows


def _write_training_data(folder: Path) -> dict[str, Path]:
    """Small generated files: sentiment-like sentences for the encoder, two-number sums for the decoder."""
    import random

    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    good, bad = ["great", "lovely", "superb", "fine"], ["awful", "poor", "dreadful", "bad"]
    lines = ["text,label"]
    for i in range(240):
        label = i % 2
        words = rng.choice(good if label else bad), rng.choice(["film", "meal", "trip", "book"])
        lines.append(f"a {words[0]} {words[1]} number {i},{'positive' if label else 'negative'}")
    (folder / "sentiment.csv").write_text("\n".join(lines) + "\n")
    rows = []
    for _ in range(160):
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        rows.append({"question": f"What is {a} plus {b}?", "answer": a + b, "solution": f"{a} + {b} = {a + b}."})
    (folder / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"encoder": folder / "sentiment.csv", "decoder": folder / "sums.jsonl"}


def training_commands(device: str, data: dict[str, Path], output: Path, tiny: bool) -> dict[str, list[str]]:
    steps = "4" if tiny else "30"
    common = ["method=tera", f"device={device}", "train.precision=bf16", "train.gradient_checkpointing=true"]
    common += [f"train.max_steps={steps}", "train.batch_size=8", "logger=none", f"output_dir={output}"]
    tokenizers = CARRY / "tokenizers"
    commands = {
        "decoder": [
            "model=tiny-llama",
            "task=custom/math",
            f"task.data_files={{train: {data['decoder']}}}",
            "eval.limit=8",
            "eval.protocol=llm-adapters",  # generation: lm-eval is not installed on the GPU machine
            *common,
        ],
        "encoder": [
            "model=tiny",
            "task=custom/classification",
            f"task.data_files={{train: {data['encoder']}}}",
            "train.max_eval_examples=64",
            *common,
        ],
    }
    for kind, name in (("decoder", "smollm2"), ("encoder", "minilm")):
        if (tokenizers / name).is_dir():  # on the GPU machine the installed models are missing: carried tokenizer
            commands[kind].append(f"model.path={tokenizers / name}")
    return {kind: [sys.executable, "run.py", *args] for kind, args in commands.items()}


def run_training(device: str, work: Path, tiny: bool) -> list[dict[str, Any]]:
    missing = [name for name in RUN_MODULES if _missing(name)]
    if missing:
        reason = (
            f"run.py needs {', '.join(missing)}, not installed here; run `make gpu-check-prepare` where PyPI is "
            "reachable and carry .gpu-check"
        )
        return [{"model": kind, "skipped": reason} for kind in ("decoder", "encoder")]
    data = _write_training_data(work / "data")
    rows = []
    for kind, command in training_commands(device, data, work / "runs", tiny).items():
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=child_env())
        wall = time.perf_counter() - start
        records = sorted((work / "runs").glob(f"tera-*{'tiny-llama' if kind == 'decoder' else 'tiny-s'}*.json"))
        record = json.loads(records[-1].read_text()) if records else {}
        rows.append(
            {
                "model": kind,
                "command": " ".join(command[1:]),
                "exit": proc.returncode,
                "wall_s": wall,
                "status": record.get("status") or ("complete" if record.get("complete") else None),
                "train_seconds": record.get("train_seconds"),
                "metrics": {k: v for k, v in (record.get("final_metrics") or {}).items() if isinstance(v, int | float)},
                "loss_first": record.get("loss_first"),
                "loss_last": record.get("loss_last_20"),
                "peak_memory_gib": record.get("peak_memory_gib"),
                "device": (record.get("environment") or {}).get("device"),
                "output_tail": (proc.stdout + proc.stderr)[-1500:],
            }
        )
    return rows


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def run_efficiency(tiny: bool, out: Path) -> dict[str, Any]:
    preset = load_preset("tiny" if tiny else "llama2-7b")
    report = out / f"efficiency-{preset['name']}.md"
    record = run_all(preset, out, report)
    return {"report": str(report.relative_to(ROOT) if report.is_relative_to(ROOT) else report), "record": record}


def run_serving(tiny: bool, out: Path) -> dict[str, Any]:
    """The serving benchmark with the preset's GPU-check overrides; its record, report and plot land in ``out``."""
    preset = for_gpu_check(load_serving_preset("serving-tiny" if tiny else "serving-llama2-7b"))
    report = out / f"{preset['name']}.md"
    record = run_serving_all(preset, out, report, out / f"{preset['name']}.png")
    return {"report": str(report.relative_to(ROOT) if report.is_relative_to(ROOT) else report), "record": record}


def _render_serving(serving: Any) -> list[str]:
    """The serving section: where the full report is, the mixed-batch check per method, and the goals."""
    lines = ["", "## Serving many adapters", ""]
    if not isinstance(serving, dict):
        return [*lines, f"Failed: {serving}"]
    lines += [f"The full report: `{serving['report']}`.", ""]
    for row in serving["record"]["rows"]:
        check = row.get("check")
        if "error" in row:
            lines.append(f"- {row['method']}: failed: {row['error']}")
        elif check:
            lines.append(
                f"- {row['method']}: mixed batch = each adapter alone: {'yes' if check['ok'] else 'NO'} (relative "
                f"error {check['max_rel_diff']:.1e}, tolerance {check['tolerance']:g}); "
                f"{row['resident_reached']} adapters resident at the end"
            )
    goals = serving_targets(serving["record"])
    return [*lines, "", "### Serving targets", *goals[1:]] if goals else lines


def render(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "# GPU check",
        "",
        f"Device: {env['device']}; date {env['date']}; torch {env['versions']['torch']}, transformers "
        f"{env['versions']['transformers']}, peft {env['versions']['peft']}; {result['mode']} shapes; "
        f"{result['wall_s']:.0f} s in all. Written by `experiments/benchmarks/gpu_check.py`.",
        "",
        "## TeRA's paths against the float64 CPU reference",
        "",
    ]
    paths = result["sections"].get("paths")
    if isinstance(paths, list):
        lines += [
            "Relative error (norm of the difference over the norm of the reference), rank-side diagonals, full core.",
            "",
            "| shape | layout (modes) | tokens | dtype | path | output | input grad | lambda grads | tolerance | ok |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in paths:
            e = r["errors"]
            lines.append(
                f"| {r['shape']} | {r.get('layout', 'balanced')} ({r.get('modes', '')}) | {r['tokens']} | "
                f"{r['dtype']} | {r['path']} | {e['output']:.1e} | "
                f"{e['input_grad']:.1e} | {e['lambda_grads']:.1e} | {r['tolerance']:g} | {'yes' if r['ok'] else 'NO'} |"
            )
    else:
        lines.append(f"Failed: {paths}")
    lines += ["", "## Efficiency", ""]
    eff = result["sections"].get("efficiency")
    if isinstance(eff, dict):
        lines.append(f"The full report: `{eff['report']}`.")
        lines += ["", *targets(eff["record"])]
    else:
        lines.append(f"Failed: {eff}")
    lines += ["", "## Training through run.py (bf16 autocast, gradient checkpointing)", ""]
    train = result["sections"].get("train")
    if isinstance(train, list):
        lines += [
            "| model | exit | status | train s | loss first -> last | peak GiB | metrics | command |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in train:
            if "skipped" in r:
                lines.append(f"| {r['model']} | skipped: {r['skipped']} | | | | | | |")
                continue
            metrics = ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items())
            seconds = "-" if r["train_seconds"] is None else f"{r['train_seconds']:.1f}"
            loss = "-" if r["loss_first"] is None else f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}"
            peak = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
            lines.append(
                f"| {r['model']} | {r['exit']} | {r['status'] or '-'} | {seconds} | {loss} | {peak} | "
                f"{metrics or '-'} | `{r['command']}` |"
            )
    else:
        lines.append(f"Failed: {train}")
    if "serving" in result["sections"]:  # results from before the section existed render as they did
        lines += _render_serving(result["sections"]["serving"])
    return "\n".join(lines) + "\n"


def _section(name: str, fn, *args) -> Any:
    print(f"== {name} ==", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        value = fn(*args)
    except Exception as error:  # noqa: BLE001 - one failing section must not hide the others' figures
        traceback.print_exc()
        value = f"{type(error).__name__}: {error}"[:500]
    print(f"== {name}: {time.perf_counter() - start:.0f} s ==", file=sys.stderr, flush=True)
    return value


def check(device: str, tiny: bool, out: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from experiments.records.write import environment, write_json_atomic

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    sections: dict[str, Any] = {}
    shapes, tokens = (TINY_SHAPES, 16) if tiny else (FULL_SHAPES, 512)
    result = {"mode": "tiny" if tiny else "LLaMA-2-7B", "environment": environment(device), "sections": sections}
    steps = [
        ("paths", lambda: _section("paths", check_paths, device, shapes, tokens)),
        ("train", lambda: _section("train", run_training, device, work, tiny)),
        ("efficiency", lambda: _section("efficiency", run_efficiency, tiny, out)),
        ("serving", lambda: _section("serving", run_serving, tiny, out)),
    ]
    for name, step in steps:
        sections[name] = step()
        # Written after every section, so a machine taken back mid-check still returns what was measured.
        result["wall_s"] = time.perf_counter() - start
        write_json_atomic(out / "gpu-check.json", result)
        (out / "report.md").write_text(render(result))
        if os.environ.get("OUT"):  # the device tool brings back what lands in $OUT (flat, few files)
            for path in sorted(out.glob("*")):
                if path.is_file():
                    shutil.copy2(path, Path(os.environ["OUT"]) / path.name)
    shutil.rmtree(work, ignore_errors=True)
    return result


def prepare() -> int:
    """Here, with PyPI: the wheels run.py needs on the GPU machine (CPython 3.12, manylinux) and the two tokenizers."""
    from importlib import metadata

    sys.path.insert(0, str(ROOT))
    from experiments.models.decoders import smollm2_path
    from experiments.models.encoders import minilm_path

    wheels = CARRY / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pins = {name: f"{name}=={metadata.version(name)}" for name in RUN_WHEELS}
    # antlr4's 4.9.3 runtime (what omegaconf 2.3 needs) is published as source only: build its pure-Python wheel here.
    sdist_only = [pins.pop("antlr4-python3-runtime")]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), *sdist_only], check=True
    )
    platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 27, 28)] + ["--platform=manylinux2014_x86_64"]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version=3.12", "--implementation=cp", *platforms, "-d", str(wheels), *pins.values()]
    subprocess.run(command, check=True)
    for name, source in (("minilm", minilm_path()), ("smollm2", smollm2_path())):
        target = CARRY / "tokenizers" / name
        target.mkdir(parents=True, exist_ok=True)
        for path in source.iterdir():
            if path.is_file() and ("token" in path.name or path.name in ("vocab.txt", "special_tokens_map.json")):
                shutil.copy2(path, target / path.name)
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(f"{CARRY} holds {size / 2**20:.1f} MiB: carry it to the GPU machine (device tool: carry=['.gpu-check']).")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (seconds; what the tests run)")
    parser.add_argument("--device", default=None, help="default: cuda when there is one, else refuse (or --tiny)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gpu-check")
    parser.add_argument("--prepare", action="store_true", help="fetch the wheels and tokenizers to carry (needs PyPI)")
    args = parser.parse_args(argv)
    if args.prepare:
        return prepare()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not args.tiny:
        print("error: no CUDA GPU here; the GPU check needs one (use --tiny to try the script on this CPU).")
        return 2
    result = check(device, args.tiny, args.out)
    print((args.out / "report.md").read_text())
    failed = [name for name, value in result["sections"].items() if isinstance(value, str)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
