"""What ``run.py`` does around a run: check every job of the command line before any starts, skip finished runs, turn
a user's mistake into one sentence with exit status 2, and print the summary."""

from __future__ import annotations

import copy
import itertools
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, open_dict

CONF = Path(__file__).resolve().parents[2] / "conf"
# A sweep of more jobs says that it is being checked: about 5 ms a job, plus 80 ms for each distinct set of
# config-group choices (600 jobs of one model, task and method: 3 s here; Hydra's composition of each: 47 s).
ANNOUNCED_JOBS = 100


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _jobs(overrides: list[str], multirun: bool) -> Iterator[list[str]]:
    """The override list of every job Hydra would launch (its basic sweeper's Cartesian product)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for override in parsed:
        if multirun and override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    for combination in itertools.product(*choices):
        yield list(combination)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if text.endswith(".") else f"{text}."


def preflight(argv: list[str]) -> None:
    """Compose and validate every job of ``argv`` as Hydra will (same search path, ``--config-dir`` and
    ``hydra.searchpath`` included); exit 2 with one sentence at the first mistake, before any job starts."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path, get_args_parser
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from experiments.errors import USER_ERRORS
    from experiments.records.write import check_run_name
    from experiments.run.schema import validate

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:
        return  # argparse already said what is wrong; Hydra will say it again
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.experimental_rerun:
        return
    config_dir = CONF if args.config_path is None else (CONF.parent / args.config_path).resolve()
    search_path = create_config_search_path(f"file://{config_dir}")
    if args.config_dir is not None:  # where Hydra's own main puts it: before the structured-config schema source
        anchor = SearchPathQuery(provider="schema")
        search_path.prepend("command-line", f"file://{os.path.realpath(args.config_dir)}", anchor=anchor)
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name="run", config_search_path=search_path)
    try:
        try:
            jobs = list(_jobs(args.overrides, args.multirun))
        except HydraException as err:
            fail(f"Cannot parse the overrides: {_one_line(err)}")
        if len(jobs) > ANNOUNCED_JOBS:
            print(f"checking the {len(jobs)} jobs of the sweep before the first one starts", flush=True)
        compose = _composer(hydra, args.config_name or "config")
        for number, overrides in enumerate(jobs):
            where = f" (job {number} of the sweep: {' '.join(overrides)})" if args.multirun and len(jobs) > 1 else ""
            try:
                cfg = compose(overrides)
                validate(cfg)
                check_run_name(cfg.run_name, cfg.output_dir)
            except (HydraException, OmegaConfBaseException) as err:
                fail(_config_sentence(err, hydra).removesuffix(".") + where + ".")
            except USER_ERRORS as err:
                fail(_one_line(err).removesuffix(".") + where + ".")
    finally:
        GlobalHydra.instance().clear()


