"""Hydra entry of the efficiency report: ``python bench.py bench=llama2-7b`` (see experiments/benchmarks/efficiency/).

On a GPU machine without Hydra, run ``python -m experiments.benchmarks.efficiency --preset llama2-7b`` instead.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="conf", config_name="bench_config")
def main(cfg: DictConfig) -> None:
    from experiments.benchmarks.efficiency import default_report, run_all

    preset = OmegaConf.to_container(cfg.bench, resolve=True)
    report = Path(cfg.report) if cfg.report else default_report(preset)
    run_all(preset, Path(cfg.out), report, list(cfg.methods) if cfg.methods else None)
    print(report.read_text())


if __name__ == "__main__":
    main()
