"""Run records: environment facts and atomic JSON writes (a killed run never leaves a half-written file)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from experiments.cache import cache_root
from experiments.errors import ConfigError, UserError

PACKAGES = ("torch", "transformers", "peft", "tera-suite")
NAME_MAX = 255  # bytes in a file name on the usual file systems (ext4, XFS, btrfs, APFS, NTFS), the most allowed here
# The longest file name the suite makes from a run name: its checkpoint moved aside when it cannot be read
# (experiments/run/checkpoints.py); the record's temporary file, ".<run name>-<id>.json.<8 random>.tmp", is shorter.
RUN_NAME_SUFFIX = "-01234567.pt.unreadable-20260101-000000"


class RecordNotWritten(UserError):
    """A run that finished (or failed) whose record could not be written where it belongs; exit status 3, as for any
    run that ends after training without a record a rerun or table would find."""

    exit_code = 3


def package_versions(packages=PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _cpu_model() -> str:
    """The processor's marketing name (Linux's /proc/cpuinfo; elsewhere what ``platform`` knows), or ''."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def device_description(device: torch.device | str | None = None) -> str:
    """What ran the numbers: the GPU's name, or the CPU's model, the vector kernels torch uses and the core count
    (two CPUs of one architecture can differ twofold in step time and in which method is cheaper)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = " ".join(part for part in (platform.machine(), _cpu_model()) if part)
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    kernels = f", {capability} kernels" if capability else ""
    return f"CPU {name}{kernels} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_description(device),
        "python": platform.python_version(),
        "versions": package_versions(),
    }


def run_identity(cfg: Any, config: dict[str, Any], device: torch.device | str | None) -> dict[str, Any]:
    """The fields that say which run a record is and where it ran; ``config`` is the resolved config."""
    return {
        "run_name": cfg.run_name,
        "method": cfg.method.name,
        "task": f"{cfg.task.suite}/{cfg.task.name}",
        "model": cfg.model.name,
        "seed": cfg.seed,
        "config": config,
        "environment": environment(device),
    }


def adapter_fields(model: torch.nn.Module, method: str) -> dict[str, Any]:
    """Per-layer trainable count, rank bound and measured rank of dW, the median rank, the singular values of the
    middle adapted layer's dW (none of these for full FT), and the frozen random values the adapter keeps."""
    from baselines import trains_every_weight
    from baselines.analysis import adapter_report, delta_spectrum, frozen_factor_values
    from tera.analysis import tensor_plans

    if trains_every_weight(method):
        return {"layers": [], "median_rank": None, "spectrum": None, "frozen_factor_values": 0}
    layers = [r.as_dict() for r in adapter_report(model)]
    ranks = [layer["rank"] for layer in layers]
    spectrum = delta_spectrum(model)  # one layer's singular values of dW, for the spectra plots
    if spectrum is not None:
        spectrum["singular_values"] = [float(f"{v:.6g}") for v in spectrum["singular_values"]]
    return {
        "layers": layers,
        "median_rank": statistics.median(ranks) if ranks else None,
        "spectrum": spectrum,
        "frozen_factor_values": frozen_factor_values(model),
        "tensor_plans": tensor_plans(model) or None,  # TeRA: the split each weight shape used (None for others)
    }


def selection_fields(result: Any) -> dict[str, Any]:
    """``validation_curve``: per periodic evaluation its step, main validation metric and validation loss (where
    computed); with ``train.keep_best``, ``chosen_step`` (the step whose state the final evaluation tested; None when
    no evaluation had a value and the last step's was) and ``chosen_by`` (keep_best, the metric, its value there,
    where the state was kept). ``result`` is the run's ``TrainResult`` (None: no training)."""
    if result is None:
        return {}
    curve = []
    for point in result.evaluations:
        row: dict[str, Any] = {"step": point["step"]}
        if point.get("main_metric"):
            row[point["main_metric"]] = point.get("main_value")
        if "validation_loss" in point:
            row["loss"] = point["validation_loss"]
        if len(row) > 1:
            curve.append(row)
    fields: dict[str, Any] = {"validation_curve": curve} if curve else {}
    if result.selection is not None:
        selection = result.selection
        fields["chosen_step"] = result.chosen_step
        fields["chosen_by"] = {"keep_best": selection["by"], **{k: v for k, v in selection.items() if k != "by"}}
    return fields


def strict_json(value: Any, _path: tuple[int, ...] = ()) -> Any:
    """``value`` with every non-finite float (NaN, inf) as None: records are strict JSON, which has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (dict, list, tuple)):
        if id(value) in _path:
            raise ValueError("Circular reference detected")
        inner = (*_path, id(value))
        if isinstance(value, dict):
            return {k: strict_json(v, inner) for k, v in value.items()}
        return [strict_json(v, inner) for v in value]
    return value


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as strict JSON to ``path`` via a temporary file in the same folder, fsync and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(strict_json(payload), handle, indent=2, sort_keys=True, default=str, allow_nan=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename: a crash never leaves a truncated record
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a record is for everyone who can read results/
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def rescue_folders() -> list[Path]:
    """Where a record that cannot be written to its output folder goes instead, in this order. No rerun, skip decision
    or table looks here: a rescued record is for the user to move back."""
    return [cache_root() / "rescued-records", Path(tempfile.gettempdir()) / "tera-suite-rescued-records"]


def rescue_record(path: Path, record: dict[str, Any], why: str) -> Path:
    """Write ``record``, which could not be written to ``path`` (a folder made read-only during the run, a disk error:
    ``why``), to the first rescue folder that takes it, under the same file name; returns where. Raises
    :class:`RecordNotWritten`, with the record's final metrics in its sentence, when none does."""
    for folder in rescue_folders():
        try:
            return write_json_atomic(folder / path.name, record)
        except OSError:
            continue
    metrics = json.dumps(strict_json(record.get("final_metrics")), default=str)
    raise RecordNotWritten(
        f"The record of {path.name} could not be written to {path} ({why}) nor to "
        f"{' or '.join(str(f) for f in rescue_folders())}; its final metrics were {metrics}."
    )


def rescued_sentence(path: Path, rescued: Path, why: str) -> str:
    return (
        f"The run finished, but its record could not be written to {path} ({why}); it was saved to {rescued} "
        f"instead, a rescue copy that no rerun or table looks at: move it into {path.parent} to keep the result."
    )


def check_run_name(run_name: str, output_dir: str | Path) -> None:
    """Refuse, before anything loads, a run name too long for the file names made from it (the record, the checkpoint,
    their temporary and moved-aside files), which only the record's write at the end would find."""
    name_max = NAME_MAX
    folder = Path(output_dir).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        name_max = min(NAME_MAX, os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no such query on this platform or file system
        pass
    size, limit = len(str(run_name).encode()), name_max - len(RUN_NAME_SUFFIX)
    if size > limit:
        raise ConfigError(
            f"run_name is {size} bytes long, too long for the file names made from it (<run_name>-<run id>.json, its "
            f"checkpoint and their temporary files must fit the file system's {name_max}-byte limit); use at most "
            f"{limit} bytes."
        )


def probe_writable(folder: Path) -> None:
    """Create ``folder`` and write and remove a file there, so an unwritable output is found before training."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        with open(probe, "wb") as handle:
            handle.write(b"probe")
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"Cannot write to {folder} ({err.strerror or type(err).__name__}); choose a writable output_dir."
        ) from None
