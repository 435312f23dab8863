"""The method processes: each method lives in its own process for the whole run (clean peak-memory counters), driven
by the parent with one JSON command per line on stdin and one JSON reply per line on stdout.

``worker`` is the child's side (``python -m experiments.benchmarks.efficiency --preset-file F --worker NAME``),
``Worker`` the parent's handle on one child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments.benchmarks.efficiency.measure import MethodBench
from experiments.benchmarks.efficiency.presets import ROOT, preset_entry


def worker(preset: dict[str, Any], name: str) -> int:
    """Child-process mode: build one method, then obey JSON commands on stdin, one JSON reply per line on stdout.

    ``{"steps": n}`` runs n timed train steps and replies their seconds; ``{"figures": true}`` takes the training
    figures (memory, storage); ``{"infer": "prefill"|"decode"}`` replies the seconds of one; ``{"merge": true}`` folds
    the adapter in; ``{"finish": true}`` replies the row and ends.  Nothing else is written to stdout.
    """
    entry = preset_entry(preset, name)
    reply = sys.stdout
    sys.stdout = sys.stderr  # stray prints of libraries must not break the protocol
    try:
        bench = MethodBench(preset, entry)
    except Exception as error:  # noqa: BLE001 - reported as this method's row, the others go on
        print(json.dumps({"error": f"{type(error).__name__}: {error}"[:300]}), file=reply, flush=True)
        return 1
    print(json.dumps({"ready": True}), file=reply, flush=True)
    times: list[float] = []
    for line in sys.stdin:
        command = json.loads(line)
        if "steps" in command:
            new = bench.train_steps(command["steps"])
            bench.release_cache()
            if command.get("timed", True):
                times += new
            print(json.dumps({"times": new}), file=reply, flush=True)
        elif command.get("figures"):
            bench.training_figures(times)
            print(json.dumps({"ok": True}), file=reply, flush=True)
        elif "infer" in command:
            print(json.dumps({"s": bench.infer(command["infer"])}), file=reply, flush=True)
        elif command.get("merge"):
            bench.merge()
            print(json.dumps({"ok": True}), file=reply, flush=True)
        elif command.get("finish"):
            print(json.dumps({"row": bench.row}), file=reply, flush=True)
            return 0
    return 0


class Worker:
    """A method's benchmark process, driven line by line (see :func:`worker`)."""

    def __init__(self, name: str, preset_file: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = (log_dir / f"{name}.log").open("w+")
        command = [sys.executable, "-m", "experiments.benchmarks.efficiency", "--preset-file", preset_file]
        self.proc = subprocess.Popen(
            [*command, "--worker", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=ROOT,
        )

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            tail = (self.log.read().strip().splitlines() or [f"exit status {self.proc.returncode}, no output"])[-1]
            return {"error": tail[:300]}
        return json.loads(line)

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the process died; read() says why
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def child_env() -> dict[str, str]:
    """This environment with the project root first on PYTHONPATH: what a child process of the suite needs."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def in_worker_processes(
    preset: dict[str, Any], names: list[str], worker: Callable[..., Any], phases: Callable[..., Any], what: str
) -> Any:
    """``phases(preset, workers)`` with every name in its own ``worker`` process for the whole run (clean
    peak-memory counters); the processes are closed however it ends."""
    env = child_env()
    with tempfile.TemporaryDirectory() as scratch:
        preset_file = Path(scratch) / "preset.json"
        preset_file.write_text(json.dumps(preset))
        print(f"starting {len(names)} {what} ...", file=sys.stderr, flush=True)
        workers = [worker(name, str(preset_file), env, Path(scratch)) for name in names]
        try:
            return phases(preset, workers)
        finally:
            for bench in workers:
                bench.close()