def _composer(hydra, config_name: str):
    """A function from one job's overrides to its composed config (without the ``hydra`` node), as Hydra composes
    it, in milliseconds a job, so every job of a large sweep is checked. Hydra builds a config from the config-group
    choices (``method=lora``, ``hydra.*``) and then applies the other overrides (``seed=3``, ``+a.b=1``, ``~c``) to it
    (``_load_configuration_impl``); jobs with the same group choices share the first part here. A job whose overrides
    fail here, or that names ``hydra.searchpath``, is composed by Hydra itself, so an error is always Hydra's own."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    parser = OverridesParser.create()
    bases: dict[tuple[str, ...], DictConfig] = {}
    repositories: dict[tuple[str, ...], object] = {}  # per hydra.* overrides: the search path they make

    def full(overrides: list[str]) -> DictConfig:
        cfg = hydra.compose_config(config_name, overrides, run_mode=RunMode.RUN, with_log_configuration=False)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    def compose(overrides: list[str]) -> DictConfig:
        if any(o.split("=", 1)[0].lstrip("+~") == "hydra.searchpath" for o in overrides):
            return full(overrides)
        try:
            parsed = parser.parse_overrides(overrides)
            own = tuple(o.input_line for o in parsed if o.is_hydra_override())
            if own not in repositories:  # the repository Hydra tells groups from values with (its search path)
                loader = hydra.config_loader
                repositories[own] = loader._parse_overrides_and_create_caching_repo(config_name, list(own))[1]
            plain = [not o.is_hydra_override() and not repositories[own].group_exists(o.key_or_group) for o in parsed]
            groups = tuple(o.input_line for o, value in zip(parsed, plain) if not value)
            if groups not in bases:
                bases[groups] = full(list(groups))
            cfg = copy.deepcopy(bases[groups])
            ConfigLoaderImpl._apply_overrides_to_config([o for o, value in zip(parsed, plain) if value], cfg)
            return cfg
        except Exception:
            return full(overrides)  # Hydra's own composition: its error message (or its config)

    return compose


def _config_sentence(err: BaseException, hydra) -> str:
    """Hydra's composition errors are several lines; keep the first, and for a missing option list the options of its
    group (nested ones too: ``task=glue/sst3`` lists every task, from every folder on the search path)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = lines[0] if lines else type(err).__name__
    missing = re.search(r"Could not (?:find|load) '([^']+)'", first)
    if missing and "/" in missing.group(1):
        group = missing.group(1).split("/")[0]
        options = _group_options(hydra.config_loader, group)
        if options:
            return f"{first.rstrip('.')}; choose one of {group}: {', '.join(options)}."
    hint = next((line for line in lines[1:] if line.startswith("To append to your config use")), None)
    if hint:  # a key the chosen option does not have: say how to add one, and that it may be a typo
        return f"{first.rstrip('.')}: the chosen config has no such key (a typo?); {hint[0].lower()}{hint[1:]}."
    return _one_line(first)


def _group_options(loader, group: str, prefix: str = "") -> list[str]:
    from hydra.core.object_type import ObjectType

    options = [prefix + name for name in loader.get_group_options(group, results_filter=ObjectType.CONFIG)]
    for sub in loader.get_group_options(group, results_filter=ObjectType.GROUP):
        options += _group_options(loader, f"{group}/{sub}", f"{prefix}{sub}/")
    return sorted(options)


def main(cfg: DictConfig) -> None:
    """One job: skip it when it finished before, else run it; a user's mistake ends with one sentence and exit 2."""
    from experiments.errors import USER_ERRORS
    from experiments.records.write import check_run_name
    from experiments.run.pipeline import (
        failed_record,
        finished_record,
        legacy_record,
        note_resume,
        plan_run,
        run_experiment,
    )
    from experiments.run.summary import summarise

    try:
        check_run_name(cfg.run_name, cfg.output_dir)  # before anything loads: the record could not be written
        plan = plan_run(cfg)
        note_resume(plan.checkpoint)  # the record says when its train time includes an earlier process's
        if cfg.skip_complete and finished_record(plan) is not None:
            print(
                f"skip {cfg.run_name}: {plan.record_path} is complete with these settings and data "
                f"(skip_complete=false reruns)"
            )
            return
        if cfg.skip_complete and (legacy := legacy_record(cfg)) is not None:
            print(
                f"skip {cfg.run_name}: {legacy[0]} is a legacy record (made before run ids) whose recorded settings "
                f"match these; its data were not fingerprinted (skip_complete=false reruns)"
            )
            return
        if cfg.get("skip_failed") and (failed := failed_record(plan)) is not None:
            print(
                f"skip {cfg.run_name}: {plan.record_path} says this run failed with these settings and data "
                f"({failed.get('reason')}); skip_failed=false reruns it"
            )
            return
        record, path = run_experiment(cfg, plan)
    except USER_ERRORS as err:
        fail(_one_line(err), code=getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        fail("interrupted: no record was written for this run", code=130)
    if record is not None:  # None on the other ranks of a torchrun launch
        print(summarise(record, path))
