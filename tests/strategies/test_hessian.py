"""The curvature toolkit against closed forms: explicit Hessians/Jacobians, known SPD systems."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian, jacobian

from expunge.exceptions import ApproximationWarning, InvalidParameterError
from expunge.strategies.approximate.curvature import (
    CholeskySolver,
    FlatLayout,
    LossCurvature,
    check_spectrum,
    conjugate_gradient,
    dense_from_matvec,
    ggn_vp,
    hvp,
    lissa,
    power_iteration,
)

DT = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tiny_mlp(seed: int = 0, n_in: int = 4, hidden: int = 5, n_out: int = 3) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out)).to(DT)


def _data(n: int = 12, d: int = 4, k: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = _generator(seed)
    return torch.randn(n, d, generator=g, dtype=DT), torch.randint(0, k, (n,), generator=g)


def _spd(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    k = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(k, k, generator=_generator(seed), dtype=DT))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=DT)) @ q.T


def _objective(module: nn.Module, layout: FlatLayout, X: torch.Tensor, y: torch.Tensor,
               w: torch.Tensor, wd: float, damping: float):
    """The weighted objective written out by hand, for autograd's explicit Hessian."""
    def f(theta: torch.Tensor) -> torch.Tensor:
        params = layout.unflatten(theta)
        logits = torch.func.functional_call(module, params, (X,))
        ce = F.cross_entropy(logits, y, reduction="none")
        return (w * ce).sum() + w.sum() * wd / 2 * theta @ theta + damping / 2 * theta @ theta
    return f


# ----------------------------------------------------------------------- layout
def test_flat_layout_round_trip_and_offsets():
    module = _tiny_mlp()
    layout = FlatLayout.of(module)
    params = dict(module.named_parameters())
    flat = layout.flatten(params)
    assert layout.size == sum(p.numel() for p in module.parameters()) == flat.numel()
    back = layout.unflatten(flat)
    for name in layout.names:
        assert torch.equal(back[name], params[name])
    start, stop = layout.offsets()["2.weight"]
    assert torch.equal(flat[start:stop], params["2.weight"].reshape(-1))


# ---------------------------------------------------------------------- products
def test_hvp_matches_the_explicit_hessian_of_a_small_network():
    module = _tiny_mlp()
    layout = FlatLayout.of(module)
    X, y = _data()
    theta = layout.flatten(dict(module.named_parameters())).detach()

    def f(t: torch.Tensor) -> torch.Tensor:
        logits = torch.func.functional_call(module, layout.unflatten(t), (X,))
        return F.cross_entropy(logits, y)

    H = hessian(f, theta)
    v = torch.randn(theta.numel(), generator=_generator(3), dtype=DT)
    torch.testing.assert_close(hvp(f, theta, v), H @ v, rtol=1e-10, atol=1e-12)
    # the network is not convex: the explicit Hessian has negative eigenvalues, which is why
    # PUMA defaults to the Gauss-Newton curvature
    assert check_spectrum(H)[0] > 0


