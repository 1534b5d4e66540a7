"""The greedy log-det selection loop, compiled (numba) and as a bit-identical numpy fallback.

Both paths run the same greedy as :func:`~expunge.strategies.exact._selection.greedy_logdet`
(see that module for the objective) and produce **the same bits**: every per-candidate
quantity goes through the same sequence of correctly rounded IEEE operations in both, in
the same order, and nothing is compiled with fast-math (no reassociation, no fused
multiply-add). Concretely, with candidates ``φ_i`` (rows), the inverse ``M = (σ²I + Φ_SᵀΦ_S)⁻¹``
and the gain statistic ``q_i = φ_iᵀ M φ_i``:

* ``q_i`` starts as ``(Σ_j φ_ij·φ_ij) / σ²``, summed over ``j = 0..p-1`` in order;
* a pick ``b`` (the largest ``q``; ties: the smallest id) defines ``u = Σ_j M[j]·φ_bj``
  (rows of ``M`` accumulated in order), ``s = Σ_j φ_bj·u_j`` (in order),
  ``w = u / sqrt(1 + s)``; then ``M[a, c] -= w_a·w_c`` and, for every candidate,
  ``d_i = Σ_j φ_ij·w_j`` (in order) and ``q_i -= d_i·d_i``.

Each candidate's ``q_i`` is therefore bitwise the same whichever other candidates exist
(the property that makes deleting an unselected sample a no-op), and whichever path runs.

**Lazy greedy** (Minoux 1978): ``q_i`` never increases (each step subtracts a square, and
IEEE rounding is monotone, so this holds bitwise), so a stale ``q_i`` is an upper bound.
The compiled path keeps candidates in a max-heap keyed ``(q_i, -i)`` and refreshes only the
candidates that reach its top, applying the missed steps' ``d_i`` in step order, i.e. the
same subtractions the eager loop would have made. A refreshed candidate that still beats
the best stale bound is the eager argmax, ties included; so the picks and gains are the
eager ones, bit for bit, at a fraction of the work.

**Resume.** The state of the loop after ``s`` picks is ``M`` (a function of the first
``s`` directions ``w``, rebuilt by replaying them) and each candidate's ``(q_i, t_i)``, the
value of ``q_i`` after the first ``t_i ≤ s`` steps. A snapshot of ``(q, t)`` every few
steps lets a later run continue from any step ``r`` at or after a snapshot, as long as the
first ``r`` picks are still valid: the caller guarantees that (see ``_selection.py``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

try:  # numba is a dependency; the numpy path keeps the library working without it
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised by forcing method="numpy"
    numba = None  # type: ignore[assignment]
    HAVE_NUMBA = False


def _compiled(function: Any) -> Any:
    """``numba.njit`` without fast-math (the bits must match the numpy path), cached on disk."""
    if not HAVE_NUMBA:
        return function
    return numba.njit(cache=True, nogil=True, fastmath=False)(function)


class GreedyRun(NamedTuple):
    """What one run of the loop produced (positions index the id-sorted candidates)."""

    picks: np.ndarray  # int64 (m,): positions in greedy order
    q_best: np.ndarray  # float64 (m,): q of each pick when it was made
    directions: np.ndarray  # float64 (m, p): w of each pick
    snapshot_steps: np.ndarray  # int64 (k,)
    snapshot_q: np.ndarray  # float64 (k, n)
    snapshot_t: np.ndarray  # int32 (k, n)


class GreedyStart(NamedTuple):
    """Where a run starts: step ``step`` with these picks, directions and candidate states."""

    step: int
    picks: np.ndarray  # int64 (step,): positions of the first ``step`` picks
    q_best: np.ndarray  # float64 (step,)
    directions: np.ndarray  # float64 (step, p)
    q: np.ndarray  # float64 (n,): q_i after t_i steps
    t: np.ndarray  # int32 (n,)


# ------------------------------------------------------------------- shared pieces
@_compiled
def _initial_q(rows: np.ndarray, noise: float) -> np.ndarray:
    n, p = rows.shape
    q = np.zeros(n)
    for i in range(n):
        acc = 0.0
        for j in range(p):
            x = np.float64(rows[i, j])  # float32 features are squared in float64
            acc += x * x
        q[i] = acc / noise
    return q


@_compiled
def _replay_inverse(directions: np.ndarray, steps: int, p: int, noise: float) -> np.ndarray:
    """``M`` after ``steps`` picks: ``I/σ²`` minus ``w wᵀ`` for each direction, in order."""
    M = np.zeros((p, p))
    for a in range(p):
        M[a, a] = 1.0 / noise
    for t in range(steps):
        for a in range(p):
            wa = directions[t, a]
            for c in range(p):
                M[a, c] -= wa * directions[t, c]
    return M


@_compiled
def _direction(M: np.ndarray, phi: np.ndarray) -> np.ndarray:
    p = phi.shape[0]
    u = np.zeros(p)
    for j in range(p):
        x = phi[j]
        for a in range(p):
            u[a] += M[j, a] * x
    s = 0.0
    for j in range(p):
        s += phi[j] * u[j]
    return u / math.sqrt(1.0 + s)


@_compiled
def _refresh(rows: np.ndarray, Wt: np.ndarray, i: int, start: int, stop: int,
             q: np.ndarray, acc: np.ndarray) -> None:
    """Apply steps ``start..stop-1`` to ``q[i]``: ``q_i -= (φ_i·w_s)²`` in step order."""
    width = stop - start
    for s in range(width):
        acc[s] = 0.0
    for j in range(rows.shape[1]):
        x = rows[i, j]
        for s in range(width):
            acc[s] += x * Wt[j, start + s]
    value = q[i]
    for s in range(width):
        value -= acc[s] * acc[s]
    q[i] = value


# ---------------------------------------------------------------------- max-heap
@_compiled
def _above(qa: float, ia: int, qb: float, ib: int) -> bool:
    """Heap order: larger q first, then the smaller position (= smaller id)."""
    return qa > qb or (qa == qb and ia < ib)


@_compiled
def _sift_down(keys: np.ndarray, idx: np.ndarray, size: int, at: int) -> None:
    while True:
        top = at
        left = 2 * at + 1
        right = left + 1
        if left < size and _above(keys[left], idx[left], keys[top], idx[top]):
            top = left
        if right < size and _above(keys[right], idx[right], keys[top], idx[top]):
            top = right
        if top == at:
            return
        keys[at], keys[top] = keys[top], keys[at]
        idx[at], idx[top] = idx[top], idx[at]
        at = top


@_compiled
def _sift_up(keys: np.ndarray, idx: np.ndarray, at: int) -> None:
    while at > 0:
        parent = (at - 1) // 2
        if not _above(keys[at], idx[at], keys[parent], idx[parent]):
            return
        keys[at], keys[parent] = keys[parent], keys[at]
        idx[at], idx[parent] = idx[parent], idx[at]
        at = parent


# ------------------------------------------------------------------ compiled loops
@_compiled
def _greedy_compiled(rows: np.ndarray, noise: float, limit: int, threshold: float,
                     start: int, prefix: np.ndarray, prefix_q: np.ndarray,
                     prefix_w: np.ndarray, q: np.ndarray, t: np.ndarray,
                     snapshot_every: int, lazy: bool) -> tuple[Any, ...]:
    n, p = rows.shape
    picks = np.empty(limit, dtype=np.int64)
    q_best = np.empty(limit)
    Wt = np.zeros((p, max(limit, 1)))
    directions = np.zeros((limit, p))
    available = np.ones(n, dtype=np.bool_)
    for s in range(start):
        picks[s] = prefix[s]
        q_best[s] = prefix_q[s]
        available[prefix[s]] = False
        for a in range(p):
            directions[s, a] = prefix_w[s, a]
            Wt[a, s] = prefix_w[s, a]
    M = _replay_inverse(directions, start, p, noise)
    n_snap = 0
    for s in range(start, limit):
        if s % snapshot_every == 0:
            n_snap += 1
    snap_steps = np.empty(n_snap, dtype=np.int64)
    snap_q = np.empty((n_snap, n))
    snap_t = np.empty((n_snap, n), dtype=np.int32)
    acc = np.empty(max(limit, 1))
    keys = np.empty(n)
    idx = np.empty(n, dtype=np.int64)
    size = 0
    if lazy:
        for i in range(n):
            if available[i]:
                keys[size] = q[i]
                idx[size] = i
                size += 1
        for at in range(size // 2 - 1, -1, -1):
            _sift_down(keys, idx, size, at)
    else:  # eager: bring every candidate to the start step
        for i in range(n):
            if available[i] and t[i] < start:
                _refresh(rows, Wt, i, t[i], start, q, acc)
                t[i] = start
    d = np.empty(n)
    # eager: candidates as columns, so the update below runs along contiguous memory
    cols = np.ascontiguousarray(rows.T) if not lazy else np.empty((0, 0), dtype=rows.dtype)
    taken = start
    snap = 0
    for step in range(start, limit):
        if step % snapshot_every == 0:
            snap_steps[snap] = step
            snap_q[snap, :] = q
            snap_t[snap, :] = t
            snap += 1
        best = -1
        if lazy:
            while size > 0:
                i = idx[0]
                size -= 1
                keys[0] = keys[size]
                idx[0] = idx[size]
                _sift_down(keys, idx, size, 0)
                if t[i] < step:
                    _refresh(rows, Wt, i, t[i], step, q, acc)
                    t[i] = step
                if size > 0 and _above(keys[0], idx[0], q[i], i):
                    keys[size] = q[i]  # a stale bound is still higher: look again
                    idx[size] = i
                    size += 1
                    _sift_up(keys, idx, size - 1)
                    continue
                best = i
                break
        else:
            value = -np.inf
            for i in range(n):
                if available[i] and (best < 0 or q[i] > value):
                    best = i
                    value = q[i]
        if best < 0:
            break
        if not math.isnan(threshold) and 0.5 * math.log1p(max(q[best], 0.0)) < threshold:
            break
        picks[step] = best
        q_best[step] = q[best]
        available[best] = False
        w = _direction(M, rows[best])
        for a in range(p):
            directions[step, a] = w[a]
            Wt[a, step] = w[a]
            wa = w[a]
            for c in range(p):
                M[a, c] -= wa * w[c]
        taken = step + 1
        if not lazy:
            for i in range(n):
                d[i] = 0.0
            for j in range(p):
                wj = w[j]
                for i in range(n):
                    d[i] += cols[j, i] * wj
            for i in range(n):
                if available[i]:
                    q[i] -= d[i] * d[i]
                    t[i] = step + 1
    return (picks[:taken].copy(), q_best[:taken].copy(), directions[:taken].copy(),
            snap_steps[:snap].copy(), snap_q[:snap].copy(), snap_t[:snap].copy())


# --------------------------------------------------------------------- numpy path
def _sum_of_products(columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``Σ_j columns[j]·weights[j]`` for a ``(p, n)`` array, accumulated in order ``j = 0..p-1``.

    Elementwise numpy operations round each entry on its own, so every entry goes through
    the same operations as in the compiled loops, whatever the other entries are (a BLAS
    product promises neither: its blocking depends on shape and alignment).
    """
    out = np.zeros(columns.shape[1], dtype=np.float64)
    tmp = np.empty_like(out)
    for j in range(columns.shape[0]):
        np.multiply(columns[j], weights[j], out=tmp)
        out += tmp
    return out


