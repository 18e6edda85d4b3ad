"""The NumPy group-bys of `monitor.detect.groups` give what their pandas counterparts give."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitor.detect.groups import first_of_pairs, group_max, group_min, group_sum, ports_lookup, sorted_groups


def arrays(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, max(n // 3, 1), n, dtype=np.int64), rng.integers(-10**12, 10**12, n, dtype=np.int64)


@pytest.mark.parametrize("seed, n", [(1, 0), (2, 1), (3, 7), (4, 1000), (5, 20000)])
def test_group_max_min_and_sum_are_pandas_groupby(seed, n):
    keys, values = arrays(seed, n)
    for ours, theirs in ((group_max(keys, values), pd.Series(values).groupby(keys).max()),
                         (group_min(keys, values), pd.Series(values).groupby(keys).min()),
                         (group_sum(keys, values), pd.Series(values).groupby(keys).sum())):
        assert ours[0].tolist() == theirs.index.tolist() and ours[1].tolist() == theirs.tolist()


@pytest.mark.parametrize("seed, n", [(1, 0), (2, 1), (3, 7), (4, 1000), (5, 20000)])
def test_first_of_pairs_is_drop_duplicates_keep_first(seed, n):
    a, b = arrays(seed, n)
    b = b % 5
    frame = pd.DataFrame({"a": a, "b": b})
    assert first_of_pairs(a, b).tolist() == frame.drop_duplicates(["a", "b"], keep="first").index.tolist()


def test_first_of_pairs_of_negative_or_wide_values():
    a = np.array([-3, 5, -3, 2**40, 5, 2**40], dtype=np.int64)
    b = np.array([1, -1, 1, 7, -1, 8], dtype=np.int64)
    frame = pd.DataFrame({"a": a, "b": b})
    assert first_of_pairs(a, b).tolist() == frame.drop_duplicates(["a", "b"], keep="first").index.tolist()


@pytest.mark.parametrize("seed, n", [(1, 0), (2, 1), (3, 7), (4, 1000)])
def test_sorted_groups_number_keys_in_order(seed, n):
    keys, _ = arrays(seed, n)
    order, group, starts = sorted_groups(keys)
    assert order.tolist() == np.argsort(keys, kind="stable").tolist()
    assert group.tolist() == np.unique(keys, return_inverse=True)[1].reshape(-1)[order].tolist()
    assert keys[order][starts].tolist() == np.unique(keys).tolist()


@pytest.mark.parametrize("ports", [[], [8080, 22, 8080, 0, 65535], [70000, -1, 70000, 22]])
def test_ports_lookup_calls_once_per_port_ascending(ports):
    calls = []
    looked = ports_lookup(np.array(ports, dtype=np.int64), lambda port: calls.append(port) or port * 2)
    assert looked.tolist() == [port * 2 for port in ports] and calls == sorted(set(ports))
