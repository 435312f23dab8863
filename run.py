"""Fine-tune and evaluate one model x task x method; writes a JSON record under results/runs/.

python run.py                                   # TeRA, MiniLM-L6, offline tweets: a few minutes on a CPU
python run.py method=lora task=glue/sst2 model=roberta-base
python run.py method=vera train.max_steps=50 logger=none
python run.py model=smollm2-135m task=math/gsm8k train.max_steps=20 eval.limit=20   # decoder, offline

Every job of the command line (each of a -m sweep) is composed and checked before the first one starts; a mistake
ends with one sentence and exit status 2. The flow of one run is experiments/pipeline.py.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from experiments.run.cli import main as run_job

    run_job(cfg)


if __name__ == "__main__":
    from experiments.run.cli import preflight

    preflight(sys.argv[1:])
    main()
