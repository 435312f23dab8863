"""run.py's config composed in-process, as run.py composes it (``conf/``): the one place that starts Hydra's compose
API, for everything that plans runs before launching them (tuning, comparisons, the data preview)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

CONF = Path(__file__).resolve().parents[2] / "conf"


class ComposeError(ValueError):
    """Hydra could not compose the config (an unknown option, a bad override); the message is its first line."""


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__).rstrip(".")


@contextmanager
def composer() -> Iterator[Callable[[list[str]], DictConfig]]:
    """A function from overrides to run.py's composed config, for as many compositions as the block needs (Hydra is
    initialised once); a composition that fails raises :class:`ComposeError`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    def one(overrides: list[str]) -> DictConfig:
        try:
            return compose(config_name="config", overrides=list(overrides))
        except (HydraException, OmegaConfBaseException) as err:
            raise ComposeError(first_line(err)) from None

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            yield one
    finally:
        GlobalHydra.instance().clear()


def compose_config(overrides: list[str]) -> DictConfig:
    """run.py's config with ``overrides`` (one composition)."""
    with composer() as compose:
        return compose(overrides)
