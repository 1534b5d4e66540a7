"""K-FAC, per-sample quantities and the leave-one-out damping rule, against closed forms:
explicit Kronecker products, explicit Gauss-Newton matrices, per-sample autograd loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian
from torch.func import jvp

from expunge.strategies.approximate.curvature import (
    KFACInverse,
    LeaveOneOutPredictor,
    LossCurvature,
    calibrate_damping,
    conjugate_gradient,
    diagonal_ggn,
    eigenvalue_correction,
    kfac_factors,
    kfac_layers,
    per_sample_gradients,
)

DT = torch.float64


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int, shape: tuple[int, ...], k: int = 3, seed: int = 1
          ) -> tuple[torch.Tensor, torch.Tensor]:
    g = _generator(seed)
    return torch.randn(n, *shape, generator=g, dtype=DT), torch.randint(0, k, (n,), generator=g)


def _seeded(build, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().to(DT)


def _explicit_ggn(curv: LossCurvature, rows: np.ndarray) -> torch.Tensor:
    """sum_i J_i^T (diag p_i - p_i p_i^T) J_i from autograd's explicit Jacobian."""
    def model_fn(t: torch.Tensor) -> torch.Tensor:
        return curv.logits(rows, t)
    J = jacobian(model_fn, curv.theta)  # (n, K, p)
    p = torch.softmax(model_fn(curv.theta), dim=1)
    A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("ikp,ikl,ilq->pq", J, A, J)


def _explicit_factors(curv, rows):
    """K-FAC factors written out sample by sample, position by position (no unfold tricks
    beyond the layer's own definition): A = sum_i sum_t a a^T, G = sum_i (1/T) sum_t sum_c
    g g^T with g the derivative of r_c^T z with respect to the layer's output at t."""
    layers, _ = kfac_layers(curv)
    A = [torch.zeros(lay.in_dim, lay.in_dim, dtype=DT) for lay in layers]
    G = [torch.zeros(lay.out_dim, lay.out_dim, dtype=DT) for lay in layers]
    for i in rows:
        captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        handles = [lay.module.register_forward_hook(
            lambda m, inp, out, k=k, store=captured: store.__setitem__(k, (inp[0], out)))
            for k, lay in enumerate(layers)]
        theta = curv.theta.clone().requires_grad_(True)
        z = curv.logits(np.array([i]), theta)
        for h in handles:
            h.remove()
        p = torch.softmax(z.detach(), dim=1)[0]
        for k, lay in enumerate(layers):
            a = lay.inputs(captured[k][0].detach())[0]  # (T, in)
            for t in range(a.shape[0]):
                A[k] += torch.outer(a[t], a[t])
        for c in range(p.shape[0]):
            root = p[c].sqrt() * (torch.eye(p.shape[0], dtype=DT)[c] - p)
            grads = torch.autograd.grad(z[0] @ root, [captured[k][1] for k in range(len(layers))],
                                        retain_graph=True)
            for k, lay in enumerate(layers):
                g = lay.outputs(grads[k])[0]  # (T, out)
                for t in range(g.shape[0]):
                    G[k] += torch.outer(g[t], g[t]) / g.shape[0]
    return A, G


# -------------------------------------------------------------------------- factors
def _two_layer_curvature(which: str, n_mlp: int) -> LossCurvature:
    """A tanh MLP 4-5-3 on ``n_mlp`` rows, or a conv net (stride 2, padding 1) on 7 rows."""
    if which == "mlp":
        module = _seeded(lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)))
        X, y = _data(n_mlp, (4,))
    else:
        module = _seeded(lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2),
                                               nn.ReLU(), nn.Flatten(), nn.Linear(12, 3)))
        X, y = _data(7, (2, 4, 4))
    return LossCurvature(module, X, y, chunk_size=4)


