"""Former home of the curvature toolkit; it now lives in
:mod:`expunge.strategies.approximate.curvature` (one module per job). These names are
re-exported so that code written against the old path keeps working."""

from expunge.strategies.approximate.curvature import (  # noqa: F401
    CholeskySolver,
    CurvatureKind,
    FlatLayout,
    LossCurvature,
    Matvec,
    Scope,
    SolveResult,
    check_spectrum,
    conjugate_gradient,
    dense_from_matvec,
    ggn_vp,
    hvp,
    lissa,
    power_iteration,
    warn_approximation,
)