def _ordered_sum(values: np.ndarray) -> float:
    total = 0.0
    for v in values.tolist():
        total += v
    return total


def _greedy_numpy(rows: np.ndarray, noise: float, limit: int, threshold: float,
                  begin: GreedyStart, snapshot_every: int) -> GreedyRun:
    """The eager loop in numpy: the compiled loops' operations, one numpy call per step."""
    n, p = rows.shape
    columns = np.ascontiguousarray(rows.T)
    start = begin.step
    directions = np.zeros((limit, p))
    directions[:start] = begin.directions
    M = np.eye(p) / noise
    for s in range(start):
        M -= np.outer(directions[s], directions[s])
    q, t = begin.q.copy(), begin.t.astype(np.int64)
    available = np.ones(n, dtype=bool)
    available[begin.picks] = False
    # bring every candidate to the start step, applying the steps each one missed
    for s in range(int(t[available].min()) if available.any() else start, start):
        behind = np.flatnonzero(available & (t <= s))
        q[behind] -= np.square(_sum_of_products(columns[:, behind], directions[s]))
    t[available] = start
    picks, q_best = list(begin.picks.tolist()), list(begin.q_best.tolist())
    snap_steps, snap_q, snap_t = [], [], []
    for step in range(start, limit):
        if step % snapshot_every == 0:
            snap_steps.append(step)
            snap_q.append(q.copy())
            snap_t.append(t.astype(np.int32))
        scores = np.where(available, q, -np.inf)
        best = int(np.argmax(scores))  # first maximum: the smallest id among ties
        if not available[best]:
            break
        if not math.isnan(threshold) and 0.5 * math.log1p(max(float(q[best]), 0.0)) < threshold:
            break
        picks.append(best)
        q_best.append(float(q[best]))
        available[best] = False
        phi = columns[:, best].copy()
        u = _sum_of_products(M, phi)
        w = u / math.sqrt(1.0 + _ordered_sum(phi * u))
        directions[step] = w
        M -= np.outer(w, w)
        q -= np.square(_sum_of_products(columns, w))
        t[:] = step + 1
    taken = len(picks)
    return GreedyRun(
        np.asarray(picks, dtype=np.int64), np.asarray(q_best, dtype=np.float64),
        directions[:taken].copy(), np.asarray(snap_steps, dtype=np.int64),
        np.asarray(snap_q, dtype=np.float64).reshape(len(snap_q), n),
        np.asarray(snap_t, dtype=np.int32).reshape(len(snap_t), n),
    )


