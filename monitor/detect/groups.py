"""Grouping integer arrays with NumPy alone: codes by first appearance, per-key max, min and sum, first rows.

What the detectors need of a group-by, without pandas: the live agent runs
the same engine as `analyze`, and importing pandas (and the pyarrow it
pulls in) would cost the agent about 70 MiB of memory for these few
operations. Each gives what its pandas counterpart gives (`factorize` with
`sort=False`, `Series.groupby(keys).max()/.min()/.sum()` with sorted keys,
`DataFrame.drop_duplicates(keep="first")`); `tests/test_detect_groups.py`
checks them against pandas.
"""

from __future__ import annotations

import numpy as np


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, uniques): codes number the distinct values in order of first appearance."""
    uniques, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return rank[inverse.reshape(-1)], uniques[order]


def _sorted_groups(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if len(keys) else np.empty(0, np.int64)
    return keys[starts], values, starts


def group_max(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys ascending, the largest value of each)."""
    distinct, values, starts = _sorted_groups(keys, values)
    return distinct, np.maximum.reduceat(values, starts) if len(starts) else values[:0]


def group_min(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys ascending, the smallest value of each)."""
    distinct, values, starts = _sorted_groups(keys, values)
    return distinct, np.minimum.reduceat(values, starts) if len(starts) else values[:0]


def group_sum(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct keys ascending, the sum of each one's values)."""
    distinct, values, starts = _sorted_groups(keys, values)
    return distinct, np.add.reduceat(values, starts) if len(starts) else values[:0]


def first_of_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Positions of the first row of each distinct (a, b) pair, in row order."""
    if len(a) == 0:
        return np.empty(0, dtype=np.int64)
    _pairs, first = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    return np.sort(first)
