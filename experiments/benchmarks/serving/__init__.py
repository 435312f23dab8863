"""What serving many adapters costs, TeRA against LoRA r=32 and the base model (``make bench-serving``; the command
line is :mod:`experiments.benchmarks.serving.cli`).

Per method, each in its own process as in the efficiency benchmark (:mod:`experiments.benchmarks.efficiency`):

- resident adapters: added one by one with PEFT's ``add_adapter`` up to the preset's largest count, within an adding
  budget; at each checkpoint the bytes of each adapter's own tensors (shared frozen tensors counted once), the
  mixed-batch cache per adapter, PEFT's ``load_adapter`` time of one saved adapter, and one decode;
- batches mixing k distinct adapters through PEFT's ``adapter_names=`` (and the first adapter merged, the
  single-tenant reference): prefill and per-token decode timed round-robin, each call paired with the base model's,
  ratios per round with their interquartile range;
- a check inside the benchmark that a mixed batch gives every row what its adapter gives alone.

Modules, one job each:

- ``presets``: the presets in ``conf/bench/serving-*.yaml``, checked before anything runs;
- ``adapters``: what resident adapters hold, read off any PEFT model;
- ``check``: the mixed-batch correctness check;
- ``measure``: one method's model, adapters and timed calls in its process (``ServingBench``);
- ``workers``: the per-method processes (the efficiency benchmark's protocol);
- ``rounds``: the interleaved rounds and their figures;
- ``run``: one benchmark run from start to the written record, report and plot (``run_all``);
- ``goals``: the serving goals of issue 29, read from the presets, checked on a record (``targets``);
- ``report`` and ``plot``: the Markdown report and the PNG of a record;
- ``cli``: the command line.
"""

from experiments.benchmarks.serving.cli import main
from experiments.benchmarks.serving.goals import targets
from experiments.benchmarks.serving.presets import default_paths, for_gpu_check, load_serving_preset
from experiments.benchmarks.serving.report import render
from experiments.benchmarks.serving.run import run_all

__all__ = ["default_paths", "for_gpu_check", "load_serving_preset", "main", "render", "run_all", "targets"]