@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_factors_match_the_sample_by_sample_definition(which):
    curv = _two_layer_curvature(which, 9)
    y = curv.y
    layers, uncovered = kfac_layers(curv)
    assert len(layers) == 2 and not uncovered.any()
    rows = np.arange(len(y))
    factors = kfac_factors(curv, layers, uncovered, rows)
    A, G = _explicit_factors(curv, rows)
    assert factors.weight == len(y)
    for k in range(2):
        torch.testing.assert_close(factors.A[k], A[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(factors.G[k], G[k], rtol=1e-10, atol=1e-12)


def test_factors_of_disjoint_rows_add_up_to_the_factors_of_their_union():
    module = _seeded(lambda: nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)))
    X, y = _data(20, (4,))
    curv = LossCurvature(module, X, y, chunk_size=7)
    layers, uncovered = kfac_layers(curv)
    rows = np.arange(20)
    whole = kfac_factors(curv, layers, uncovered, rows)
    parts = kfac_factors(curv, layers, uncovered, rows[:8]) + kfac_factors(
        curv, layers, uncovered, rows[8:])
    for a, b in zip(whole.A + whole.G, parts.A + parts.G, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert parts.weight == whole.weight == 20


def test_kfac_equals_the_exact_gauss_newton_matrix_of_one_linear_layer_at_uniform_outputs():
    # zero weights: every sample predicts the uniform distribution, so sum_i Lambda_i kron
    # x_i x_i^T = Lambda kron sum_i x_i x_i^T and K-FAC has no approximation error
    module = nn.Sequential(nn.Linear(4, 3)).to(DT)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    X, y = _data(20, (4,))
    curv = LossCurvature(module, X, y, cache_features=False)
    layers, uncovered = kfac_layers(curv)
    rows = np.arange(20)
    inverse = KFACInverse(kfac_factors(curv, layers, uncovered, rows), layers, uncovered,
                          curv.size)
    H = _explicit_ggn(curv, rows) / 20
    v = torch.randn(curv.size, generator=_generator(8), dtype=DT)
    torch.testing.assert_close(inverse.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
    damped = H + 0.03 * torch.eye(curv.size, dtype=DT)
    torch.testing.assert_close(inverse.solve(v, 0.03), torch.linalg.solve(damped, v),
                               rtol=1e-9, atol=1e-12)


def test_kfac_of_one_sample_is_its_exact_gauss_newton_block():
    # one sample, one position: the expectation of a product is the product
    module = _seeded(lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)))
    X, y = _data(1, (3,))
    curv = LossCurvature(module, X, y)
    layers, uncovered = kfac_layers(curv)
    rows = np.array([0])
    inverse = KFACInverse(kfac_factors(curv, layers, uncovered, rows), layers, uncovered,
                          curv.size)
    H = _explicit_ggn(curv, rows)
    for lay in layers:  # each diagonal block of the GGN is exactly G kron A
        idx = torch.cat([torch.arange(*lay.weight).reshape(lay.out_dim, -1),
                         torch.arange(*lay.bias)[:, None]], dim=1).reshape(-1)
        block = torch.zeros(curv.size, dtype=DT)
        for j in idx.tolist():
            unit = torch.zeros(curv.size, dtype=DT)
            unit[j] = 1.0
            block = inverse.matvec(unit)
            torch.testing.assert_close(block[idx], H[idx, j], rtol=1e-10, atol=1e-12)


def test_damped_inverse_is_the_explicit_kronecker_solve():
    module = _seeded(lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), seed=4)
    X, y = _data(15, (3,), k=2)
    curv = LossCurvature(module, X, y)
    layers, uncovered = kfac_layers(curv)
    factors = kfac_factors(curv, layers, uncovered, np.arange(15))
    inverse = KFACInverse(factors, layers, uncovered, curv.size)
    b = torch.randn(curv.size, generator=_generator(3), dtype=DT)
    x = inverse.solve(b, 0.05)
    for k, lay in enumerate(layers):
        block = torch.kron(factors.G[k] / 15, factors.A[k] / 15) + 0.05 * torch.eye(
            lay.out_dim * lay.in_dim, dtype=DT)
        expected = torch.linalg.solve(block, lay.matrix(b).reshape(-1))
        torch.testing.assert_close(lay.matrix(x).reshape(-1), expected, rtol=1e-9, atol=1e-12)
    both = inverse.solve(torch.stack([b, 2 * b]), 0.05)
    torch.testing.assert_close(both[1], 2 * x)
    # the unit of damping is the mean diagonal entry of the K-FAC matrix
    eye = torch.eye(curv.size, dtype=DT)
    diagonal = [float(inverse.matvec(eye[j])[j]) for j in range(curv.size)]
    assert inverse.scale == pytest.approx(float(np.mean(diagonal)), rel=1e-9)


