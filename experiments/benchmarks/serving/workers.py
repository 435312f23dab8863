"""The serving benchmark's method processes, on the efficiency benchmark's protocol (one JSON command per line on
stdin, one JSON reply per line on stdout; :mod:`experiments.benchmarks.efficiency.workers`).

``worker`` is the child's side (``python -m experiments.benchmarks.serving --preset-file F --worker NAME``),
``ServingWorker`` the parent's handle on one child.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from experiments.benchmarks.efficiency.presets import ROOT
from experiments.benchmarks.efficiency.workers import Worker
from experiments.benchmarks.serving.measure import ServingBench
from experiments.benchmarks.serving.presets import entry_named

MODULE = "experiments.benchmarks.serving"


def worker(preset: dict[str, Any], name: str) -> int:
    """Child-process mode: build one method's model, then obey JSON commands on stdin.

    ``{"grow": n, "forced": bool}`` adds adapters up to n (the sweep's checkpoints on the way); ``{"check": true}``
    runs the mixed-batch check; ``{"infer": "prefill"|"decode", "k": k}`` replies the seconds of one call;
    ``{"finish": true}`` replies the row and ends.  Nothing else is written to stdout.
    """
    reply = sys.stdout
    sys.stdout = sys.stderr  # stray prints of libraries must not break the protocol

    def say(message: dict[str, Any]) -> None:
        print(json.dumps(message), file=reply, flush=True)

    try:
        bench = ServingBench(preset, entry_named(preset, name))
    except Exception as error:  # noqa: BLE001 - reported as this method's row, the others go on
        say({"error": f"{type(error).__name__}: {error}"[:300]})
        return 1
    say({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        try:
            if "grow" in command:
                say({"resident": bench.grow(command["grow"], command.get("forced", False))})
            elif command.get("check"):
                bench.check()
                say({"ok": True})
            elif "infer" in command:
                say({"s": bench.infer(command["infer"], command.get("k"))})
            elif command.get("finish"):
                say({"row": bench.finish()})
                return 0
        except Exception as error:  # noqa: BLE001 - this method fails, the others go on
            traceback.print_exc()  # into the method's log
            say({"error": f"{type(error).__name__}: {error}"[:300]})
            return 1
    return 0


class ServingWorker(Worker):
    """A method's serving process; reading, asking and closing as for the efficiency benchmark's workers."""

    def __init__(self, name: str, preset_file: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = (log_dir / f"{name}.log").open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, "--preset-file", preset_file, "--worker", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=ROOT,
        )
