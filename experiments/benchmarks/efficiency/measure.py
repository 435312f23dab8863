"""One method's figures, taken in the process that holds its model: train steps, memory, optimizer state, storage,
merge, and inference (prefill of a batch, per-token decode with a KV cache).  Models are built from a config with
random weights (honest for cost, not accuracy)."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from experiments.benchmarks.efficiency.presets import method_spec


def build_model(preset: dict[str, Any]):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = preset["model"]
    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["heads"],
        max_position_embeddings=max(preset["seq"] + preset["decode_tokens"], 64),
    )
    with torch.device(preset["device"]):
        return LlamaForCausalLM(config).to(getattr(torch, preset["dtype"]))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS, KiB on Linux


def _added_buffer_bytes(model, base_buffer_ids: set[int]) -> int:
    """Bytes of buffers the adapter added (the shared frozen factors of TeRA, VeRA, RandLoRA), each counted once."""
    added = {id(b): b for b in model.buffers() if id(b) not in base_buffer_ids}
    return sum(b.numel() * b.element_size() for b in added.values())


@torch.no_grad()
def _prefill_s(model, ids: torch.Tensor, device: str) -> float:
    """Seconds of one forward over the whole batch."""
    model.eval()
    return _timed(lambda: model(input_ids=ids), device)


@torch.no_grad()
def _decode_s(model, ids: torch.Tensor, tokens: int, device: str) -> float:
    """Median seconds per generated token for the whole batch, with a KV cache (the first token's step not counted)."""
    model.eval()
    out = model(input_ids=ids, use_cache=True)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(tokens):

        def step():
            nonlocal past, token
            result = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = result.past_key_values, result.logits[:, -1:].argmax(-1)

        times.append(_timed(step, device))
    return statistics.median(times[1:] if len(times) > 1 else times)


def _inference(model, preset: dict[str, Any], ids: torch.Tensor) -> dict[str, float]:
    """Prefill latency of the whole batch, and decode latency per generated token, one method alone (``measure``)."""
    device = preset["device"]
    _prefill_s(model, ids, device)  # warm-up
    prefill = statistics.median(_prefill_s(model, ids, device) for _ in range(3))
    decode = _decode_s(model, ids, preset["decode_tokens"], device)
    return {"prefill_ms": 1000 * prefill, "decode_ms_per_token": 1000 * decode}


class MethodBench:
    """One method's model, optimizer and figures, kept alive in its own process across the rounds of a benchmark."""

    def __init__(self, preset: dict[str, Any], entry: str | dict[str, Any]) -> None:
        from baselines import apply_method

        self.preset, self.spec = preset, method_spec(entry)
        self.device = preset["device"]
        torch.manual_seed(0)
        self.model = build_model(preset)
        self.ids = torch.randint(0, preset["model"]["vocab"], (preset["batch"], preset["seq"]), device=self.device)
        self.row: dict[str, Any] = {"method": self.spec["name"], "peft": self.spec["peft"]}
        self.trains = self.spec["method"] != "base"  # the frozen base model: the inference reference only
        self.optimizer = None
        if not self.trains:
            self.row["trainable"] = 0
            return
        self.base_buffer_ids = {id(b) for b in self.model.buffers()}
        self.model = apply_method(self.model, self.spec["method"], preset["targets"], **self.spec["peft"])
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.row["trainable"] = sum(p.numel() for p in params)
        # A real learning rate, so that the adapters move away from dW = 0 and the merge check means something.
        self.optimizer = torch.optim.AdamW(params, lr=1e-3)
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def train_steps(self, count: int) -> list[float]:
        """Seconds of each of ``count`` train steps (forward, backward, AdamW step)."""
        if not self.trains:
            return []
        self.model.train()
        times = []
        for _ in range(count):

            def train_step():
                loss = self.model(input_ids=self.ids, labels=self.ids).loss
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)

            times.append(_timed(train_step, self.device))
        return times

    def release_cache(self) -> None:
        """Give cached activation memory back, so that many methods' processes fit on one GPU side by side."""
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    @property
    def has_adapter(self) -> bool:
        """An adapter that can be merged: inference is timed unmerged and merged (not for base or full FT)."""
        return self.trains and self.spec["method"] != "full"

    def training_figures(self, step_times: list[float]) -> None:
        """Into the row: step time, memory (right after training), optimizer state, storage, the auto paths."""
        row, model, preset = self.row, self.model, self.preset
        if not self.trains:
            return
        if step_times:
            median = statistics.median(step_times)
            row["step_ms"] = 1000 * median
            row["tokens_per_s"] = preset["batch"] * preset["seq"] / median
        row["peak_train_gib"] = _peak_gib(self.device)
        row["optimizer_state_bytes"] = sum(
            t.numel() * t.element_size()
            for state in self.optimizer.state.values()
            for t in state.values()
            if torch.is_tensor(t)
        )
        row["auto_paths"] = _auto_paths()
        if not self.has_adapter:
            row["model_file_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
            return
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            row["adapter_file_bytes"] = os.path.getsize(Path(folder) / "adapter_model.safetensors")
        row["shared_frozen_bytes"] = _added_buffer_bytes(model, self.base_buffer_ids)
        row["adapter_with_shared_bytes"] = row["adapter_file_bytes"] + row["shared_frozen_bytes"]

    def infer(self, kind: str) -> float:
        """Seconds of one ``prefill`` of the batch, or per token of a ``decode``, on the model as it is now."""
        if kind == "prefill":
            return _prefill_s(self.model, self.ids, self.device)
        return _decode_s(self.model, self.ids, self.preset["decode_tokens"], self.device)

    def merge(self) -> None:
        """Fold the adapter into the weights (adapters only): the merge time and the merged = unmerged check go into
        the row, and inference from here on is the merged model's."""
        if not self.has_adapter:
            return
        model = self.model
        model.eval()
        with torch.no_grad():
            unmerged_logits = model(input_ids=self.ids[:1]).logits.float()
        self.row["merge_ms"] = 1000 * _timed(lambda: model.merge_adapter(), self.device)
        with torch.no_grad():
            merged_logits = model(input_ids=self.ids[:1]).logits.float()
        scale = unmerged_logits.abs().max().clamp_min(1e-6)
        self.row["merged_max_rel_diff"] = float((merged_logits - unmerged_logits).abs().max() / scale)
        self.model = model.merge_and_unload()

    def finish(self, step_times: list[float]) -> dict[str, Any]:
        """Every figure in this process, one method after another (``measure``; the benchmark pairs inference)."""
        self.training_figures(step_times)
        if self.has_adapter:
            self.row.update({f"{k}_unmerged": v for k, v in _inference(self.model, self.preset, self.ids).items()})
        self.merge()
        self.row.update({f"{k}_merged": v for k, v in _inference(self.model, self.preset, self.ids).items()})
        return self.row


def _auto_paths() -> dict[str, str]:
    """What TeRA's forward_path=auto chose in this process and from which timings (empty for other methods)."""
    autotune = sys.modules.get("tera.autotune")
    if autotune is None:
        return {}
    out = {}
    for (plan, placement, bucket, dtype, _device, training), choice in autotune.choices().items():
        label = f"{plan} {placement} {'train' if training else 'eval'} <={bucket} tokens {str(dtype).split('.')[-1]}"
        timings = ", ".join(f"{path} {ms:.3g} ms" for path, ms in sorted(choice.ms.items()))
        out[label] = f"{choice.path} ({choice.source}{': ' + timings if timings else ''})"
    return out


def measure(preset: dict[str, Any], entry: str | dict[str, Any]) -> dict[str, Any]:
    """Every figure for one method, in this process: warm-up, then ``rounds x steps`` timed steps in a row."""
    bench = MethodBench(preset, entry)
    bench.train_steps(preset["warmup"])
    times = bench.train_steps(preset["rounds"] * preset["steps"])
    return bench.finish(times)
