"""Run names in one place: a record lives at ``<output_dir>/<run name>.json``, and run.py skips a run whose record there
is complete, so every writer (Hydra's config, table specs, sweeps) and reader (tables) must spell names the same way.

The convention is ``<method>-<suite>-<task>-<model>-s<seed>[-<variant>]``. A table spec may give its own template
(fields below) so that records made under an older name keep matching.
"""

from __future__ import annotations

import re

# Template fields: method, task (``suite/name`` with ``/`` as ``-``), model, seed, variant (a variant's name piece, ""
# without one) and variant_suffix (``-<variant>``, or "" without a variant).
RUN_NAME = "{method}-{task}-{model}-s{seed}{variant_suffix}"
PROPERTIES_NAME = "{method}-{model}"  # table 1 measures one adapter per model and method: no task, no seed
NAME_PIECE = re.compile(r"[A-Za-z0-9._-]*")  # safe in a file name and in a Hydra override value


def slug(text: str) -> str:
    """A variant label as a name piece: ``core rank I/2`` -> ``core-rank-i-2``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_name(method: str, task: str, model: str, seed: int | str, variant: str = "", template: str = RUN_NAME) -> str:
    """The record name of one run, e.g. ``tera-glue-sst2-roberta-base-s0`` or ``tera-...-s0-tensor-order-3``."""
    fields = {
        "method": method,
        "task": task.replace("/", "-"),
        "model": model,
        "seed": seed,
        "variant": variant,
        "variant_suffix": f"-{variant}" if variant else "",
    }
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"Run-name template {template!r} is not valid; its fields are {', '.join(fields)}.") from err


def hydra_run_name(task: str, model: str, variant: str = "", template: str = RUN_NAME) -> str:
    """The same name as a Hydra interpolation for a multirun that sweeps methods and seeds: those two come from the
    composed config of each job, the rest is fixed for the sweep."""
    return run_name("${method.name}", task, model, "${seed}", variant, template)


def properties_name(method: str, model: str) -> str:
    return PROPERTIES_NAME.format(method=method, model=model)
