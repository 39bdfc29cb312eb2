"""The one comparison of the fidelity checks: a named array against the original's, within
`|actual - expected| <= atol + rtol * |expected|` element-wise, as one table row."""
import math
from typing import NamedTuple

import numpy as np


class Row(NamedTuple):
    """One compared quantity (for key-set rows the "difference" is the number of mismatching keys)."""
    name: str
    max_abs_diff: float
    tolerance: object
    passed: bool


def compare(name: str, actual, expected, atol: float = 0.0, rtol: float = 0.0) -> Row:
    """Element-wise `|actual - expected| <= atol + rtol*|expected|`; shape or NaN mismatch fails.
    The tolerance shown is `atol + rtol * max|expected|`."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    tolerance = atol + rtol * (float(np.max(np.abs(expected))) if expected.size else 0.0)
    if actual.shape != expected.shape:
        return Row(f'{name} (shape {actual.shape} != expected {expected.shape})',
                   math.inf, tolerance, False)
    if actual.size == 0:
        return Row(name, 0.0, tolerance, True)
    diff = np.abs(actual - expected)
    passed = bool(np.all(diff <= atol + rtol * np.abs(expected)))
    return Row(name, float(np.max(diff)), tolerance, passed)