def test_ggn_vp_matches_explicit_jacobian_form():
    module = _tiny_mlp()
    layout = FlatLayout.of(module)
    X, y = _data()
    theta = layout.flatten(dict(module.named_parameters())).detach()

    def model_fn(t: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, layout.unflatten(t), (X,))

    def loss_fn(z: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(z, y, reduction="sum")

    J = jacobian(model_fn, theta).reshape(-1, theta.numel())  # (n*K, p)
    z = model_fn(theta).detach()
    Hz = hessian(loss_fn, z).reshape(z.numel(), z.numel())
    G = J.T @ Hz @ J
    v = torch.randn(theta.numel(), generator=_generator(4), dtype=DT)
    torch.testing.assert_close(ggn_vp(model_fn, loss_fn, theta, v), G @ v, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(G)[0] > -1e-10  # the GGN is PSD


@pytest.mark.parametrize("kind", ["exact", "ggn"])
def test_loss_curvature_products_match_autograd(kind):
    module = _tiny_mlp()
    X, y = _data(n=10)
    wd, damping = 0.03, 0.01
    curv = LossCurvature(module, X, y, kind=kind, weight_decay=wd, damping=damping, chunk_size=3)
    rows = np.array([0, 2, 3, 5, 7, 9])
    w = torch.tensor([0.1, 0.3, 0.0, 0.2, 0.15, 0.25], dtype=DT)
    f = _objective(curv.module, curv.layout, X[rows], y[rows], w, wd, damping)
    H = hessian(f, curv.theta)
    if kind == "ggn":  # replace the CE Hessian by its Gauss-Newton part, computed explicitly
        def model_fn(t):
            return torch.func.functional_call(curv.module, curv.layout.unflatten(t), (X[rows],))
        J = jacobian(model_fn, curv.theta)  # (m, K, p)
        p = torch.softmax(model_fn(curv.theta), dim=1)
        A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        H = torch.einsum("i,ikp,ikl,ilq->pq", w, J, A, J) + (w.sum() * wd + damping) * torch.eye(
            curv.size, dtype=DT)
    v = torch.randn(curv.size, generator=_generator(5), dtype=DT)
    torch.testing.assert_close(curv.matvec(v, rows, w), H @ v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(curv.dense(rows, w, block=7), H, rtol=1e-9, atol=1e-12)


def test_gradient_and_directional_derivatives_match_per_sample_autograd():
    module = _tiny_mlp(seed=2)
    X, y = _data(n=9, seed=4)
    curv = LossCurvature(module, X, y, weight_decay=0.1, chunk_size=4)
    rows = np.arange(9)
    w = torch.linspace(0.0, 0.4, 9, dtype=DT)
    per_sample = []
    for i in rows:
        f = _objective(curv.module, curv.layout, X[i:i + 1], y[i:i + 1],
                       torch.ones(1, dtype=DT), 0.0, 0.0)
        per_sample.append(torch.func.grad(f)(curv.theta))
    G = torch.stack(per_sample)  # (n, p): fine for a test, never done by the library
    expected = w @ G + w.sum() * 0.1 * curv.theta
    torch.testing.assert_close(curv.gradient(rows, w), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(curv.gradient(rows, w, regularizer=False), w @ G)
    V = torch.randn(2, curv.size, generator=_generator(6), dtype=DT)
    torch.testing.assert_close(curv.directional(V, rows), G @ V.T, rtol=1e-10, atol=1e-12)


def test_logistic_regression_dense_fast_path_matches_autograd():
    # a softmax of a linear map: the Kronecker-structured dense build, the GGN and the
    # exact Hessian all agree with autograd's explicit Hessian of the objective
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).to(DT)
    X, y = _data(n=15)
    rows = np.array([1, 2, 4, 8, 9, 11, 14])
    w = torch.tensor([0.1, 0.2, 0.05, 0.3, 0.0, 0.15, 0.2], dtype=DT)
    curv = LossCurvature(module, X, y, kind="exact", weight_decay=0.01, damping=0.003)
    assert curv._features  # the head holds every parameter: inputs cached, fast path
    f = _objective(curv.module, curv.layout, X[rows], y[rows], w, 0.01, 0.003)
    H = hessian(f, curv.theta)
    torch.testing.assert_close(curv.dense(rows, w), H, rtol=1e-10, atol=1e-12)
    ggn = LossCurvature(module, X, y, kind="ggn", weight_decay=0.01, damping=0.003)
    torch.testing.assert_close(ggn.dense(rows, w), H, rtol=1e-10, atol=1e-12)
    v = torch.randn(curv.size, generator=_generator(2), dtype=DT)
    torch.testing.assert_close(ggn.matvec(v, rows, w), H @ v, rtol=1e-10, atol=1e-12)


def test_last_layer_scope_is_the_last_layer_block_of_the_full_curvature():
    module = _tiny_mlp(seed=3)
    X, y = _data(n=11, seed=7)
    rows = np.arange(11)
    full = LossCurvature(module, X, y, weight_decay=0.02).dense(rows)
    head = LossCurvature(module, X, y, scope="last_layer", weight_decay=0.02)
    assert head.layout.names == ("2.weight", "2.bias")
    assert head._features  # the head's inputs are cached: its output is the model's output
    start = FlatLayout.of(module).offsets()["2.weight"][0]
    torch.testing.assert_close(head.dense(rows), full[start:, start:], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------ solvers
def test_cg_solves_a_known_spd_system_in_as_many_steps_as_distinct_eigenvalues():
    # CG's exact-arithmetic property: it terminates after (number of distinct eigenvalues)
    # steps; this matrix has 3 (Nocedal & Wright, Theorem 5.4)
    A = _spd([1.0, 1.0, 4.0, 4.0, 4.0, 9.0, 9.0, 9.0], seed=1)
    x_true = torch.arange(1.0, 9.0, dtype=DT)
    b = A @ x_true
    result = conjugate_gradient(lambda v: A @ v, b, tol=1e-12, max_iter=50)
    assert result.converged and not result.negative_curvature
    assert result.iterations <= 3
    torch.testing.assert_close(result.x, x_true, rtol=1e-10, atol=1e-10)
    assert result.residuals[0] == pytest.approx(1.0)
    assert result.residual <= 1e-12


def test_cg_residual_history_tracks_the_true_residual():
    A = _spd(list(np.geomspace(0.1, 100, 30)), seed=2)
    b = torch.randn(30, generator=_generator(1), dtype=DT)
    result = conjugate_gradient(lambda v: A @ v, b, tol=1e-6, max_iter=200)
    assert result.converged
    x = torch.linalg.solve(A, b)
    torch.testing.assert_close(result.x, x, rtol=1e-4, atol=1e-6)
    # the last entry is recomputed from scratch: it matches ||b - A x|| / ||b|| exactly
    true = float(torch.linalg.vector_norm(b - A @ result.x) / torch.linalg.vector_norm(b))
    assert result.residual == pytest.approx(true)
    # stopping early reports non-convergence with the residual reached
    short = conjugate_gradient(lambda v: A @ v, b, tol=1e-10, max_iter=3)
    assert not short.converged and short.iterations == 3 and short.residual > 1e-10


def test_cg_with_the_exact_preconditioner_converges_in_one_step():
    A = _spd(list(np.geomspace(1, 1e4, 20)), seed=3)
    b = torch.randn(20, generator=_generator(2), dtype=DT)
    result = conjugate_gradient(lambda v: A @ v, b, tol=1e-9,
                                preconditioner=lambda r: torch.linalg.solve(A, r))
    assert result.converged and result.iterations <= 2


def test_cg_stops_on_negative_curvature():
    A = _spd([1.0, 2.0, -3.0, 4.0], seed=4)
    b = torch.ones(4, dtype=DT)
    result = conjugate_gradient(lambda v: A @ v, b, tol=1e-10, max_iter=20)
    assert result.negative_curvature and not result.converged


def test_cg_zero_right_hand_side():
    result = conjugate_gradient(lambda v: v, torch.zeros(3, dtype=DT))
    assert result.converged and result.iterations == 0 and torch.equal(result.x, torch.zeros(3,
                                                                                              dtype=DT))


def test_lissa_converges_when_scale_exceeds_the_top_eigenvalue():
    A = _spd([0.5, 1.0, 2.0, 3.0], seed=5)
    b = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=DT)
    result = lissa(lambda v, t: A @ v, b, scale=4.0, depth=200, residual_matvec=lambda v: A @ v,
                   tol=1e-8)
    assert result.converged
    torch.testing.assert_close(result.x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-8)
    # the Neumann series diverges when scale < lambda_max / 2
    bad = lissa(lambda v, t: A @ v, b, scale=1.0, depth=200, residual_matvec=lambda v: A @ v)
    assert not bad.converged
    with pytest.raises(InvalidParameterError, match="scale"):
        lissa(lambda v, t: A @ v, b, scale=0.0, depth=10)


def test_lissa_with_stochastic_products_has_a_noise_floor_that_shrinks_with_scale():
    # A = (A1 + A2) / 2; alternating the halves is a noisy product whose bias is O(1/scale)
    A1, A2 = _spd([1.0, 2.0, 3.0], seed=6), _spd([1.5, 0.5, 2.5], seed=7)
    A = (A1 + A2) / 2
    b = torch.tensor([1.0, 2.0, 3.0], dtype=DT)

    def run(scale: float, depth: int):
        return lissa(lambda v, t: (A1 if t % 2 else A2) @ v, b, scale=scale, depth=depth,
                     residual_matvec=lambda v: A @ v, check_every=depth // 4)

    coarse, fine = run(6.0, 400), run(60.0, 2000)
    assert len(coarse.residuals) == 5  # 4 checks + the final one
    assert fine.residual < 0.02 < coarse.residual


def test_power_iteration_finds_the_top_eigenvalue():
    A = _spd([0.1, 0.5, 2.0, 7.0], seed=8)
    assert power_iteration(lambda v: A @ v, 4, iterations=200) == pytest.approx(7.0, rel=1e-6)


def test_cholesky_solver_solves_and_repairs_an_indefinite_matrix():
    A = _spd([1.0, 2.0, 5.0], seed=9)
    solver = CholeskySolver(A)
    b = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    torch.testing.assert_close(solver.solve(b), torch.linalg.solve(A, b))
    torch.testing.assert_close(solver.matvec(b), A @ b)
    B = torch.stack([b, 2 * b])
    torch.testing.assert_close(solver.solve(B), torch.linalg.solve(A, B.T).T)
    assert not solver.repaired and solver.solve_result(b).residual < 1e-12

    indefinite = _spd([-0.5, 1.0, 3.0], seed=10)
    assert check_spectrum(indefinite)[0] == 1
    with pytest.warns(ApproximationWarning, match="1 eigenvalue"):
        repaired = CholeskySolver(indefinite)
    assert repaired.repaired and repaired.shift > 0.5
    assert repaired.solve_result(b).negative_curvature
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CholeskySolver(A)  # a PD matrix never warns


def test_dense_from_matvec_reconstructs_a_matrix():
    A = _spd([1.0, 2.0, 3.0, 4.0, 5.0], seed=11)
    torch.testing.assert_close(dense_from_matvec(lambda v: A @ v, 5, block=2), A)
