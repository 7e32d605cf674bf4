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
def _seed():
    torch.manual_seed(0)
    yield
