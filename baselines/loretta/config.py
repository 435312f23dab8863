"""Configuration of a LoRETTA adapter (the re-parameterised, mergeable form, LoRETTA_rep)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from peft.config import PeftConfig


class LorettaPeftType(str, enum.Enum):
    """LoRETTA's PEFT type: a str enum member like PEFT's own ``PeftType`` ones (``.value``, equal to ``"LORETTA"``)."""

    LORETTA = "LORETTA"


PEFT_TYPE = LorettaPeftType.LORETTA


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class LorettaConfig(PeftConfig):
    """Configuration of a [`LorettaModel`]: LoRETTA_rep (Yang et al., NAACL 2024), tensor-train factors of a LoRA-like
    update.

    Each adapted ``d_out x d_in`` weight gets ``dW = scaling * B^T A`` with ``A`` an ``r x d_in`` and ``B`` an
    ``r x d_out`` matrix, as in LoRA, but neither is trained directly: each is folded into a tensor and held as a
    tensor train (TT), ``T(i_1, .., i_K) = G_1[i_1] G_2[i_2] .. G_K[i_K]`` with cores ``G_k`` of shape
    ``R_{k-1} x n_k x R_k`` (``R_0 = R_K = 1``).  The cores are the only trained values; after training ``dW`` is
    built and merged into the weight, so inference costs nothing extra.  This follows the authors' code
    (``yifanycc/loretta``, ``LorettaRepConfig``: two tensorised linear layers through an ``r``-wide bottleneck, TT ranks
    ``tensor_rank``, scaling ``lora_alpha / r``); the paper leaves open, and this implementation chooses, what the
    fields below say.

    Choices of this implementation (where the paper and the authors' code are silent or do otherwise):

    - Tensorisation.  The authors fold each factor with a lookup table per hidden size and ``r`` (e.g. ``4096 x 8`` as
      ``16, 16, 8, 4, 4``), which exists only for a few hidden sizes.  Here every shape is folded by one rule: the
      ``r`` side and the ``d`` side are each split into the fewest modes of at most ``max_mode_size`` (a prime factor
      above it stays one mode), as equal as possible, largest first; the factor's modes are the ``r`` modes followed
      by the ``d`` modes (``r = 72, d = 4096, max_mode_size = 32``: ``9, 8, 16, 16, 16``).  Keeping the two sides
      apart puts one TT bond exactly between them, so ``rank(A) <= R`` at that bond and the rank report has a real
      TT rank bound: ``rank(dW) <= min(r, R, d_out, d_in)``.
    - TT ranks.  ``R_k = min(tensor_rank, n_1..n_k, n_{k+1}..n_K)``: a bond is never wider than either side of the
      tensor it separates (wider bonds only add redundant values), so tiny layers (a 3-class head) work as they are.
    - Initialisation.  The authors draw every core from a Gaussian so that the folded factor has standard deviation
      ``sqrt(1 / (d + r))``; both factors random makes ``dW != 0`` at step 0.  Here the same Gaussian cores are drawn,
      and then the last core of ``B`` is set to zero (LoRA's ``B = 0`` choice), so ``dW = 0`` and the model starts as
      the pretrained one; that core gets a gradient at once and the others from the second step on.
    - Scaling is a plain number (``2.0``, the authors' ``lora_alpha / r = 16 / 8``), not ``alpha / r``: with the TT bond
      between the two sides, ``B^T A`` sums over at most ``R`` directions whatever ``r`` is, so dividing by ``r`` would
      not keep the update's size.
    - No dropout (the authors use 0.05 on LLaMA): the suite's other methods train without it, and it leaves the
      trained count unchanged.  The authors also train LLaMA's RMSNorm weights beside LoRETTA; the suite does not
      (every method adapts the same modules).

    Defaults.  ``r = 72, tensor_rank = 8, max_mode_size = 32`` give 5,520 trained values on a 4096 x 4096 weight and
    5,648 on a 1024 x 4096 one: 353,280 on LLaMA-2-7B's q and v (0.0052% of 6,738,415,616 + trained) and 357,376 on
    LLaMA-3-8B's (0.0045%), the TeRA paper's LoRETTA percentages to four decimals.  The paper does not say which
    configuration it ran; this is the one whose count reproduces both.  ``r = 64`` (the nearest power of two) gives
    0.0052% and 0.0044%; the authors' LLaMA script uses ``r = 8, tensor_rank = 8`` (3,904 values on 4096 x 4096 with
    their tensor shapes).

    Args:
        r (`int`, defaults to `72`):
            Width of the bottleneck: ``A`` is ``r x d_in`` and ``B`` is ``r x d_out``.  With the TT bond between the
            ``r`` and ``d`` modes the update's rank is at most ``min(r, tensor_rank)``; a larger ``r`` adds values to
            the ``r`` modes.  Lower it (e.g. to the authors' 8) for fewer trained values.
        tensor_rank (`int`, defaults to `8`):
            TT rank ``R`` of every interior bond of both factors (clamped per bond, see above).  Trained values grow
            about as ``R^2`` times the sum of the interior mode sizes; ``rank(dW) <= R``.  The authors use 5 (their
            package default) or 8 (their LLaMA runs).
        max_mode_size (`int`, defaults to `32`):
            Largest mode of the tensorisation rule (a larger prime factor of a size stays one mode).  Smaller modes
            mean more cores, fewer values per core and fewer trained values (4096 -> ``16, 16, 16`` at 32 or at 16,
            ``8, 8, 8, 8`` at 8; 1024 -> ``32, 32`` at 32, ``16, 8, 8`` at 16).
        scaling (`float`, defaults to `2.0`):
            Multiplies ``B^T A``.  With ``B`` starting at zero it sets how fast ``dW`` grows for a given learning rate.
        target_modules (`Union[list[str], str]`):
            Names (or a regex) of the `nn.Linear` modules to adapt, e.g. ``["q_proj", "v_proj"]``; ``None`` uses
            PEFT's LoRA defaults for known transformers architectures (the authors' choice too).
        exclude_modules (`Union[list[str], str]`, *optional*):
            Names (or a regex) of modules to leave alone, e.g. to skip one layer that ``target_modules`` matches.
        init_weights (`bool`, defaults to `True`):
            ``True`` zeroes the last core of ``B`` (``dW = 0``: the model starts as the pretrained one).  ``False``
            leaves every core random (``dW != 0``, the authors' initialisation), for tests that need a non-trivial
            update.
        modules_to_save (`list[str]`, *optional*):
            Modules besides the LoRETTA layers to train and save, e.g. a freshly initialised classifier head.
        layers_to_transform (`Union[list[int], int]`, *optional*):
            Indices of the layers to adapt; requires ``layers_pattern`` for non-standard models.
        layers_pattern (`Union[list[str], str]`, *optional*):
            Name of the ``nn.ModuleList`` holding the layers, e.g. ``"layers"`` or ``"h"``; used with
            ``layers_to_transform``.
    """

    r: int = field(default=72, metadata={"help": "Bottleneck width: A is r x d_in, B is r x d_out."})
    tensor_rank: int = field(default=8, metadata={"help": "TT rank of every interior bond (clamped per bond)."})
    max_mode_size: int = field(default=32, metadata={"help": "Largest mode of the tensorisation rule."})
    scaling: float = field(default=2.0, metadata={"help": "dW = scaling * B^T A."})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "nn.Linear module names or a regex to adapt with LoRETTA."}
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or a regex to exclude from LoRETTA."}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "True: B's last core is zero (dW = 0); False: every core random (tests)."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules besides LoRETTA layers to train and save."}
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
        for name, least in (("r", 1), ("tensor_rank", 1), ("max_mode_size", 2)):
            value = getattr(self, name)
            if not _whole(value) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}.")
        if not _finite(self.scaling):
            raise ValueError(f"scaling must be a finite number, got {self.scaling!r}.")
        if self.layers_pattern and self.layers_to_transform is None:  # 0 is a layer index, not a missing value
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")
