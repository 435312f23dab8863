import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _tera_paths_by_cost_model(monkeypatch):
    """forward_path="auto" picks a path by timing it (tera/autotune.py), so which float32 contraction order runs could
    depend on the machine's load; tests compare outputs at tight tolerances and use the deterministic cost model
    instead, unless a test turns timing on (tests/test_autotune.py, the benchmark's round-robin test)."""
    monkeypatch.setenv("TERA_AUTOTUNE", "0")
