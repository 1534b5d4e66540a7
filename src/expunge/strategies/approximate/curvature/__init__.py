"""Curvature toolkit for influence-based unlearning: reusable, with no strategy in it.

Everything works on one flat vector ``theta`` holding the parameters in scope of a
classifier trained with cross-entropy (and optional L2). What is here, by job:

* :class:`LossCurvature` (``_operator``): the weighted objective on fixed data, its
  gradient, exact-Hessian and Gauss-Newton (GGN) products, per-sample directional
  derivatives, the dense matrix for small models, and a functional forward;
* K-FAC (``_kfac``): :func:`kfac_layers` finds the ``nn.Linear`` / ``nn.Conv2d`` layers in
  scope, :func:`kfac_factors` accumulates their Kronecker factors as **sums over rows**
  (so factors of disjoint row sets add exactly: keep them per bucket and recompute one
  bucket), and :class:`KFACInverse` applies ``(K + delta I)^{-1}`` for any damping through
  eigendecompositions; other parameters get the GGN diagonal;
* per-sample quantities (``_per_sample``): :func:`per_sample_gradients` and the GGN/Fisher
  diagonal :func:`diagonal_ggn`;
* the damping rule (``_damping``): :func:`calibrate_damping` chooses K-FAC's damping so that
  influence-predicted leave-one-out losses match a held-out loss;
* solvers (``_solvers``) with residual tracking: :func:`conjugate_gradient`, :func:`lissa`,
  :class:`CholeskySolver`, :func:`power_iteration`, :func:`check_spectrum`;
* generic products (``_products``): :func:`hvp`, :func:`ggn_vp`, :func:`dense_from_matvec`.

Every function states its cost in data passes; tests check each against closed forms
(``tests/strategies/test_hessian.py``, ``tests/strategies/test_kfac.py``). PUMA and naive
influence removal (:mod:`expunge.strategies.approximate.puma`) are built on it.
"""

from expunge.strategies.approximate.curvature._common import (
    FlatLayout,
    Matvec,
    warn_approximation,
)
from expunge.strategies.approximate.curvature._damping import (
    DampingCalibration,
    LeaveOneOutPredictor,
    calibrate_damping,
)
from expunge.strategies.approximate.curvature._kfac import (
    KFACFactors,
    KFACInverse,
    KFACLayer,
    LayerEigen,
    capture_layers,
    eigenvalue_correction,
    input_factor_sums,
    kfac_factors,
    kfac_factors_and_gradient,
    kfac_layers,
    output_hessian_roots,
    parameter_free_inputs,
)
from expunge.strategies.approximate.curvature._operator import (
    CurvatureKind,
    LossCurvature,
    Scope,
)
from expunge.strategies.approximate.curvature._per_sample import (
    diagonal_ggn,
    per_sample_gradients,
)
from expunge.strategies.approximate.curvature._products import (
    dense_from_matvec,
    ggn_vp,
    hvp,
)
from expunge.strategies.approximate.curvature._solvers import (
    CholeskySolver,
    SolveResult,
    check_spectrum,
    conjugate_gradient,
    lissa,
    power_iteration,
)

__all__ = [
    "CholeskySolver",
    "CurvatureKind",
    "DampingCalibration",
    "FlatLayout",
    "KFACFactors",
    "KFACInverse",
    "KFACLayer",
    "LayerEigen",
    "LeaveOneOutPredictor",
    "LossCurvature",
    "Matvec",
    "Scope",
    "SolveResult",
    "calibrate_damping",
    "capture_layers",
    "check_spectrum",
    "conjugate_gradient",
    "dense_from_matvec",
    "diagonal_ggn",
    "eigenvalue_correction",
    "ggn_vp",
    "hvp",
    "input_factor_sums",
    "kfac_factors",
    "kfac_factors_and_gradient",
    "kfac_layers",
    "lissa",
    "output_hessian_roots",
    "parameter_free_inputs",
    "per_sample_gradients",
    "power_iteration",
    "warn_approximation",
]
