"""Progress of long loops that reads well where it lands: a tqdm bar on a terminal; in a log file (Slurm, a redirect)
a plain line every ``every`` seconds or at each tenth of the work (step, loss, it/s, ETA), never a line of carriage
returns that swallows the warnings printed meanwhile."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


def on_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Iterate ``items`` (``total`` of them, counting from ``initial``) with a bar or plain progress lines."""

    def __init__(
        self,
        items: Iterable[Any],
        total: int,
        desc: str,
        initial: int = 0,
        enabled: bool = True,
        every: float = 30.0,
        stream: TextIO | None = None,
        leave: bool = True,
    ) -> None:
        self.items, self.total, self.desc, self.initial = items, total, desc, initial
        self.enabled, self.every, self.stream = enabled, every, stream or sys.stdout
        self.loss: float | None = None
        self.bar = None
        if enabled and on_terminal(self.stream if stream else None):
            from tqdm.auto import tqdm

            self.bar = tqdm(items, desc=desc, initial=initial, total=total, leave=leave)

    def set_loss(self, loss: float) -> None:
        self.loss = loss
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def __iter__(self) -> Iterator[Any]:
        if self.bar is not None or not self.enabled:
            yield from self.bar if self.bar is not None else self.items
            return
        start = last = time.perf_counter()
        tenth = max(1, (self.total - self.initial) // 10)
        done = self.initial
        for item in self.items:
            yield item
            done += 1
            now = time.perf_counter()
            if now - last >= self.every or (done - self.initial) % tenth == 0 or done == self.total:
                last = now
                self.stream.write(self.line(done, now - start) + "\n")
                self.stream.flush()

    def line(self, done: int, elapsed: float) -> str:
        rate = (done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        loss = f" loss {self.loss:.4f}" if self.loss is not None else ""
        return f"{self.desc}: {done}/{self.total}{loss} {rate:.2f} it/s ETA {_clock(eta)}"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
