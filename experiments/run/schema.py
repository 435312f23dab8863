"""The run config's schema: every setting's type, choices and range, checked before any data or model loads.

``validate(cfg)`` takes the composed Hydra config and returns typed settings, or raises :class:`ConfigError` with
one sentence naming the setting, what it must be and what it was. Models, tasks and methods are config groups that
users extend (``--config-dir``, ``hydra.searchpath``); their entries are checked against the same schema, so a
task YAML of one's own gets the same one-sentence errors as the built-in ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from experiments.errors import ConfigError, IncompatibleChoice
from experiments.records.naming import NAME_PIECE
from experiments.tasks.files import SUFFIXES

# Whole numbers are written as whole numbers: seed=1.0 or train.batch_size=16.0 is refused with a sentence (it would
# otherwise be another run id, or fail after the model loads). Real numbers must be finite: lr=inf is refused too.
Whole = Annotated[int, Strict()]
Real = Annotated[float, Field(allow_inf_nan=False)]

Metric = Literal["accuracy", "f1", "macro_f1", "matthews", "pearson", "spearman"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSettings(_Section):
    max_steps: Whole | None = Field(None, ge=0)
    epochs: Real | None = Field(None, gt=0)
    default_steps: Whole = Field(200, ge=0)
    batch_size: Whole = Field(ge=1)
    grad_accum: Whole = Field(1, ge=1)
    eval_batch_size: Whole = Field(ge=1)
    max_length: Whole = Field(ge=8)
    warmup_ratio: Real = Field(ge=0, le=1)
    weight_decay: Real = Field(ge=0)
    head_lr: Real = Field(gt=0)
    eval_every: Whole | None = Field(None, ge=1)
    # Test the state of the best validation evaluation instead of the last step's: the main metric's highest value,
    # or the lowest validation loss (the training loss on the validation split)
    keep_best: Literal["metric", "loss"] | None = None
    max_eval_examples: Whole | None = Field(None, ge=1)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    max_grad_norm: Real | None = Field(None, gt=0)
    gradient_checkpointing: bool = False
    checkpoint_every: Whole = Field(200, ge=0)
    checkpoint_minutes: Real = Field(5.0, ge=0)

    @model_validator(mode="after")
    def _keep_best_needs_evaluations(self) -> TrainSettings:
        if self.keep_best is not None and self.eval_every is None:
            raise ValueError(
                f"train.keep_best={self.keep_best} chooses among the validation evaluations of every train.eval_every "
                f"steps, but train.eval_every is null; set it (e.g. train.eval_every=80) or drop train.keep_best"
            )
        return self


class EvalSettings(_Section):
    protocol: Literal["lm-eval", "llm-adapters", "both"] = "lm-eval"
    limit: Whole | None = Field(None, ge=1)
    batch_size: Whole = Field(8, ge=1)
    max_new_tokens: Whole = Field(256, ge=1)


class LoggerSettings(_Section):
    name: Literal["wandb", "none"]
    project: str = "tera-suite"
    entity: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    dir: str | None = None
    group: str | None = None  # one W&B group per reproduced table


class ModelSettings(_Section):
    name: str
    kind: Literal["encoder", "decoder"]
    loader: str  # dotted path of the function that loads it (see experiments/models.py, experiments/causal/models.py)
    path: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    target_modules: list[str] = Field(min_length=1)
    head_modules: list[str] = []
    max_length: Whole = Field(ge=8)
    gradient_checkpointing: bool = False

    @field_validator("loader")
    @classmethod
    def _importable(cls, value: str) -> str:
        _import_dotted(value)
        return value


class ClassificationTaskSettings(_Section):
    name: str
    suite: str
    kind: Literal["classification"] = "classification"
    loader: str | None = None  # dotted path of the default source (hub GLUE, the offline tweets); data_files win
    hub_path: str | None = None
    hub_name: str | None = None
    # None: ``text``, else ``sentence1`` and ``sentence2``, whichever the data has (custom/classification)
    text_fields: list[str] | None = Field(None, min_length=1, max_length=2)
    label_field: str = "label"
    num_labels: Whole | None = Field(None, ge=1)  # None: from the data; 1: regression
    string_labels: bool = False  # string labels map to class indices in sorted order (else they are refused)
    metrics: list[Metric] | None = Field(None, min_length=1)  # None: chosen by the data (experiments/tasks)
    main_metric: Metric | None = None  # None: the first metric
    epochs: Real | None = Field(None, gt=0)
    max_length: Whole | None = Field(None, ge=8)
    validation_split: str = "validation"
    validation_share: Real | None = Field(None, gt=0, lt=1)  # carve this share of train when there is no validation
    test_split: str | None = None
    data_files: dict[str, str] | None = None
    split_seed: Whole = 0
    # Tuning trials on a task whose test figure is its validation split (GLUE): hold out this share of train as the
    # validation split that chooses, so the split reported as test never steers the choice (README "Fair comparisons")
    tune_holdout: Real | None = Field(None, gt=0, lt=1)

    @field_validator("loader")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        if value is not None:
            _import_dotted(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClassificationTaskSettings:
        if self.metrics is not None and self.main_metric is not None and self.main_metric not in self.metrics:
            raise ValueError(f"task.main_metric {self.main_metric!r} must be one of task.metrics {self.metrics}")
        if self.data_files is None and self.loader is None:
            raise ValueError(
                f"task {self.suite}/{self.name} reads your own files: set task.data_files={{train: ..., "
                f"validation: ..., test: ...}} (validation and test optional)"
                if self.validation_share is not None
                else "the task needs task.loader (its default source) or task.data_files (local files)"
            )
        if self.data_files is not None:
            splits = ["train", self.validation_split, *([self.test_split] if self.test_split else [])]
            # A test file is optional (the validation split is reported, and marked); so is a validation file where
            # the task carves one.
            required = ["train", *([self.validation_split] if self.validation_share is None else [])]
            hint = "" if self.test_split else " (set task.test_split=test to report a test file)"
            carve = (
                ", or carve one from train with ++task.validation_share=0.1" if self.validation_share is None else ""
            )
            _check_data_files(self.data_files, allowed=splits, required=required, hint=hint, missing_hint=carve)
        return self


class CausalTaskSettings(_Section):
    name: str
    suite: str
    kind: Literal["causal"]
    train_on: list[str] = Field(min_length=1)
    evaluate_on: list[str] = Field(min_length=1)
    epochs: Real | None = Field(None, gt=0)
    data_files: dict[str, str] | None = None
    split_seed: Whole = 0
    offline_fallback: bool = True
    prefer_offline_gsm8k: bool = True
    bigbench_eval_fraction: Real = Field(0.2, gt=0, lt=1)
    # custom tasks: the field names of one's own rows, and the share of train carved off when no file is evaluated
    question_field: str = "question"
    context_field: str = "context"
    choices_field: str = "choices"
    answer_field: str = "answer"
    solution_field: str = "solution"
    prompt_field: str = "prompt"  # custom/generation: the prompt, and its reference text(s) below
    response_field: str = "response"
    # custom/choice: auto reads an index, a choice's text or a letter, refusing an answer two readings disagree on
    answer_format: Literal["auto", "index", "text", "letter"] = "auto"  # not in the YAML: +task.answer_format=...
    validation_share: Real = Field(0.1, gt=0, lt=1)
    # Tuning trials: hold out this share of each evaluated task's training items as its validation split (decoder
    # tasks have none of their own), so the split reported as test never steers the choice
    tune_holdout: Real | None = Field(None, gt=0, lt=1)
    validation_size: Whole | None = Field(None, ge=1)  # items of train carved out to choose a step (keep_best)
    evaluate_from: Literal["llm-adapters", "original"] | None = None  # commonsense/all's test files: the paper's
    revision: str | None = None  # a hub revision (commit or tag) of the training data, named in the record

    @model_validator(mode="after")
    def _one_validation_carve(self) -> CausalTaskSettings:
        if self.validation_size is not None and self.tune_holdout is not None:
            raise ValueError(
                f"task.validation_size={self.validation_size} and task.tune_holdout={self.tune_holdout} both carve a "
                f"validation split out of train; keep one"
            )
        return self

    @model_validator(mode="after")
    def _known_sources(self) -> CausalTaskSettings:
        from experiments.tasks.decoder.sources import CUSTOM_SOURCES, SOURCES

        for key, names in (("train_on", self.train_on), ("evaluate_on", self.evaluate_on)):
            unknown = [n for n in names if n not in SOURCES]
            if unknown:
                raise ValueError(f"task.{key} names unknown data source(s) {unknown}; known: {', '.join(SOURCES)}")
        no_eval = [n for n in self.evaluate_on if SOURCES[n].kind == "instruct"]
        if no_eval:
            raise ValueError(f"task.evaluate_on takes choice or math tasks; {no_eval} have no evaluation split")
        custom = [n for n in [*self.train_on, *self.evaluate_on] if n in CUSTOM_SOURCES]
        if custom:
            if not (self.train_on == self.evaluate_on == [custom[0]]):
                raise ValueError(
                    f"{custom[0]} reads one's own train, validation and test files: use it alone, as "
                    f"task.train_on=[{custom[0]}] and task.evaluate_on=[{custom[0]}]"
                )
            if not self.data_files:
                raise ValueError(
                    f"task {self.suite}/{self.name} reads your own files: set task.data_files={{train: ..., "
                    f"validation: ..., test: ...}} (validation and test optional)"
                )
            _check_data_files(self.data_files, allowed=["train", "validation", "test"], required=["train"])
        elif self.data_files is not None:
            allowed = ["train", *self.evaluate_on, *(["test"] if len(self.evaluate_on) == 1 else [])]
            _check_data_files(self.data_files, allowed=allowed, required=[])
        untested = [n for n in self.train_on if n not in self.evaluate_on and not SOURCES[n].custom]
        if self.tune_holdout is not None and untested:
            raise ValueError(
                f"task.tune_holdout holds out training items of the evaluated tasks as their validation split, but "
                f"task {self.suite}/{self.name} trains on {', '.join(untested)}, which it does not evaluate; tune on "
                f"a task that trains on what it evaluates (math/gsm8k, commonsense/offline, one commonsense/<task>)"
            )
        return self


class TuneSpace(_Section):
    """A method's search space for the tuning protocol (``experiments/tuning.py``, README "Fair comparisons"): learning
    rates as multiples of its conventional one (``lr`` on encoder tasks, ``decoder_lr`` on decoder tasks), times a
    grid of other PEFT options. Not part of a run's identity: only the values a trial sets are."""

    lr_factors: list[float] = Field(min_length=1)
    peft: dict[str, list[bool | int | float | str]] = {}

    @field_validator("lr_factors")
    @classmethod
    def _factors(cls, value: list[float]) -> list[float]:
        bad = [f for f in value if not (math.isfinite(f) and f > 0)]
        if bad:
            raise ValueError(
                f"method.tune.lr_factors multiplies the method's conventional learning rate: every factor must be a "
                f"positive number, got {bad[0]!r}"
            )
        if len(set(value)) < len(value):
            raise ValueError(f"method.tune.lr_factors names a factor twice ({value}); list each once")
        return value

    @field_validator("peft")
    @classmethod
    def _options(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values or len(set(map(str, values))) < len(values):
                raise ValueError(f"method.tune.peft.{key} must list one or more distinct values, got {values!r}")
            odd = [v for v in values if not NAME_PIECE.fullmatch(str(v))]
            if odd:
                raise ValueError(
                    f"method.tune.peft.{key} values become part of run names: use numbers or plain words, got "
                    f"{odd[0]!r}"
                )
        return value


class MethodSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    lr: Real = Field(gt=0)
    decoder_lr: Real | None = Field(None, gt=0)
    target_modules: list[str] | None = None
    peft: dict[str, Any] | None = None
    tune: TuneSpace | None = None  # the search space of the tuning protocol (README "Fair comparisons")

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError(
                "method.target_modules=[] adapts nothing; name the modules to adapt, or use null for the model's "
                "default (model.target_modules)"
            )
        return value

    @field_validator("peft")
    @classmethod
    def _tensor_shapes(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """TeRA's explicit tensorisations, checked before anything loads: each key names a weight shape ``OUTxIN``
        and its factors multiply out to it (whether a weight of that shape is adapted is checked once the model is
        loaded, before training)."""
        for key, factors in ((value or {}).get("tensor_shape") or {}).items():
            match = re.fullmatch(r"(\d+)x(\d+)", str(key))
            if match is None:
                raise ValueError(
                    f"method.peft.tensor_shape key {key!r} must name a weight shape as OUTxIN, e.g. '4096x4096'"
                )
            sides = (int(match.group(1)), int(match.group(2)))
            ok = isinstance(factors, (list, tuple)) and len(factors) == 2
            ok = ok and all(isinstance(side, (list, tuple)) and side for side in factors)
            if not ok or any(math.prod(int(v) for v in side) != size for side, size in zip(factors, sides)):
                raise ValueError(
                    f"method.peft.tensor_shape[{key!r}] = {factors!r} must be [[output factors], [input factors]] "
                    f"whose products are {sides[0]} and {sides[1]}"
                )
        return value


class RunSettings(_Section):
    seed: Whole = Field(ge=0)
    device: str
    output_dir: str = Field(min_length=1)
    skip_complete: bool
    skip_failed: bool = False  # a run whose record says it failed (diverged) with these settings is not rerun
    run_name: str = Field(min_length=1)
    model: ModelSettings
    task: ClassificationTaskSettings | CausalTaskSettings
    method: MethodSettings
    train: TrainSettings
    logger: LoggerSettings
    eval: EvalSettings = EvalSettings()

    @field_validator("run_name")
    @classmethod
    def _file_name(cls, value: str) -> str:
        if "/" in value or value.startswith("."):
            raise ValueError("run_name becomes a file name: no '/' and no leading '.'")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value == "auto":
            return value
        try:
            device = torch.device(value)
        except RuntimeError as err:
            raise ValueError("device must be auto, cpu, cuda or cuda:N") from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={value} was asked for, but this machine has no CUDA GPU; use device=auto or cpu")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={value} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
        return value

    @property
    def family(self) -> str:
        return self.task.kind


def _import_dotted(path: str) -> Any:
    from hydra.utils import get_method

    try:
        return get_method(path)
    except Exception as err:  # ImportError, AttributeError: either way the path names nothing callable
        raise ValueError(f"{path!r} is not an importable function") from err


def _check_data_files(
    files: Mapping[str, str], allowed: list[str], required: list[str], hint: str = "", missing_hint: str = ""
) -> None:
    unknown = sorted(set(files) - set(allowed))
    if unknown:
        raise ValueError(f"task.data_files has key(s) {unknown} that this task does not read; it reads {allowed}{hint}")
    missing_keys = [key for key in required if key not in files]
    if missing_keys:
        raise ValueError(f"task.data_files must name {missing_keys}{missing_hint}")
    for key, path in files.items():
        suffix = Path(path).suffix.lower()
        if suffix not in SUFFIXES:
            raise ValueError(f"task.data_files.{key} must be a {'/'.join(SUFFIXES)} file, got {path!r}")
        if not Path(path).is_file():
            raise ValueError(f"task.data_files.{key} points at {path!r}, which does not exist")


def _describe(error: dict[str, Any], section: str) -> str:
    """One pydantic error as one sentence: the dotted setting, what it should be, what it was."""
    loc = [str(p) for p in error["loc"] if not str(p).endswith("Settings")]  # drop union branch names
    where = ".".join([section, *loc]) if section else ".".join(loc)
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return f"{where} is not a setting; check the key's spelling (Hydra: ~{where} removes an added key)."
    if kind == "missing":
        return f"{where} is missing; set it in the config or with {where}=..."
    if kind == "value_error":
        return message.removeprefix("Value error, ").rstrip(".") + "."
    value = error.get("input")
    if kind == "int_type" and isinstance(value, float):
        return f"{where} takes a whole number, written without a decimal point, got {value!r}."
    if kind == "finite_number":
        return f"{where} must be a finite number, got {value!r}."
    message = message.replace("Input should be", "should be")
    return f"{where} {message[0].lower()}{message[1:]}, got {value!r}."


def _check(model: type[BaseModel], values: Any, section: str) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise ConfigError(_describe(err.errors()[0], section)) from None


def validate(cfg: DictConfig | Mapping[str, Any]) -> RunSettings:
    """Check ``cfg`` (the composed config of one run) against the schema; returns the typed settings.

    Raises :class:`ConfigError` (or :class:`IncompatibleChoice`) with one sentence. Also builds the method's PEFT
    config, so an option the method does not take, or a value it refuses, is found here (``UnknownMethod``).
    """
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    raw = {k: v for k, v in raw.items() if k != "hydra"}
    for key in ("model", "task", "method", "train", "logger"):
        if not isinstance(raw.get(key), Mapping):
            raise ConfigError(f"The config has no {key} group; choose one with {key}=<option>.")
    task = dict(raw["task"])
    task.setdefault("kind", "classification")
    task_model = CausalTaskSettings if task["kind"] == "causal" else ClassificationTaskSettings
    sections = {
        "model": _check(ModelSettings, raw["model"], "model"),
        "task": _check(task_model, task, "task"),
        "method": _check(MethodSettings, raw["method"], "method"),
        "train": _check(TrainSettings, raw["train"], "train"),
        "logger": _check(LoggerSettings, raw["logger"], "logger"),
        "eval": _check(EvalSettings, raw.get("eval") or {}, "eval"),
    }
    top = {k: v for k, v in raw.items() if k not in sections}
    settings = _check(RunSettings, {**top, **sections}, "")
    _check_compatible(settings)
    _check_keep_best(settings)
    _check_virtual_tokens(settings)
    _check_method(settings)
    return settings


def _check_compatible(settings: RunSettings) -> None:
    task, model = settings.task, settings.model
    if (task.kind == "causal") != (model.kind == "decoder"):
        wanted = "a decoder model (kind: decoder)" if task.kind == "causal" else "an encoder model (kind: encoder)"
        article = "an" if model.kind == "encoder" else "a"
        raise IncompatibleChoice(
            f"Task {task.suite}/{task.name} needs {wanted}, but model={model.name} is {article} {model.kind}; "
            f"pick another model or task."
        )


def _check_keep_best(settings: RunSettings) -> None:
    """``train.keep_best`` chooses on a validation split. A classification task always has one (read or carved); a
    decoder task only where its own files give a validation file beside the test file, or ``task.tune_holdout``
    holds part of train out: its evaluated items are the test figures and must not choose."""
    task, keep_best = settings.task, settings.train.keep_best
    if keep_best is None or task.kind != "causal" or task.tune_holdout is not None or task.validation_size:
        return
    from experiments.tasks.decoder.sources import CUSTOM_SOURCES

    custom = task.train_on[0] in CUSTOM_SOURCES
    if custom and {"validation", "test"} <= set(task.data_files or {}):
        return
    files = " (or give task.data_files a validation file beside the test file)" if custom else ""
    how = "++task.tune_holdout=0.1" if custom else "task.validation_size=120 or ++task.tune_holdout=0.1"
    raise ConfigError(
        f"train.keep_best={keep_best} chooses a step on a validation split, but task {task.suite}/{task.name} has none "
        f"(its evaluated items are the test figures); hold part of train out with {how}{files}, or drop "
        f"train.keep_best."
    )


def _check_virtual_tokens(settings: RunSettings) -> None:
    """Prompt Tuning and P-Tuning prepend trained virtual tokens to a decoder's input and adapt no layer: an encoder
    task, or target modules they would ignore, are refused here, before any model loads."""
    from baselines import VIRTUAL_TOKEN_METHODS

    method, task = settings.method, settings.task
    if method.name not in VIRTUAL_TOKEN_METHODS:
        return
    if task.kind != "causal":
        raise IncompatibleChoice(
            f"Method {method.name} prepends trained virtual tokens to a decoder's input and runs on decoder tasks "
            f"only (commonsense/*, math/*, custom/choice, custom/math), not on the {task.kind} task "
            f"{task.suite}/{task.name}; pick a decoder task and model, or another method."
        )
    if method.target_modules is not None:
        raise ConfigError(
            f"Method {method.name} trains virtual tokens and adapts no layer, so method.target_modules="
            f"{method.target_modules} would be ignored; drop it (method.target_modules=null)."
        )


def _check_method(settings: RunSettings) -> None:
    """Build the PEFT config now: an unknown option or a refused value costs seconds, not a training run."""
    from baselines import UnknownMethod, make_peft_config

    method = settings.method
    owned = sorted(set(method.peft or {}) & {"target_modules", "modules_to_save", "task_type"})
    if owned:  # the harness sets these from the model and task; a second value would collide
        raise ConfigError(
            f"method.peft.{owned[0]} is set by the suite (from method.target_modules, the model's head and the task); "
            f"drop it from method.peft{' and use method.target_modules' if owned[0] == 'target_modules' else ''}."
        )
    targets = method.target_modules or settings.model.target_modules
    task_type = "CAUSAL_LM" if settings.task.kind == "causal" else None
    make_peft_config(method.name, list(targets), None, task_type, **dict(method.peft or {}))
    searched = method.tune.peft if method.tune else {}
    if searched and method.peft is None:
        raise ConfigError(
            f"method.tune.peft searches adapter options, but method {method.name} has none (its peft is null); drop "
            f"method.tune.peft."
        )
    for key, values in searched.items():  # every point of the search space must be a config the method accepts
        for value in values:
            try:
                make_peft_config(method.name, list(targets), None, task_type, **{**dict(method.peft or {}), key: value})
            except UnknownMethod as err:
                reason = str(err).removesuffix(".").removesuffix("; check method.peft")
                raise ConfigError(
                    f"method.tune.peft.{key}={value!r} cannot be searched: {reason}; check method.tune.peft."
                ) from None