def test_layers_without_kfac_get_the_exact_gauss_newton_diagonal():
    module = _seeded(lambda: nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 3)))
    X, y = _data(10, (3,))
    curv = LossCurvature(module, X, y)
    layers, uncovered = kfac_layers(curv)
    assert len(layers) == 2 and int(uncovered.sum()) == 8  # the norm's weight and bias
    rows = np.arange(10)
    inverse = KFACInverse(kfac_factors(curv, layers, uncovered, rows), layers, uncovered,
                          curv.size)
    H = _explicit_ggn(curv, rows) / 10
    torch.testing.assert_close(inverse.diagonal, torch.diagonal(H)[uncovered],
                               rtol=1e-10, atol=1e-12)
    b = torch.randn(curv.size, generator=_generator(2), dtype=DT)
    torch.testing.assert_close(inverse.solve(b, 0.1)[uncovered],
                               b[uncovered] / (torch.diagonal(H)[uncovered] + 0.1))


def test_diagonal_ggn_and_per_sample_gradients_match_autograd():
    module = _seeded(lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)), seed=2)
    X, y = _data(6, (3,))
    curv = LossCurvature(module, X, y)
    rows = np.arange(6)
    w = torch.linspace(0.1, 0.6, 6, dtype=DT)
    torch.testing.assert_close(diagonal_ggn(curv, rows, w, chunk=4),
                               torch.diagonal(_explicit_ggn_weighted(curv, rows, w)),
                               rtol=1e-10, atol=1e-12)
    grads = per_sample_gradients(curv, rows, chunk=4)
    for i in rows:
        torch.testing.assert_close(grads[i], curv.gradient([i], 1.0, regularizer=False),
                                   rtol=1e-10, atol=1e-12)


def _explicit_ggn_weighted(curv, rows, w):
    out = torch.zeros(curv.size, curv.size, dtype=DT)
    for i, wi in zip(rows, w, strict=True):
        out += wi * _explicit_ggn(curv, np.array([i]))
    return out


def test_kfac_preconditioner_captures_badly_scaled_inputs():
    # logistic regression on features whose scales span 3 decades: the input factor A of
    # K-FAC whitens them, so preconditioned CG needs far fewer products than plain CG
    g = _generator(9)
    scales = torch.logspace(-1.5, 1.5, 10, dtype=DT)
    mixing = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=DT))[0]
    X = (torch.randn(400, 10, generator=g, dtype=DT) * scales) @ mixing
    y = torch.randint(0, 4, (400,), generator=g)
    module = _seeded(lambda: nn.Sequential(nn.Linear(10, 4)))
    rows = np.arange(400)
    curv = LossCurvature(module, X, y, weight_decay=1e-4)
    layers, uncovered = kfac_layers(curv)
    inverse = KFACInverse(kfac_factors(curv, layers, uncovered, rows), layers, uncovered,
                          curv.size)
    b = curv.gradient(rows[:20])
    plain = conjugate_gradient(lambda v: curv.matvec(v, rows), b, tol=1e-8, max_iter=1000)
    pre = conjugate_gradient(lambda v: curv.matvec(v, rows), b, tol=1e-8, max_iter=1000,
                             preconditioner=lambda r: inverse.solve(r, 1e-4))
    assert plain.converged and pre.converged
    assert pre.iterations < plain.iterations / 2, (pre.iterations, plain.iterations)
    torch.testing.assert_close(pre.x, plain.x, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- damping rule
@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_leave_one_out_logits_are_the_jvp_of_the_explicit_kfac_step(which):
    # the predictor's layer-structured shortcut (rank one for dense layers, explicit
    # per-sample matrices for convolutions) against the step computed the long way:
    # Delta_i = (K + delta)^-1 (g_i - g_bar) / (n - 1), then the JVP of the logits
    if which == "mlp":
        module = _seeded(lambda: nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)))
        X, y = _data(12, (4,))
    else:
        module = _seeded(lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(),
                                               nn.Flatten(), nn.Linear(32, 3)))
        X, y = _data(12, (1, 4, 4))
    curv = LossCurvature(module, X, y, weight_decay=0.01)
    layers, uncovered = kfac_layers(curv)
    rows = np.arange(12)
    inverse = KFACInverse(kfac_factors(curv, layers, uncovered, rows), layers, uncovered,
                          curv.size)
    g_bar = curv.gradient(rows, None, regularizer=False)
    probes = np.array([1, 4, 7])
    predictor = LeaveOneOutPredictor(curv, layers, inverse, probes, g_bar, n=12)
    damping = 0.02
    got = predictor.logits(damping)
    grads = per_sample_gradients(curv, probes)
    for j, i in enumerate(probes):
        step = inverse.solve(grads[j] - g_bar, damping) / 11
        dz = jvp(lambda t, i=i: curv.logits(np.array([i]), t), (curv.theta,), (step,))[1]
        torch.testing.assert_close(got[j], curv.logits(np.array([i]))[0].detach() + dz[0],
                                   rtol=1e-9, atol=1e-12)


