"""Grouping integer arrays with NumPy alone: sorted groups, per-key max, min and sum, first rows, port lookups.

What the detectors need of a group-by, without pandas: the live agent runs
the same engine as `analyze`, and importing pandas (and the pyarrow it
pulls in) would cost the agent about 70 MiB of memory for these few
operations. Each gives what its pandas counterpart gives
(`Series.groupby(keys).max()/.min()/.sum()` with sorted keys,
`DataFrame.drop_duplicates(keep="first")`); `tests/test_detect_groups.py`
checks them against pandas. Listener ports (0..65535) are grouped without a
sort: a bincount over the port numbers, and 16-bit keys are radix-sorted.
"""

from __future__ import annotations

import numpy as np


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
    if a.min() >= 0 and b.min() >= 0 and a.max() < 1 << 31 and b.max() < 1 << 32:    # one int64 per pair
        _pairs, first = np.unique((a.astype(np.int64) << 32) | b, return_index=True)
    else:
        _pairs, first = np.unique(np.stack([a, b], axis=1), axis=0, return_index=True)
    return np.sort(first)


def sorted_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, group, starts): the positions of `keys` sorted by key (stable), each sorted row's group
    (0, 1, ... in key order) and where each group starts in the sorted order."""
    small = len(keys) and keys.min() >= 0 and keys.max() < 1 << 16     # numpy radix-sorts 16-bit keys
    order = np.argsort(keys.astype(np.uint16) if small else keys, kind="stable")
    ordered = keys[order]
    change = np.empty(len(ordered), dtype=bool)
    change[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=change[1:])
    return order, np.cumsum(change) - 1, np.flatnonzero(change)


def distinct_ports(ports: np.ndarray) -> np.ndarray:
    """The distinct values of `ports`, ascending (without a sort when they are ports)."""
    if len(ports) and ports.min() >= 0 and ports.max() < 1 << 16:
        return np.flatnonzero(np.bincount(ports))
    return np.unique(ports)


def ports_lookup(ports: np.ndarray, value_of) -> np.ndarray:
    """`value_of(port)` (an int) for each of `ports`, called once per distinct port, ascending."""
    distinct = distinct_ports(ports)
    values = np.array([value_of(int(port)) for port in distinct], dtype=np.int64)
    if len(distinct) and distinct[0] >= 0 and distinct[-1] < 1 << 16:       # a table over the ports: no search
        table = np.zeros(int(distinct[-1]) + 1, dtype=np.int64)
        table[distinct] = values
        return table[ports]
    return values[np.searchsorted(distinct, ports)]
