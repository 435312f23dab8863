"""Tiny models built from code or configs: fast on a 2-core CPU, with several weight shapes per model."""

from __future__ import annotations

import torch
from torch import nn


class ToyMLP(nn.Module):
    """q: 16x16, up: 24x16, down: 16x24 (like LLaMA's q_proj, up_proj, down_proj), a 3x16 head (3 is prime: TeRA
    gives it a size-1 mode) and an embedding that no method here can target."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(16, 16)
        self.up = nn.Linear(16, 24)
        self.down = nn.Linear(24, 16)
        self.emb = nn.Embedding(10, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.down(torch.relu(self.up(self.q(x)))))


TOY_TARGETS = ["q", "up", "down"]


class ToyClassifier(nn.Module):
    """A small classifier whose head maps 20 features to 2 classes: ``target_modules="all-linear"`` includes the
    20 -> 2 head, which no balanced split into factors larger than 1 fits."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(20, 20)
        self.head = nn.Linear(20, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(x)))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config)


def tiny_roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=64,
        hidden_size=24,
        intermediate_size=36,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=40,
        num_labels=2,
    )
    return RobertaForSequenceClassification(config)


def example_inputs(model: nn.Module, batch: int = 4) -> dict[str, torch.Tensor]:
    """Keyword inputs for one forward pass of a toy model (or of a PeftModel around one), from a fixed generator."""
    generator = torch.Generator().manual_seed(1)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if isinstance(base, ToyMLP):
        return {"x": torch.randn(batch, 7, 16, generator=generator)}
    if isinstance(base, ToyClassifier):
        return {"x": torch.randn(batch, 20, generator=generator)}
    vocab = base.config.vocab_size  # a transformers model
    return {"input_ids": torch.randint(0, vocab, (batch // 2, 9), generator=generator)}


def output_of(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's output tensor (the logits of a transformers model)."""
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out


class Regressor(torch.nn.Module):
    """One linear layer whose output has ``.loss`` (mean squared error): what the training loop needs, nothing more."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor):
        return type("Output", (), {"loss": torch.nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)})()
