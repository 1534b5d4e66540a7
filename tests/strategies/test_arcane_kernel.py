"""The compiled greedy (eager and lazy) against the numpy fallback, and resuming a selection.

Every comparison is bitwise: the picks, their gains and the directions of the trace. Inputs
cover random features (float64 and float32), forced ties (duplicated rows, rows that are
permutations of each other's coordinates), degenerate ones (all-zero rows, a single
candidate, one dimension, fewer candidates than picks) and both size rules.
"""

from __future__ import annotations

import numpy as np
import pytest

from expunge.strategies.exact import _greedy_kernel
from expunge.strategies.exact._selection import SNAPSHOT_EVERY, greedy_logdet, unit_rows

pytest.importorskip("numba")

METHODS = ("numpy", "eager", "lazy")


def random_case(n: int, p: int, seed: int, dtype: type = np.float64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return unit_rows(rng.normal(size=(n, p)) + 0.3).astype(dtype)


def tied_case(seed: int) -> np.ndarray:
    """Every row appears three times, and half the rows are coordinate permutations of
    others (equal norms, so equal first gains): gains tie exactly at many steps."""
    rng = np.random.default_rng(seed)
    base = unit_rows(rng.normal(size=(20, 6)))
    mixed = np.concatenate([base, base[:, ::-1]])
    return np.concatenate([mixed, mixed, mixed])


def degenerate_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    zeros = unit_rows(rng.normal(size=(30, 4)))
    zeros[::3] = 0.0  # a third of the rows carry no information (gain 0)
    return {
        "all zero": np.zeros((12, 5)),
        "some zero rows": zeros,
        "one candidate": np.ones((1, 3)) / np.sqrt(3),
        "one dimension": rng.normal(size=(25, 1)),
        "one-hot": np.eye(8)[rng.integers(0, 8, 40)],
    }


CASES = {
    "random f64": random_case(400, 16, 0),
    "random f32": random_case(500, 24, 1, np.float32),
    "tied": tied_case(2),
    **degenerate_cases(),
}
RULES = [dict(n_select=60), dict(n_select=None, threshold=0.05),
         dict(n_select=35, threshold=0.2), dict(n_select=10_000)]


def ids_for(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(5, 5 + 3 * n, 3))


def assert_same(a, b) -> None:
    assert np.array_equal(a.ids, b.ids)
    assert np.array_equal(a.gains, b.gains)  # bitwise: equal floats, not approximately
    assert np.array_equal(a.trace.directions, b.trace.directions)
    assert np.array_equal(a.trace.q_best, b.trace.q_best)


@pytest.mark.parametrize("rule", RULES, ids=["count", "threshold", "both", "all"])
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_eager_and_lazy_equal_the_numpy_path_bitwise(case, rule):
    features = CASES[case]
    ids = ids_for(len(features))
    runs = {m: greedy_logdet(features, ids, noise=0.1, method=m, **rule) for m in METHODS}
    for method in ("eager", "lazy"):
        assert_same(runs[method], runs["numpy"])


def test_ties_go_to_the_smallest_id_in_every_path():
    features = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    for method in METHODS:
        result = greedy_logdet(features, np.array([7, 3, 9, 5]), n_select=2, noise=0.1,
                               method=method)
        assert result.ids.tolist() == [3, 5], method
    tied = tied_case(3)  # each row three times, under three ids
    ids = ids_for(len(tied), seed=4)
    result = greedy_logdet(tied, ids, n_select=40, noise=0.1, method="lazy")
    rank = {int(i): r for r, i in enumerate(result.ids.tolist())}
    groups: dict[bytes, list[int]] = {}
    for row, i in zip(tied, ids.tolist()):
        groups.setdefault(row.tobytes(), []).append(i)
    for members in groups.values():  # bitwise equal rows have bitwise equal gains
        picked = [i for i in sorted(members) if i in rank]
        assert picked == sorted(members)[:len(picked)]  # the smallest ids first ...
        assert [rank[i] for i in picked] == sorted(rank[i] for i in picked)  # ... in order


@pytest.mark.parametrize("case", ["random f64", "random f32", "tied", "some zero rows"])
def test_resuming_from_the_trace_equals_a_fresh_run(case):
    features = CASES[case]
    ids = ids_for(len(features), seed=1)
    rng = np.random.default_rng(2)
    m = min(150, len(ids) // 2)
    full = {k: greedy_logdet(features, ids, n_select=m, noise=0.1, method=k) for k in METHODS}
    picks = full["numpy"].ids
    unpicked = np.setdiff1d(ids, picks)
    requests = [
        [picks[0]], [picks[len(picks) // 3]], [picks[-1]],  # first, middle and last pick
        [picks[SNAPSHOT_EVERY]] if len(picks) > SNAPSHOT_EVERY else [picks[1]],  # at a snapshot
        list(rng.choice(picks, 5, replace=False)) + list(rng.choice(unpicked, 5, replace=False)),
        list(rng.choice(unpicked, 8, replace=False)),  # only unselected: nothing changes
    ]
    for request in requests:
        keep = ~np.isin(ids, request)
        fresh = greedy_logdet(features[keep], ids[keep], n_select=m, noise=0.1, method="numpy")
        for source in METHODS:
            for method in METHODS:
                resumed = greedy_logdet(features[keep], ids[keep], n_select=m, noise=0.1,
                                        method=method, resume=full[source])
                assert_same(resumed, fresh)
                # nothing of a removed candidate stays in the trace
                trace = resumed.trace
                assert not np.isin(request, trace.candidates).any()
                assert trace.snapshot_q.shape[1] == trace.snapshot_t.shape[1] == keep.sum()
                assert np.all(np.diff(trace.snapshot_steps) > 0)


def test_an_unselected_removal_returns_the_same_picks_without_running():
    features = CASES["random f64"]
    ids = ids_for(len(features))
    full = greedy_logdet(features, ids, n_select=60, noise=0.1)
    gone = np.setdiff1d(ids, full.ids)[:10]
    keep = ~np.isin(ids, gone)
    result = greedy_logdet(features[keep], ids[keep], n_select=60, noise=0.1, resume=full)
    assert result.ids is full.ids  # reused as it is
    assert len(result.trace.candidates) == keep.sum()


def test_a_trace_that_does_not_cover_the_candidates_is_not_used():
    features = CASES["random f64"]
    ids = ids_for(len(features))
    part = greedy_logdet(features[:300], ids[:300], n_select=40, noise=0.1)
    result = greedy_logdet(features, ids, n_select=40, noise=0.1, resume=part)
    assert_same(result, greedy_logdet(features, ids, n_select=40, noise=0.1))


def test_the_lazy_loop_refreshes_fewer_candidates_than_eager_work():
    """Sanity of the heap: on clustered data most candidates never reach the top, so lazy
    greedy must finish with most candidates still stale (their step below the last)."""
    rng = np.random.default_rng(5)
    centres = unit_rows(rng.normal(size=(5, 10)))
    features = unit_rows(centres[rng.integers(0, 5, 600)] + 0.05 * rng.normal(size=(600, 10)))
    run = _greedy_kernel.run_greedy(features, 0.1, 50, None, method="lazy",
                                    snapshot_every=10)
    last = run.snapshot_t[-1]
    assert np.mean(last < run.snapshot_steps[-1]) > 0.5


def test_unknown_methods_are_refused():
    with pytest.raises(ValueError, match="unknown method"):
        _greedy_kernel.run_greedy(np.ones((3, 2)), 0.1, 2, None, method="fast")
