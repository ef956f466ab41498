"""Fixtures for the polyvit test suite.

torch is only the oracle: tests that compare against it take the ``torch`` / ``tref`` fixtures
(or call ``pytest.importorskip`` at module level) and are skipped without it, so the rest of
the suite still runs on a machine with numpy only.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/helpers.py, torch_ref.py

from helpers import CONFIGS, SMALL, make_config, random_config  # noqa: E402

TORCH_REASON = ("torch is the test oracle (CPU build is enough); "
                "the comparisons against the torch reference are skipped without it")

# The named odd configs plus a few drawn at random (seeded, so the set is fixed).
RANDOM_CONFIG_SEEDS = (11, 12, 13)
CONFIG_CASES = {**{k: v for k, v in CONFIGS.items()},
                **{f"random{s}": random_config(np.random.default_rng(s))
                   for s in RANDOM_CONFIG_SEEDS}}


@pytest.fixture(scope="session")
def torch():
    t = pytest.importorskip("torch", reason=TORCH_REASON)
    return t


@pytest.fixture(scope="session")
def tref(torch):
    """The reference model module (tests/torch_ref.py); needs torch."""
    import torch_ref
    return torch_ref


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: deterministic, but different per test."""
    seed = sum(ord(ch) * (i + 1) for i, ch in enumerate(request.node.nodeid)) % (2 ** 32)
    return np.random.default_rng(seed)


@pytest.fixture(params=sorted(CONFIG_CASES), ids=sorted(CONFIG_CASES))
def cfg(request):
    """Each of the small odd test configurations in turn."""
    return make_config(**CONFIG_CASES[request.param])


@pytest.fixture
def small_cfg():
    return make_config(**SMALL)
