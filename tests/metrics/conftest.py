"""Fixtures of the metric tests."""

from __future__ import annotations

import numpy as np
import pytest

from tests.metrics.reference import make_pairs


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    return make_pairs()