# ----------------------------------------------------------------------- dispatch
METHODS = ("auto", "lazy", "eager", "numpy")


def run_greedy(rows: np.ndarray, noise: float, limit: int, threshold: float | None,
               begin: GreedyStart | None = None, *, snapshot_every: int = 100,
               method: str = "auto") -> GreedyRun:
    """Run (or continue) the greedy loop on id-sorted candidate ``rows`` ``(n, p)``.

    ``method``: ``"lazy"`` or ``"eager"`` (compiled), ``"numpy"`` (the fallback), or
    ``"auto"`` (eager when numba is installed, else numpy: see docs/arcane.md for why
    eager beats lazy on image classes). All give the same picks and
    gains, bit for bit; the snapshots hold the same information (lazy ones may hold
    stale values with their step, which is how a run continues from them).
    """
    if rows.dtype != np.float32:  # float32 features stay float32: half the memory traffic
        rows = np.asarray(rows, dtype=np.float64)
    rows = np.ascontiguousarray(rows)
    n, p = rows.shape
    if method == "auto":  # eager: on MNIST lazy refreshes ~76 % of eager's work, slower per op
        method = "eager" if HAVE_NUMBA else "numpy"
    if method not in ("lazy", "eager", "numpy"):
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    if method != "numpy" and not HAVE_NUMBA:
        raise ValueError(f"method {method!r} needs numba, which is not installed")
    if begin is None:
        q = _initial_q(rows, float(noise)) if method != "numpy" else _initial_q_numpy(rows, noise)
        begin = GreedyStart(0, np.empty(0, np.int64), np.empty(0), np.empty((0, p)),
                            np.asarray(q, dtype=np.float64), np.zeros(n, dtype=np.int32))
    limit = max(int(limit), begin.step)
    cut = float("nan") if threshold is None else float(threshold)
    if method == "numpy":
        return _greedy_numpy(rows, noise, limit, cut, begin, snapshot_every)
    out = _greedy_compiled(
        rows, float(noise), limit, cut, begin.step,
        np.ascontiguousarray(begin.picks, dtype=np.int64),
        np.ascontiguousarray(begin.q_best, dtype=np.float64),
        np.ascontiguousarray(begin.directions, dtype=np.float64).reshape(begin.step, p),
        begin.q.astype(np.float64, copy=True), begin.t.astype(np.int32, copy=True),
        int(snapshot_every), method == "lazy",
    )
    return GreedyRun(*out)


def _initial_q_numpy(rows: np.ndarray, noise: float) -> np.ndarray:
    """``q_i = (Σ_j φ_ij²) / σ²`` summed in order (the same bits as ``_initial_q``)."""
    columns = np.ascontiguousarray(rows.T)
    q = np.zeros(rows.shape[0])
    for j in range(columns.shape[0]):
        q += np.square(columns[j].astype(np.float64))
    return q / noise
