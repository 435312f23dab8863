"""Tiny models built from code or configs: fast on a 2-core CPU, with several weight shapes per model."""

from __future__ import annotations

import torch
from torch import nn


class ToyMLP(nn.Module):
    """q: 16x16, up: 24x16, down: 16x24 (like LLaMA's q_proj, up_proj, down_proj), plus an untargeted head."""

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
