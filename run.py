"""Fine-tune and evaluate one model x task x method; writes a JSON record under results/runs/.

python run.py                                   # TeRA, MiniLM-L6, offline tweets: a few minutes on a CPU
python run.py method=lora task=glue/sst2 model=roberta-base
python run.py method=vera train.max_steps=50 logger=none
python run.py model=smollm2-135m task=math/gsm8k train.max_steps=20 eval.limit=20   # decoder, offline
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF = Path(__file__).parent / "conf"
GROUPS = ("method", "task", "model", "train", "logger")


def _options(group: str) -> list[str]:
    root = CONF / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def check_choices(argv: list[str]) -> str | None:
    """One sentence for an unknown group option, before Hydra prints its longer error."""
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in GROUPS and "," not in value and value not in _options(key.lstrip("+~")):
            group = key.lstrip("+~")
            return f"Unknown {group} {value!r}; choose one of: {', '.join(_options(group))}."
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from baselines import UnknownMethod
    from experiments.harness import IncompatibleChoice, is_complete, record_path, run_experiment
    from experiments.models import ModelUnavailable
    from experiments.summary import summarise
    from experiments.tasks import DataUnavailable
    from tera import TensorisationError

    if cfg.skip_complete and is_complete(cfg):
        print(f"skip {cfg.run_name}: {record_path(cfg)} is complete with these settings (skip_complete=false reruns)")
        return
    try:
        record, path = run_experiment(cfg)
    except (DataUnavailable, ModelUnavailable, UnknownMethod, TensorisationError, IncompatibleChoice) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no record was written for this run", file=sys.stderr)
        sys.exit(130)
    if record is not None:  # None on the other ranks of a torchrun launch
        print(summarise(record, path))


if __name__ == "__main__":
    if message := check_choices(sys.argv[1:]):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    main()
