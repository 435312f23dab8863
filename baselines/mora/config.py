"""Configuration of a MoRA adapter."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from peft.config import PeftConfig


class MoraPeftType(str, enum.Enum):
    """MoRA's PEFT type: a str enum member like PEFT's own ``PeftType`` ones (``.value``, equal to ``"MORA"``)."""

    MORA = "MORA"


PEFT_TYPE = MoraPeftType.MORA
MORA_TYPES = (1, 6)


@dataclass
class MoraConfig(PeftConfig):
    """Configuration of a [`MoraModel`]: MoRA, high-rank updating with one trained square matrix per layer.

    Each adapted ``d_out x d_in`` weight gets ``dW = decompress o M o compress``: ``M`` is a trained
    ``r_hat x r_hat`` matrix, compression (``R^{d_in} -> R^{r_hat}``) and decompression (``R^{r_hat} -> R^{d_out}``)
    are fixed and parameter-free, so ``dW`` is a linear function of ``M`` and merges into the weight.

    Args:
        r (`int`, defaults to `8`):
            The LoRA rank whose parameter budget MoRA matches: each layer trains ``r_hat^2`` values with
            ``r_hat = floor(sqrt((d_in + d_out) * r))``, so ``r_hat^2 <= r * (d_in + d_out)``, LoRA's count at rank
            ``r``.  Raise it for more capacity, exactly as one would raise a LoRA rank.
        mora_type (`int`, defaults to `6`):
            The compression scheme.  ``1`` ("sharing"): input ``j`` feeds slot ``j mod r_hat`` and output ``i`` reads
            slot ``i mod r_hat``, so ``rank(dW) <= r_hat``; the paper's choice for large ``r``.  ``6`` ("decoupling
            with rotation"): the input is cut into chunks of ``r_hat``, each chunk is rotated RoPE-style by an angle
            that depends on its block and multiplied by ``M``, so ``dW`` is block diagonal with blocks ``M R_b`` and can
            reach full rank; the paper's choice for small ``r``.
        target_modules (`Union[list[str], str]`):
            Names (or a regex) of the `nn.Linear` modules to adapt, e.g. ``["q_proj", "v_proj"]``; ``None`` uses
            PEFT's LoRA defaults for known transformers architectures.
        exclude_modules (`Union[list[str], str]`, *optional*):
            Names (or a regex) of modules to leave alone, e.g. to skip one layer that ``target_modules`` matches.
        init_weights (`bool`, defaults to `True`):
            ``True`` starts ``M`` at zero (``dW = 0``: the model starts as the pretrained one).  ``False`` draws ``M``
            at random (``dW != 0``), for tests that need a non-trivial update.
        modules_to_save (`list[str]`, *optional*):
            Modules besides the MoRA layers to train and save, e.g. a freshly initialised classifier head.
        layers_to_transform (`Union[list[int], int]`, *optional*):
            Indices of the layers to adapt, to restrict MoRA to some blocks of the model; requires ``layers_pattern``
            for non-standard models.
        layers_pattern (`Union[list[str], str]`, *optional*):
            Name of the ``nn.ModuleList`` holding the layers, e.g. ``"layers"`` or ``"h"``; used with
            ``layers_to_transform``.
    """

    r: int = field(default=8, metadata={"help": "LoRA-equivalent rank; r_hat = floor(sqrt((d_in + d_out) * r))."})
    mora_type: int = field(default=6, metadata={"help": "1 (sharing, large r) or 6 (decoupling with rotation)."})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "nn.Linear module names or a regex to adapt with MoRA."}
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or a regex to exclude from MoRA."}
    )
    init_weights: bool = field(default=True, metadata={"help": "True: M = 0 (dW = 0); False: random M (tests)."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules besides MoRA layers to train and save."}
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
        if self.mora_type not in MORA_TYPES:
            raise ValueError(f"mora_type must be one of {MORA_TYPES}, got {self.mora_type!r}.")
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r must be an integer of at least 1, got {self.r!r}.")
        if self.layers_pattern and self.layers_to_transform is None:  # 0 is a layer index, not a missing value
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")
