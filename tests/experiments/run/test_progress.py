"""Progress in a log file is plain lines (step, loss, it/s, ETA), not one line of carriage returns."""

from __future__ import annotations

import io

from experiments.run.progress import Progress


def test_a_log_file_gets_plain_progress_lines():
    log = io.StringIO()  # not a terminal, like Slurm's output file or a redirect
    progress = Progress(range(1, 21), 20, "train", stream=log, every=3600)
    for step in progress:
        progress.set_loss(1.0 / step)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 10  # at each tenth of the work (and never more often than the work allows)
    assert lines[-1].startswith("train: 20/20 loss 0.0500 ") and "it/s ETA 0:00:00" in lines[-1]


def test_a_resumed_loop_counts_from_where_it_was():
    log = io.StringIO()
    list(Progress(range(16, 21), 20, "train", initial=15, stream=log, every=3600))
    assert log.getvalue().splitlines()[-1].startswith("train: 20/20 ")
    assert log.getvalue().splitlines()[0].startswith("train: 16/20 ")
