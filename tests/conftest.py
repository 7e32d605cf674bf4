"""Shared test settings. Every test builds its own small data; nothing is downloaded."""
import os

import pytest
import torch

# Tests must never reach a model hub: the loaders must fail fast with a clear message instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Two cores: one intra-op thread per test process keeps runs predictable.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # Some code under test sets the thread count for its own run (training's cpu_threads); reset it
    # so a test never inherits another's setting (CPU float sums depend on the thread count).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
