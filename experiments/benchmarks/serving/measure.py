"""One method's serving figures, in the process that holds its model: resident adapters (memory, load time, decode
with N resident), the mixed-batch correctness check, and single timed calls of prefill and decode with ``k`` distinct
adapters per batch through PEFT's ``adapter_names=``, or on the merged single adapter.  The frozen base model is a
``ServingBench`` too (method ``base``): the reference of every ratio."""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from experiments.benchmarks.efficiency.measure import build_model
from experiments.benchmarks.serving.adapters import (
    adapter_tensors,
    added_buffer_bytes,
    cuda_allocated,
    sync,
    table_bytes,
    tuner_layers,
)
from experiments.benchmarks.serving.check import mixed_batch_check
from experiments.benchmarks.serving.presets import add_budget, serving_spec

PROBE = "probe"  # the name under which the saved adapter is loaded (and deleted again) to time load_adapter
SEED = 1000  # adapter i's random values come from seed SEED + i: the same adapters in every process and run


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def decode_s(model, ids: torch.Tensor, tokens: int, device: str, **kwargs: Any) -> float:
    """Median seconds per generated token for the whole batch, greedy with a KV cache (the first step not counted);
    ``kwargs`` (``adapter_names``) go with every call, the prefill's included."""
    out = model(input_ids=ids, use_cache=True, **kwargs)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    times = []
    for _ in range(tokens):

        def step():
            nonlocal past, token
            result = model(input_ids=token, past_key_values=past, use_cache=True, **kwargs)
            past, token = result.past_key_values, result.logits[:, -1:].argmax(-1)

        times.append(timed(step, device))
    return statistics.median(times[1:] if len(times) > 1 else times)


