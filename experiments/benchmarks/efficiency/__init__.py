"""What each method costs to train, store and serve, side by side in one run (``make bench``; the command line is
:mod:`experiments.benchmarks.efficiency.cli`).

Each method lives in its own process for the whole run (clean peak-memory counters) and the parent times them
round-robin: after a warm-up, every round runs each method in turn (order rotated by one per round), one untimed step
then ``steps`` timed ones.  A method's step time is the median of its timed steps; its ratio to LoRA is the median over
rounds of the per-round ratio, reported with its interquartile range, so slow drifts of the machine hit every method
alike.  The report says when other processes used the cores during the rounds (from /proc/stat) or when a ratio's
spread is too wide to trust.  Then, one method at a time: peak memory, trainable parameters, optimizer-state bytes,
adapter file size (as saved, and with the shared frozen factors added), merge time, and inference unmerged and merged:
prefill of a batch and per-token decode with a KV cache.  For TeRA it also lists which path ``forward_path=auto``
chose per kind of call, and compares auto with the forced paths.  Models are built from a config with random weights
(honest for cost, not accuracy).  Needs torch, transformers, peft and PyYAML (a transformers dependency), nothing from
the network.

Modules, one job each:

- ``presets``: the presets in ``conf/bench/*.yaml`` and the method entries in them;
- ``measure``: one method's figures in the process that holds its model (``measure`` runs them all in a row);
- ``workers``: the per-method processes and the JSON-lines protocol between them and the parent;
- ``rounds``: the interleaved training and inference rounds, ratios per round and their spread, the machine's load;
- ``run``: one benchmark run from start to the written record and report (``run_all``);
- ``goals``: the goals of full-rank TeRA, read from the presets' ``goals:``, checked on a record (``targets``);
- ``report``: the Markdown report of a record (``render``);
- ``cli``: the command line.
"""

from experiments.benchmarks.efficiency.cli import main
from experiments.benchmarks.efficiency.goals import targets
from experiments.benchmarks.efficiency.presets import load_preset, method_spec
from experiments.benchmarks.efficiency.report import render
from experiments.benchmarks.efficiency.run import default_report, run_all

# The entry points the rest of the suite uses (bench.py: default_report, run_all); no name here hides a submodule.
__all__ = ["default_report", "load_preset", "main", "method_spec", "render", "run_all", "targets"]
