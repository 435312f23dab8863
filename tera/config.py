"""Configuration of a TeRA adapter."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from peft.config import PeftConfig

from .factors import FACTOR_INITS
from .tensorize import LAYOUTS, WHOLE_SIDES


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
        layout (`str`, defaults to `"whole-side"`):
            How a weight's update is folded into a tensor. ``"whole-side"`` is the paper's: one side of the matrix
            stays whole as a single mode and the other is split into modes of ``mode_size``: a 4096 x 4096 weight is
            ``(4096, 8, 8, 8, 8)`` and trains 4096 + 32 = 4,128 values (264,192 on LLaMA-2-7B's q and v). Full core
            ranks make ``G`` as large as the weight and the whole side's factor ``A_1`` a 4096 x 4096 matrix, both
            shared by every layer of that shape. ``"balanced"`` is the suite's own variant: both sides split into
            ``tensor_order`` balanced modes (``(64, 64, 64, 64)``, 256 values, much cheaper frozen factors).
        mode_size (`int`, defaults to `8`):
            Size of the equal modes of the split side in the ``whole-side`` layout. A size that is no power of it
            (1024, 11008, 576, 384) is split into the fewest modes of at most about that size, as equal as possible
            (``1024 -> 4, 4, 8, 8``; ``11008 -> 4, 4, 4, 4, 43``); the run record keeps the resulting plan.
        whole_side (`str`, defaults to `"larger"`):
            Which side stays whole in the ``whole-side`` layout: ``"larger"`` (the output side of a square matrix, the
            paper's first mode), ``"output"`` or ``"input"``. LLaMA-3-8B's v (1024 x 4096) keeps its 4096 input side
            whole with ``larger`` (the paper's Table 2 count, 0.0033%) and its 1024 output side with ``output`` (Tables
            3 and 4, 0.0021%).
        tensor_order (`int`, defaults to `2`):
            Modes per side of the ``balanced`` layout: ``d_out`` and ``d_in`` are each split into this many balanced
            factors (4096 -> 64 x 64, 11008 -> 86 x 128).  Higher orders mean fewer trained values and smaller shared
            factors.  A dimension with fewer prime factors gets size-1 modes (2 -> 1 x 2, a prime p -> 1 x p), so
            every ``nn.Linear`` shape, e.g. a 20 -> 2 classifier head, works without a ``tensor_shape``.
        tensor_shape (`dict[str, list[list[int]]]`, *optional*):
            Explicit split per weight shape, keyed ``"<d_out>x<d_in>"``: ``{"4096x11008": [[64, 64], [86, 128]]}``.
            Shapes not listed follow ``layout``.
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
        zero_init_mode (`int`, *optional*):
            The mode whose diagonal starts at zero, so ``dW = 0`` at step 0 and the model starts as the pretrained one;
            the others start at ``init_lambda``. By default the whole side's mode in the ``whole-side`` layout (the
            paper's mode 1) and mode 0 in the ``balanced`` one.
        factor_init (`str`, defaults to `"orthonormal"`):
            How the frozen factors ``A_n`` are drawn: ``"orthonormal"`` (scaled random orthonormal columns: the
            suite's choice, the paper does not say) or ``"identity"`` (the paper's Figure 6 ablation); the core is
            random either way.
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
    layout: str = field(default="whole-side", metadata={"help": "'whole-side' (the paper's) or 'balanced'."})
    mode_size: int = field(default=8, metadata={"help": "Size of the split side's modes in the whole-side layout."})
    whole_side: str = field(default="larger", metadata={"help": "'larger', 'output' or 'input' side kept whole."})
    tensor_order: int = field(default=2, metadata={"help": "Balanced factors per side (balanced layout)."})
    tensor_shape: dict[str, list[list[int]]] | None = field(
        default=None, metadata={"help": "Explicit split per weight shape, keyed '<d_out>x<d_in>'."}
    )
    core_rank_ratio: float = field(default=1.0, metadata={"help": "Core rank per mode as a fraction of its size."})
    diagonal_placement: str = field(default="rank", metadata={"help": "'rank' (default) or 'mode' (ablation)."})
    scaling: float = field(default=1.0, metadata={"help": "Multiplier of dW."})
    init_lambda: float = field(default=1.0, metadata={"help": "Initial value of the non-zero diagonals."})
    zero_init_mode: int | None = field(
        default=None, metadata={"help": "Mode whose diagonal starts at zero (dW = 0); None: the layout's default."}
    )
    factor_init: str = field(default="orthonormal", metadata={"help": "'orthonormal' (random) or 'identity'."})
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
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}.")
        if self.whole_side not in WHOLE_SIDES:
            raise ValueError(f"whole_side must be one of {WHOLE_SIDES}, got {self.whole_side!r}.")
        if self.mode_size < 2:
            raise ValueError(f"mode_size must be at least 2, got {self.mode_size}.")
        if self.factor_init not in FACTOR_INITS:
            raise ValueError(f"factor_init must be one of {FACTOR_INITS}, got {self.factor_init!r}.")
        balanced_modes = 2 * self.tensor_order
        if self.zero_init_mode is not None and self.zero_init_mode < 0:
            raise ValueError(f"zero_init_mode must index a mode (0 or more), got {self.zero_init_mode}.")
        if self.layout == "balanced" and self.zero_init_mode is not None and not self.tensor_shape:
            if self.zero_init_mode >= balanced_modes:
                raise ValueError(
                    f"zero_init_mode must index one of the {balanced_modes} modes, got {self.zero_init_mode}."
                )
        if self.layers_pattern and self.layers_to_transform is None:  # 0 is a layer index, not a missing value
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")