class ServingBench:
    """A method's model with its resident adapters (``default``, ``a1``, ``a2``, ...) and a copy with ``default``
    merged in, kept alive in its own process across the rounds of a benchmark."""

    def __init__(self, preset: dict[str, Any], entry: str | dict[str, Any]) -> None:
        from baselines import apply_method, make_peft_config

        self.preset, self.device = preset, preset["device"]
        self.spec = serving_spec(entry)
        torch.manual_seed(0)
        self.model = build_model(preset)
        gen = torch.Generator().manual_seed(1)
        shape = (preset["batch"], preset["seq"])
        self.ids = torch.randint(0, preset["model"]["vocab"], shape, generator=gen).to(self.device)
        self.row: dict[str, Any] = {"method": self.spec["name"], "peft": self.spec["peft"]}
        self.model.eval()
        if self.spec["method"] == "base":
            return
        base_buffers = {id(b) for b in self.model.buffers()}
        method, targets, peft = self.spec["method"], preset["targets"], self.spec["peft"]
        torch.manual_seed(SEED)
        self.model = apply_method(self.model, method, targets, task_type="CAUSAL_LM", **peft)
        self.config = make_peft_config(method, targets, None, "CAUSAL_LM", **peft)
        self.model.eval()
        self.layers = tuner_layers(self.model)
        self.names = ["default"]
        # The single-tenant reference: a copy with the first adapter folded into the weights (no adapter code left).
        self.merged = copy.deepcopy(self.model).merge_and_unload()
        self.merged.eval()
        own = adapter_tensors(self.layers, "default")
        self.row["trainable_per_adapter"] = sum(t.numel() for t in own)
        self.row["adapter_dtype"] = str(own[0].dtype).split(".")[-1]
        self.row["shared_frozen_bytes"] = added_buffer_bytes(self.model, base_buffers)
        self.folder = tempfile.TemporaryDirectory()
        self.model.save_pretrained(self.folder.name, selected_adapters=["default"])
        self.row["adapter_file_bytes"] = (Path(self.folder.name) / "adapter_model.safetensors").stat().st_size
        self.row.update(sweep=[], sweep_stop=None, add_s=0.0, add_budget_s=add_budget(preset, self.spec["name"]))
        self.stretch = (0.0, 0)  # seconds and adapters added since the last checkpoint

    # --- resident adapters ---

    def grow(self, upto: int, forced: bool) -> int:
        """Add adapters up to ``upto``, taking each ``resident`` checkpoint's figures on the way; unless ``forced``,
        stop before a checkpoint that the adding budget would not cover (said in ``sweep_stop``)."""
        if not self.row["sweep"]:
            self.row["sweep"].append(self._checkpoint())
        for target in (n for n in self.preset["resident"] if len(self.names) < n <= upto):
            estimate = self._estimate_s(target)
            if not forced and self.row["add_s"] + estimate > self.row["add_budget_s"]:
                self.row["sweep_stop"] = {"next": target, "estimate_s": estimate, "spent_s": self.row["add_s"]}
                break
            while len(self.names) < target:
                self._add_one()
            self.model.eval()  # new adapter modules start in training mode; adapter_names= needs eval mode
            self.row["sweep"].append(self._checkpoint())
        return len(self.names)

    def _add_one(self) -> None:
        name = f"a{len(self.names)}"
        torch.manual_seed(SEED + len(self.names))  # the method's own random initialisation, seeded per adapter
        seconds = timed(lambda: self.model.add_adapter(name, copy.deepcopy(self.config)), self.device)
        self.names.append(name)
        self.row["add_s"] += seconds
        self.stretch = (self.stretch[0] + seconds, self.stretch[1] + 1)

    def _estimate_s(self, target: int) -> float:
        """Seconds to add adapters up to ``target``: PEFT walks the whole model on every add, so the time per add
        grows with the adapters already there; a line a + b N through the last two stretches' rates (a rate
        proportional to N when only one is known)."""
        rates = [(c["rate_at"], c["add_s_per_adapter"]) for c in self.row["sweep"] if c["add_s_per_adapter"]]
        n = len(self.names)
        if not rates:
            return 0.0
        if len(rates) == 1:
            a, b = 0.0, rates[-1][1] / rates[-1][0]
        else:
            (n1, r1), (n2, r2) = rates[-2:]
            b = max((r2 - r1) / (n2 - n1), 0.0)
            a = max(r2 - b * n2, 0.0)
        return a * (target - n) + b * (target**2 - n**2) / 2

    def _checkpoint(self) -> dict[str, Any]:
        """Figures with the adapters resident now: bytes per adapter, the serving cache, load time, decode time."""
        n, batch = len(self.names), self.preset["batch"]
        seconds, added = self.stretch
        self.stretch = (0.0, 0)
        own = sum(t.numel() * t.element_size() for name in self.names for t in adapter_tensors(self.layers, name))
        k = min(n, batch)
        self.infer("decode", k)  # warm: rebuilds TeRA's stacked tables for the adapters now resident
        decode = self.infer("decode", k)
        cache = table_bytes(self.layers)
        return {
            "resident": n,
            "own_bytes_per_adapter": own / n,
            "cache_bytes_per_adapter": cache / n,
            "cuda_allocated_bytes": cuda_allocated(self.device),
            "add_s_per_adapter": seconds / added if added else None,
            "rate_at": n - added / 2,  # the middle of the stretch the rate was taken over
            "load_ms": 1000 * self._load_s(),
            "decode_k": k,
            "decode_ms_per_token": 1000 * decode,
        }

    def _load_s(self) -> float:
        """Median seconds of PEFT's ``load_adapter`` of the saved first adapter, with the others resident."""
        times = []
        for _ in range(self.preset["load_repeats"]):
            times.append(timed(lambda: self.model.load_adapter(self.folder.name, adapter_name=PROBE), self.device))
            self.model.delete_adapter(PROBE)
        self.model.eval()
        return statistics.median(times)

    # --- inference ---

    def infer(self, kind: str, k: int | str | None) -> float:
        """Seconds of one ``prefill`` of the batch, or per token of a ``decode``: with ``k`` distinct adapters
        (row b uses adapter b mod k) through ``adapter_names=``, or ``"merged"`` (the single merged adapter); the
        base model ignores ``k``."""
        model, kwargs = self.model, {}
        if self.spec["method"] != "base":
            if k == "merged":
                model = self.merged
            else:
                kwargs = {"adapter_names": [self.names[b % int(k)] for b in range(self.preset["batch"])]}
        if kind == "prefill":
            with torch.no_grad():
                return timed(lambda: model(input_ids=self.ids, **kwargs), self.device)
        return decode_s(model, self.ids, self.preset["decode_tokens"], self.device, **kwargs)

    def check(self) -> None:
        """Into the row: mixed batch = each adapter alone, and merged = unmerged (:mod:`.check`)."""
        self.row["check"] = mixed_batch_check(self.model, self.merged, self.ids, self.names, self.preset)

    def finish(self) -> dict[str, Any]:
        if self.spec["method"] != "base":
            self.row["resident_reached"] = len(self.names)
            self.folder.cleanup()
        return self.row
