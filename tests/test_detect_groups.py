"""The NumPy group-bys of `monitor.detect.groups` give what their pandas counterparts give."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from monitor.detect.groups import factorize, first_of_pairs, group_max, group_min, group_sum


def arrays(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, max(n // 3, 1), n, dtype=np.int64), rng.integers(-10**12, 10**12, n, dtype=np.int64)


@pytest.mark.parametrize("seed, n", [(1, 0), (2, 1), (3, 7), (4, 1000), (5, 20000)])
def test_factorize_is_pandas_factorize_unsorted(seed, n):
    keys, _ = arrays(seed, n)
    codes, uniques = factorize(keys)
    want_codes, want_uniques = pd.factorize(keys, sort=False)
    assert codes.tolist() == want_codes.tolist() and uniques.tolist() == want_uniques.tolist()


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
