"""What resident adapters hold, read off a PEFT model of any method: each adapter's own tensors, the frozen tensors
shared by all (TeRA's core and factors, counted once), and the mixed-batch cache (TeRA's stacked per-row tables)."""

from __future__ import annotations

import dataclasses

import torch


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def cuda_allocated(device: str) -> int | None:
    """Bytes CUDA's allocator holds for tensors now (None on a CPU, where the process RSS is too coarse to say)."""
    if not str(device).startswith("cuda"):
        return None
    sync(device)
    return torch.cuda.memory_allocated()


def tuner_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The adapted layers (PEFT's ``BaseTunerLayer``), collected once: walking the model per adapter would cost as
    much as PEFT's own add does."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def adapter_tensors(layers: list[torch.nn.Module], name: str) -> list[torch.Tensor]:
    """The tensors that belong to adapter ``name`` alone, over every adapted layer (PEFT's ``adapter_layer_names``:
    LoRA's A and B, TeRA's diagonals)."""
    out: list[torch.Tensor] = []
    for layer in layers:
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr, None)
            if container is None or name not in container:
                continue
            held = container[name]
            out += [held] if isinstance(held, torch.Tensor) else [*held.parameters(), *held.buffers()]
    return out


def added_buffer_bytes(model: torch.nn.Module, base_buffer_ids: set[int]) -> int:
    """Bytes of the buffers the method added to the model (TeRA's shared frozen core and factors), each counted once
    however many adapters use it."""
    added = {id(b): b for b in model.buffers() if id(b) not in base_buffer_ids}
    return sum(b.numel() * b.element_size() for b in added.values())


def table_bytes(layers: list[torch.nn.Module]) -> int:
    """Bytes of the mixed-batch cache the layers keep (TeRA: a stacked table of every resident adapter's per-row
    vectors per layer and factor group, ``tera.mixed.RowTable``; LoRA keeps none)."""
    total = 0
    for layer in layers:
        for table in getattr(layer, "_tera_row_tables", {}).values():
            for field in dataclasses.fields(table):
                value = getattr(table, field.name)
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
    return total
