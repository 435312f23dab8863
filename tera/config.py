"""Configuration of a TeRA adapter."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from peft.config import PeftConfig


class TeraPeftType(str, enum.Enum):
    """TeRA's PEFT type: a str enum member like PEFT's own ``PeftType`` ones (``.value``, equal to ``"TERA"``)."""

    TERA = "TERA"


PEFT_TYPE = TeraPeftType.TERA
FORWARD_PATHS = ("auto", "factorised", "merged")
PLACEMENTS = ("rank", "mode")


@dataclass
class TeraConfig(PeftConfig):
    """Configuration of a [`TeraModel`]: TeRA, vector-based random tensor-network adaptation.

    Each adapted ``d_out x d_in`` weight gets ``dW = scaling * G x_1 (A_1 L_1) ... x_N (A_N L_N)``, folded back to a
    matrix.  ``G`` and ``A_n`` are random, frozen and shared by all layers with the same tensor shape; only the
    diagonals ``L_n = diag(lambda_n)`` are trained.  The rank of ``dW`` is decoupled from the number of trained values.

    Args:
        target_modules (`Union[list[str], str]`):
            Names (or a regex) of the `nn.Linear` modules to adapt, e.g. ``["q_proj", "v_proj"]``.
        exclude_modules (`Union[list[str], str]`, *optional*):
            Names (or a regex) of modules to leave alone.
        tensor_order (`int`, defaults to `2`):
            Modes per side: ``d_out`` and ``d_in`` are each split into this many balanced factors (4096 -> 64 x 64,
            11008 -> 86 x 128).  Higher orders mean fewer trained values and smaller shared factors.  A dimension
            with fewer prime factors gets size-1 modes (2 -> 1 x 2, a prime p -> 1 x p), so every ``nn.Linear``
            shape, e.g. a 20 -> 2 classifier head, works without a ``tensor_shape``.
        tensor_shape (`dict[str, list[list[int]]]`, *optional*):
            Explicit split per weight shape, keyed ``"<d_out>x<d_in>"``: ``{"4096x11008": [[64, 64], [86, 128]]}``.
            Shapes not listed use ``tensor_order``.
        core_rank_ratio (`float`, defaults to `1.0`):
            Core rank of each mode as a fraction of its size.  ``1.0`` is the full core (``dW`` can reach full rank);
            ``0.5`` shrinks every rank to ``I_n / 2``: fewer trained values, a 16x smaller core for order 2, still
            rank up to ``d / 4``.
        diagonal_placement (`str`, defaults to `"rank"`):
            ``"rank"`` trains ``sum R_n`` values per matrix (``A_n diag(lambda_n)``); ``"mode"`` trains ``sum I_n``
            (``diag(lambda_n) A_n``), an ablation.
        scaling (`float`, defaults to `1.0`):
            Multiplies ``dW``.  The shared factors are scaled so that ``dW`` has variance ``1/d_in`` per entry when
            all lambdas are one, so the learning rate transfers across shapes; vector methods want large learning
            rates (around 1e-2 to 1e-1 for the lambdas).
        init_lambda (`float`, defaults to `1.0`):
            Starting value of the diagonals other than the zero one.
        zero_init_mode (`int`, defaults to `0`):
            The mode whose diagonal starts at zero, so ``dW = 0`` at step 0 and the model starts as the pretrained one.
        init_weights (`bool`, defaults to `True`):
            ``False`` draws every diagonal around ``init_lambda`` with no zero one (``dW != 0``); for tests only.
        projection_prng_key (`int`, defaults to `0`):
            Seed of the shared frozen factors.  All TeRA adapters on one model share factors and must use the same key.
        share_factors (`bool`, defaults to `True`):
            ``True``: one core and set of factor matrices per tensor plan, shared by every layer with that plan (the
            TeRA design: frozen memory does not grow with depth).  ``False``: every layer draws its own factors from
            a stream named after the layer, an ablation; same trained values and rank bound, but the frozen factors
            then cost about one extra weight per adapted layer for a full core.
        save_projection (`bool`, defaults to `False`):
            Store the shared factors in the adapter file.  A full core is as large as the weight itself (hundreds of
            MB for a 7B model), so by default they are regenerated from the key and only a checksum is stored.
        projection_checksums (`dict[str, str]`):
            Filled in automatically when the adapter is created, one per factor group (tensor plan): a digest of the
            factors together with ``diagonal_placement`` and ``scaling``.  The adapter's state dict carries the same
            checksums, so a state dict loads into any model built from the same config (``get_peft_model`` then
            ``set_peft_model_state_dict``, or ``from_pretrained`` with ``config=``).  Every load checks them, so
            regenerated factors that differ (another key, another PyTorch version) or an edited placement or scaling
            fail loudly instead of silently changing the model; only a file saved before state dicts carried checksums
            needs the config saved beside it.  Load in a process that has run ``import tera`` (without it PEFT stops
            with ``KeyError: 'TERA'``).
        forward_path (`str`, defaults to `"auto"`):
            ``"factorised"`` contracts the input through the factors (cheap for shrunk cores and few tokens),
            ``"merged"`` builds ``W + dW`` and runs one matmul with a custom backward (cheap for full cores and many
            tokens); ``"auto"`` times both on first use per layer shape and token count and keeps the faster.
        cache_merged_weight (`bool`, defaults to `False`):
            Trade memory for speed: each adapted layer keeps ``W + dW`` (one extra weight-sized tensor per layer,
            alive between steps) and rebuilds it only when the lambdas, the weight or the factors change, i.e. once
            per optimizer step.  The merged path then builds ``dW`` once per step instead of twice per micro-batch
            (forward, and backward's recompute), and unmerged inference pays nothing after the first call.  Full
            fine-tuning keeps three weight-sized tensors per layer (gradient, two AdamW moments); this keeps one.
            Changes made through ``.data`` are invisible to it: call ``release_merged_cache()`` on the model after
            such edits.  Not combinable with ``forward_path="factorised"``.
        modules_to_save (`list[str]`, *optional*):
            Modules besides the TeRA layers to train and save, e.g. a classifier head.
        layers_to_transform (`Union[list[int], int]`, *optional*):
            Indices of the layers to adapt; requires ``layers_pattern`` for non-standard models.
        layers_pattern (`Union[list[str], str]`, *optional*):
            Name of the ``nn.ModuleList`` holding the layers, e.g. ``"layers"`` or ``"h"``.
    """

    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "nn.Linear module names or a regex to adapt with TeRA."}
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or a regex to exclude from TeRA."}
    )
    tensor_order: int = field(default=2, metadata={"help": "Balanced factors per side of each weight."})
    tensor_shape: dict[str, list[list[int]]] | None = field(
        default=None, metadata={"help": "Explicit split per weight shape, keyed '<d_out>x<d_in>'."}
    )
    core_rank_ratio: float = field(default=1.0, metadata={"help": "Core rank per mode as a fraction of its size."})
    diagonal_placement: str = field(default="rank", metadata={"help": "'rank' (default) or 'mode' (ablation)."})
    scaling: float = field(default=1.0, metadata={"help": "Multiplier of dW."})
    init_lambda: float = field(default=1.0, metadata={"help": "Initial value of the non-zero diagonals."})
    zero_init_mode: int = field(default=0, metadata={"help": "Mode whose diagonal starts at zero (dW = 0)."})
    init_weights: bool = field(default=True, metadata={"help": "False: random non-zero diagonals (tests only)."})
    projection_prng_key: int = field(default=0, metadata={"help": "Seed of the shared frozen factors."})
    share_factors: bool = field(
        default=True, metadata={"help": "Share factors across layers with one tensor plan (False: per layer)."}
    )
    save_projection: bool = field(default=False, metadata={"help": "Store shared factors in the adapter file."})
    projection_checksums: dict[str, str] = field(
        default_factory=dict, metadata={"help": "Digest per tensor plan of the regenerated shared factors."}
    )
    forward_path: str = field(default="auto", metadata={"help": "'auto', 'factorised' or 'merged'."})
    cache_merged_weight: bool = field(
        default=False, metadata={"help": "Keep W + dW per layer between optimizer steps (memory for speed)."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules besides TeRA layers to train and save."}
    )
    layers_to_transform: list[int] | int | None = field(default=None, metadata={"help": "Layer indices to adapt."})
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer ModuleList, used with layers_to_transform."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        self.target_modules = set(self.target_modules) if isinstance(self.target_modules, list) else self.target_modules
        self.exclude_modules = (
            set(self.exclude_modules) if isinstance(self.exclude_modules, list) else self.exclude_modules
        )
        if self.diagonal_placement not in PLACEMENTS:
            raise ValueError(f"diagonal_placement must be one of {PLACEMENTS}, got {self.diagonal_placement!r}.")
        if self.forward_path not in FORWARD_PATHS:
            raise ValueError(f"forward_path must be one of {FORWARD_PATHS}, got {self.forward_path!r}.")
        if self.cache_merged_weight and self.forward_path == "factorised":
            raise ValueError(
                "cache_merged_weight=True keeps W + dW for the merged path; it cannot be combined with "
                "forward_path='factorised' (use 'auto' or 'merged')."
            )
        if self.tensor_order < 1:
            raise ValueError(f"tensor_order must be at least 1, got {self.tensor_order}.")
        if not 0.0 < self.core_rank_ratio <= 1.0:
            raise ValueError(f"core_rank_ratio must lie in (0, 1], got {self.core_rank_ratio}.")
        if not 0 <= self.zero_init_mode < 2 * self.tensor_order and not self.tensor_shape:
            raise ValueError(
                f"zero_init_mode must index one of the {2 * self.tensor_order} modes, got {self.zero_init_mode}."
            )
        if self.layers_pattern and self.layers_to_transform is None:  # 0 is a layer index, not a missing value
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")
