"""Shared fixtures: Hypothesis profiles, seeds, and NaN poisoning of fresh outputs.

Hypothesis profile from ``HYPOTHESIS_PROFILE``: ``ci`` (default; derandomized, so CI is
reproducible, and small) or ``gpu`` (many more examples, for ``pytest -m gpu`` on a GPU machine).
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=100, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "gpu", max_examples=300, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A NumPy generator seeded from the test's id: the same for every run of that test."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _fill_nan(x):
    if x.is_floating_point():
        x.fill_(float("nan"))
    return x


@pytest.fixture
def poison():
    """``poison(tensor)``: fill a freshly allocated float tensor with NaN in place and return it,
    so that an element the code under test never writes fails the check loudly."""
    return _fill_nan


@pytest.fixture
def poisoned_allocations(monkeypatch):
    """Make ``torch.empty``, ``torch.empty_like`` and ``Tensor.new_empty`` return NaN-filled
    float tensors for the duration of the test: a kernel that leaves part of its output
    unwritten produces NaN, which every check rejects."""
    torch = pytest.importorskip("torch")
    empty, empty_like, new_empty = torch.empty, torch.empty_like, torch.Tensor.new_empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _fill_nan(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _fill_nan(empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: _fill_nan(new_empty(self, *a, **k)))
