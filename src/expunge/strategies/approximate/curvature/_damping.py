"""Choosing K-FAC's damping by leave-one-out calibration against held-out data.

K-FAC misestimates the curvature in some directions, and the damping ``gamma`` added to
its eigenvalues decides how far an influence step goes along them: on a memorising MNIST
MLP, ``gamma = 1e-3`` halves the effect of a removal and ``1e-2`` erases it. This module
chooses ``gamma`` by a principle instead of a constant:

**the leave-one-out loss of a training sample is an unbiased estimate of the loss on
unseen data.** So the damping should make the influence-predicted leave-one-out losses of
training samples average to the loss measured on held-out samples. For probe training rows
``i``, removing ``i`` alone moves the parameters by the gradient-difference step
``Delta_i = (K + delta I)^{-1} (g_i - g_bar) / (n - 1)`` (``g_bar`` the mean training
gradient; :mod:`expunge.strategies.approximate.puma` derives it), the logits of ``i`` by
``J_i Delta_i`` to first order, and its loss to ``CE(z_i + J_i Delta_i, y_i)``, evaluated
exactly: a memorised sample's loss is flat at ``theta`` (its gradient is ~0) and only the
logit change shows how far it rises. The predicted mean is decreasing in ``delta``;
:func:`calibrate_damping` finds where it meets the held-out mean loss.

Cost, for ``P`` probes: one forward and ``K + 1`` backward passes over the probes, then per
trial damping a few products of the eigen-rotated inputs and outputs (``O(P T in out)``
per layer), no pass over data; about 35 trials. Parameters outside K-FAC layers enter only
through the ``g_bar`` term (one JVP over the probes per trial).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from expunge.strategies.approximate.curvature._jvp import jvp
from expunge.strategies.approximate.curvature._kfac import (
    KFACInverse,
    KFACLayer,
    capture_layers,
    output_derivatives,
)
from expunge.strategies.approximate.curvature._operator import LossCurvature

#: damping grid, relative to the unit (the weight decay, else the K-FAC matrix's mean
#: diagonal): 0, then 1e-6 ... 1e6
RELATIVE_GRID = (0.0, *[10.0 ** (k / 2) for k in range(-12, 13)])
#: bisection steps between the two grid points that bracket the target
REFINE_STEPS = 10


@dataclass(frozen=True)
class DampingCalibration:
    """The damping the leave-one-out rule chose, and the evidence.

    Attributes:
        damping: ``gamma``, added to the eigenvalues on top of ``base`` (the weight decay).
        relative: ``gamma`` in its unit: the weight decay (``base``), or without one the
            K-FAC matrix's mean diagonal.
        target: the held-out mean loss the prediction was matched to.
        train_loss: the probes' mean training loss (the prediction's limit for large
            damping: no step).
        predicted: the predicted mean leave-one-out loss at ``damping``.
        status: ``"matched"``; ``"floor"`` when even ``gamma = 0`` predicts less than the
            target (K-FAC's steps are already short: no damping beyond ``base``);
            ``"no_gap"`` when the held-out loss is not above the probes' training loss: the
            data shows no leave-one-out effect to calibrate against, so no damping is
            added beyond ``base`` (the objective's own curvature is trusted);
            ``"ceiling"`` when there is a gap but the largest damping tried still predicts
            more (the curvature is badly approximated).
        curve: ``(gamma, predicted loss)`` at every trial, in order.
        probes: probe rows used; seconds: wall time of the calibration.
    """

    damping: float
    relative: float
    target: float
    train_loss: float
    predicted: float
    status: str
    curve: tuple[tuple[float, float], ...]
    probes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["curve"] = [list(p) for p in self.curve]
        return out


class LeaveOneOutPredictor:
    """First-order leave-one-out logits of probe rows under damped K-FAC steps.

    Built once (the passes over the probes); :meth:`loss` then evaluates any damping.

    Args:
        curv: the curvature operator (its parameters are the linearisation point).
        layers, inverse: the K-FAC layers and the inverse of the training curvature.
        rows: the probe rows (training samples).
        mean_gradient: ``g_bar``, the mean cross-entropy gradient over the training set.
        n: the training-set size (each probe's removal weight is ``1 / (n - 1)``).
    """

    def __init__(self, curv: LossCurvature, layers: Sequence[KFACLayer], inverse: KFACInverse,
                 rows: np.ndarray, mean_gradient: torch.Tensor, n: int) -> None:
        self.curv, self.inverse, self.n = curv, inverse, int(n)
        self.rows = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        self.mean_gradient = mean_gradient
        z, inputs, outputs, _ = capture_layers(curv, layers, self.rows, curv.theta)
        y = curv.y[self.rows]
        # per-sample loss derivatives at every layer output (one backward of the summed CE)
        deltas = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), outputs,
                                     retain_graph=True)
        # logit Jacobians with respect to every layer output: K unit cotangents, one pass
        units = torch.eye(z.shape[1], dtype=z.dtype)[:, None, :].expand(-1, z.shape[0], -1)
        jac = output_derivatives(z, outputs, units.contiguous(), keep_graph=False)
        self.parts = []
        for k, (lay, eig) in enumerate(zip(layers, inverse.eigen, strict=True)):
            a_rot = lay.inputs(inputs[k]) @ eig.u_a  # (P, T, in)
            d_rot = lay.outputs(deltas[k].detach()) @ eig.u_g  # (P, T, out)
            per_class = lay.outputs(jac[k].flatten(0, 1))  # (K P, T, out)
            J = per_class.unflatten(0, (jac[k].shape[0], -1)).transpose(0, 1)  # (P, K, T, out)
            g_rot = eig.u_g.T @ lay.matrix(mean_gradient) @ eig.u_a  # g_bar, rotated
            self.parts.append((eig, a_rot, d_rot, J, g_rot))
        self.z, self.y = z.detach(), y
        self.train_loss = float(F.cross_entropy(self.z, y))

    def logits(self, damping: float) -> torch.Tensor:
        """Predicted logits of each probe after removing it alone, ``(P, K)``.

        Per K-FAC layer, with ``M = 1 / (s_G s_A^T + damping)`` in the eigenbasis, the
        step's effect on the layer's output at position ``t`` is ``U_G [(G~_i - g~) * M]
        a~_t`` (``~``: rotated; ``G~_i`` the probe's own gradient), and the logits move by
        its product with the probe's logit Jacobian. Parameters outside K-FAC layers add
        a JVP of their ``g_bar`` step.
        """
        dz = torch.zeros_like(self.z)
        for eig, a_rot, d_rot, J, g_rot in self.parts:
            scale = 1.0 / (eig.eigenvalues() + damping)  # (out, in)
            if a_rot.shape[1] == 1:  # one position: the per-sample gradient is rank one
                own = d_rot[:, 0] * ((a_rot[:, 0] ** 2) @ scale.T)
                shift = (own - a_rot[:, 0] @ (g_rot * scale).T) @ eig.u_g.T  # (P, out)
                dz += torch.einsum("pko,po->pk", J[:, :, 0], shift)
            else:
                step = torch.einsum("pto,pti->poi", d_rot, a_rot) - g_rot
                shift = torch.einsum("pti,poi->pto", a_rot, step * scale) @ eig.u_g.T
                dz += torch.einsum("pkto,pto->pk", J, shift)
        uncovered = self.inverse.uncovered
        if bool(uncovered.any()):
            tangent = torch.zeros_like(self.mean_gradient)
            tangent[uncovered] = (self.mean_gradient[uncovered]
                                  / (self.inverse.diagonal + damping))
            dz -= jvp(lambda t: self.curv.logits(self.rows, t), self.curv.theta, tangent)[1]
        return self.z + dz / max(self.n - 1, 1)

    def loss(self, damping: float) -> float:
        """The predicted mean leave-one-out cross-entropy of the probes."""
        return float(F.cross_entropy(self.logits(damping), self.y))


def calibrate_damping(predictor: LeaveOneOutPredictor, target: float, *, base: float,
                      grid: Sequence[float] = RELATIVE_GRID,
                      refine: int = REFINE_STEPS) -> DampingCalibration:
    """The ``gamma >= 0`` at which the predicted leave-one-out loss meets ``target``.

    The total damping tried is ``base + gamma``; ``gamma`` runs over ``grid`` times a unit
    (``base``, the weight decay: the curvature floor the objective already has; or, without
    one, the K-FAC matrix's mean diagonal), then bisection in log space refines the bracket
    where the prediction crosses the target. With ``base = 0`` the smallest ``gamma`` is
    ``1e-12`` of the unit, so that the inverse exists.
    """
    started = time.perf_counter()
    unit = base if base > 0 else predictor.inverse.scale
    floor = 0.0 if base > 0 else 1e-12 * unit
    curve: list[tuple[float, float]] = []

    def trial(gamma: float) -> float:
        value = predictor.loss(base + gamma)
        curve.append((gamma, value))
        return value

    gammas = [max(r * unit, floor) for r in grid]
    values = [trial(g) for g in gammas]
    if values[0] <= target:
        chosen, status = gammas[0], "floor"
    elif target <= predictor.train_loss:
        chosen, status = gammas[0], "no_gap"
    elif values[-1] > target:
        chosen, status = gammas[-1], "ceiling"
    else:
        k = next(i for i, v in enumerate(values) if v <= target)
        high, low = gammas[k], max(gammas[k - 1], floor, 1e-4 * gammas[k])
        for _ in range(refine):  # invariant: loss(low) > target >= loss(high)
            middle = math.sqrt(low * high)
            if trial(middle) <= target:
                high = middle
            else:
                low = middle
        chosen, status = high, "matched"
    predicted = next(v for g, v in reversed(curve) if g == chosen)
    return DampingCalibration(
        damping=chosen, relative=chosen / unit if unit > 0 else 0.0, target=float(target),
        train_loss=predictor.train_loss, predicted=predicted, status=status, curve=tuple(curve),
        probes=int(predictor.rows.shape[0]), seconds=time.perf_counter() - started,
    )