class _Curve:
    """A stand-in predictor with a known decreasing loss curve."""

    def __init__(self, unit: float) -> None:
        self.inverse = type("I", (), {"scale": unit})()
        self.rows = torch.arange(5)
        self.train_loss = 0.1

    def loss(self, damping: float) -> float:
        return 0.1 + 1.0 / (1.0 + damping / 1e-3)


def test_calibration_finds_the_damping_where_the_prediction_meets_the_target():
    curve = _Curve(unit=0.5)
    result = calibrate_damping(curve, target=0.6, base=1e-4)  # type: ignore[arg-type]
    # 0.1 + 1 / (1 + d / 1e-3) = 0.6  <=>  d = 1e-3 (total damping: base + gamma)
    assert result.status == "matched"
    assert result.damping + 1e-4 == pytest.approx(1e-3, rel=0.05)
    # the unit of the grid is the weight decay (base): the objective's own damping
    assert result.predicted <= 0.6 and result.relative == pytest.approx(result.damping / 1e-4)
    assert result.curve[0][0] == 0.0
    # without weight decay the unit is the K-FAC matrix's mean diagonal, and gamma > 0
    bare = calibrate_damping(curve, target=0.6, base=0.0)  # type: ignore[arg-type]
    assert bare.damping == pytest.approx(1e-3, rel=0.05)
    assert bare.relative == pytest.approx(bare.damping / 0.5)
    low = calibrate_damping(curve, target=1.5, base=1e-4)  # type: ignore[arg-type]
    assert low.status == "floor" and low.damping == 0.0
    none = calibrate_damping(curve, target=0.05, base=1e-4)  # type: ignore[arg-type]
    # below the training loss: nothing to match, the objective's own damping is kept
    assert none.status == "no_gap" and none.damping == 0.0
    curve.loss = lambda damping: 0.5 + 1.0 / (1.0 + damping)  # type: ignore[method-assign]
    ceiling = calibrate_damping(curve, target=0.4, base=1e-4)  # type: ignore[arg-type]
    assert ceiling.status == "ceiling" and ceiling.damping == pytest.approx(1e-4 * 1e6)


# -------------------------------------------------------------------------- EK-FAC
@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_ekfac_eigenvalues_are_the_exact_ggn_diagonal_in_the_kfac_eigenbasis(which):
    """EK-FAC (George et al. 2018): in each layer's basis u_G[:, o] kron u_A[:, j], the
    corrected eigenvalue is the exact mean Gauss-Newton matrix's Rayleigh quotient, and
    the corrected inverse is diagonal there with exactly those values."""
    curv = _two_layer_curvature(which, 11)
    layers, uncovered = kfac_layers(curv)
    rows = np.arange(len(curv.y))
    base = KFACInverse(kfac_factors(curv, layers, uncovered, rows), layers, uncovered,
                       curv.size)
    values = eigenvalue_correction(curv, layers, base, rows)
    H = _explicit_ggn(curv, rows) / len(rows)  # the mean Gauss-Newton matrix
    corrected = base.corrected(values)
    differs = False
    for lay, eig, S in zip(layers, base.eigen, values, strict=True):
        assert S.shape == (lay.out_dim, lay.in_dim)
        for o in range(lay.out_dim):
            for j in range(lay.in_dim):
                v = torch.zeros(curv.size, dtype=DT)
                lay.scatter(torch.outer(eig.u_g[:, o], eig.u_a[:, j]), v)
                assert float(S[o, j]) == pytest.approx(float(v @ H @ v), rel=1e-9, abs=1e-12)
                # the corrected matrix is diagonal in this basis, with these eigenvalues
                torch.testing.assert_close(corrected.matvec(v), S[o, j] * v, rtol=1e-9,
                                           atol=1e-12)
                differs |= abs(float(S[o, j]) - float(eig.s_g[o] * eig.s_a[j])) > 1e-6
    assert differs  # K-FAC's products are not the exact diagonal here
    assert base.eigen[0].corrected is None  # the K-FAC inverse is left as it was
