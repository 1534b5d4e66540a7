"""One-class learners for ARCANE's per-class sub-models, and the calibration that joins them.

ARCANE (Yan et al., IJCAI 2022; abstract, and ALGORITHMS.md section 2(a)) turns multi-class
training into one one-class task per class, so a deletion touches one class only. For that
isolation to hold, sub-model ``k`` may see **class-k data only**; nothing here ever looks
at another class. The paper's
one-class learner was not available (ALGORITHMS.md section 2(f)1); two are offered:

* :class:`GaussianDensity` (``learner="gaussian"``): a Gaussian density on a fixed,
  data-independent feature map (random convolution features for images, random ReLU
  features for tabular data, keyed by the seed; see
  :class:`~expunge.strategies.exact._features.FeatureMap`). Its state is the sufficient
  statistics (count, mean, centred scatter) of the class's selected samples; the covariance
  is shrunk towards a multiple of the identity (``shrinkage``) because a 512-dimensional
  covariance from a few thousand samples is noisy. Score: the log-density. No SGD, so
  ``epochs`` and the optimizer settings do not apply. It takes features, not inputs, so
  that ARCANE can feed it features computed once per sample.
* :class:`SVDDHead` (``learner="svdd"``): Deep SVDD (Ruff et al., ICML 2018, "one-class
  Deep SVDD"): a network ``ψ`` trained by SGD with the shared loop to pull the class's samples
  towards a fixed centre ``c``; score ``-‖ψ(x) - c‖²``. As the paper prescribes against
  collapse, ``ψ`` has no bias terms (they are zeroed and frozen) and ``c`` is fixed from the
  initial network's mean output on the first block's data, with coordinates near 0 pushed
  to ``±eps``.

Calibration (``calibrate``): raw one-class scores of different classes are not on one
scale. An SVDD head whose network happens to shrink everything accepts a wide region with
small distances, so an argmax over raw distances is dominated by that class. The z-score
of each class's score against the scores of its **own** training samples removes any affine
difference between classes while keeping isolation. A Gaussian log-density is already a
normalised density (the determinant term does this job), so ``learner="gaussian"`` uses the
raw log-density by default; z-scoring it throws the determinant away and costs accuracy
(docs/arcane.md has the numbers).
"""

from __future__ import annotations

import torch
from torch import nn

from expunge.strategies.exact._features import FeatureMap

#: scores of classes with no training data: never predicted while another class has data
EMPTY_SCORE = float("-inf")


# ------------------------------------------------------------------------ Gaussian
class GaussianDensity(nn.Module):
    """Sufficient statistics of one class on a fixed feature map; scores by log-density.

    The feature map is rebuilt from its seed (not a buffer), so checkpoints hold only the
    statistics: ``count``, ``mean`` and the centred ``scatter`` matrix, float64. The
    ``*_features`` methods take ``φ(X)`` (float64, one row per sample); the others compute
    it from inputs with the map (the same bits: the map is row-independent).
    """

    count: torch.Tensor
    mean: torch.Tensor
    scatter: torch.Tensor

    def __init__(self, features: FeatureMap, input_shape: tuple[int, ...] | int) -> None:
        super().__init__()
        self.features = features
        shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
        dim = features.out_dim(shape)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("scatter", torch.zeros(dim, dim, dtype=torch.float64))

    def fit(self, X: torch.Tensor) -> None:
        self.fit_features(self.features(X))

    def merge(self, X: torch.Tensor) -> None:
        self.merge_features(self.features(X))

    @torch.no_grad()
    def fit_features(self, phi: torch.Tensor) -> None:
        """Replace the statistics by those of ``phi`` (two passes: mean, then centred scatter).

        Computing from scratch on the block's (cumulative) data makes the final state a
        function of the final training set alone, whatever came before.
        """
        n = phi.shape[0]
        self.count.fill_(float(n))
        if n == 0:
            self.mean.zero_()
            self.scatter.zero_()
            return
        mean = phi.mean(dim=0)
        centred = phi - mean
        self.mean.copy_(mean)
        self.scatter.copy_(centred.T @ centred)

    @torch.no_grad()
    def merge_features(self, phi: torch.Tensor) -> None:
        """Add the samples ``phi`` to the statistics (Chan, Golub & LeVeque's pairwise update).

        ``n = n_a + n_b``, ``δ = μ_b - μ_a``, ``μ = μ_a + δ n_b/n``,
        ``S = S_a + S_b + δδᵀ n_a n_b / n``: exact in real arithmetic, so the merged state
        equals the statistics of the union (up to rounding, which is fixed by the block plan).
        """
        n_b = phi.shape[0]
        if n_b == 0:
            return
        mean_b = phi.mean(dim=0)
        centred = phi - mean_b
        scatter_b = centred.T @ centred
        n_a = float(self.count)
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean.add_(delta * (n_b / n))
        self.scatter.add_(scatter_b + torch.outer(delta, delta) * (n_a * n_b / n))
        self.count.fill_(n)

    @torch.no_grad()
    def density(self, shrinkage: float, jitter: float = 1e-9) -> dict[str, torch.Tensor]:
        """Cholesky factor and log-determinant of the shrunk covariance.

        ``Σ = (1-λ)·S/n + λ·(tr(S/n)/p)·I + jitter·I`` (shrinkage towards a scaled identity,
        as in Ledoit & Wolf's target; ``λ = shrinkage``, fixed, not estimated from data).
        """
        n = max(float(self.count), 1.0)
        p = self.mean.shape[0]
        cov = self.scatter / n
        eye = torch.eye(p, dtype=torch.float64)
        scale = torch.trace(cov) / p
        shrunk = (1.0 - shrinkage) * cov + (shrinkage * scale + jitter) * eye
        chol = torch.linalg.cholesky(shrunk)
        log_det = 2.0 * torch.log(torch.diagonal(chol)).sum()
        return {"mean": self.mean.clone(), "chol": chol, "log_det": log_det}

    def score(self, X: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        """Gaussian log-density of each row of ``X`` (float64), up to the shared constant."""
        return self.score_features(self.features(X), extras)

    @torch.no_grad()
    def score_features(self, phi: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        """Log-density (up to ``-p/2 log 2π``) of feature rows ``phi``."""
        z = torch.linalg.solve_triangular(extras["chol"], (phi - extras["mean"]).T, upper=False)
        return -0.5 * (z.square().sum(dim=0) + extras["log_det"])


# ---------------------------------------------------------------------------- SVDD
class SVDDHead(nn.Module):
    """Deep SVDD: ``score(x) = -‖ψ(x) - c‖²`` with a bias-free network ``ψ`` and fixed ``c``."""

    center: torch.Tensor
    center_set: torch.Tensor

    def __init__(self, net: nn.Module, rep_dim: int, eps: float = 0.1) -> None:
        super().__init__()
        self.net = net
        self.eps = eps
        for name, param in net.named_parameters():
            # bias terms let ψ map everything onto c (the trivial "hypersphere collapse")
            if name.endswith("bias"):
                with torch.no_grad():
                    param.zero_()
                param.requires_grad_(False)
        self.register_buffer("center", torch.zeros(rep_dim))
        self.register_buffer("center_set", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def init_center(self, X: torch.Tensor) -> None:
        """Fix ``c`` as the initial network's mean output on ``X`` (once, if ``X`` is non-empty)."""
        if bool(self.center_set) or X.shape[0] == 0:
            return
        was_training = self.training
        self.eval()
        c = torch.cat([self.net(X[i: i + 4096]) for i in range(0, X.shape[0], 4096)]).mean(dim=0)
        self.train(was_training)
        # a coordinate at 0 could be matched by zero weights: push it away (Ruff et al.)
        small = c.abs() < self.eps
        c[small & (c < 0)] = -self.eps
        c[small & (c >= 0)] = self.eps
        self.center.copy_(c)
        self.center_set.fill_(True)

    def distances(self, X: torch.Tensor) -> torch.Tensor:
        """``‖ψ(x) - c‖²`` per row (differentiable)."""
        return (self.net(X) - self.center).square().sum(dim=1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return -self.distances(X)

    @torch.no_grad()
    def score(self, X: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
        was_training = self.training
        self.eval()
        out = torch.cat([self(X[i: i + 4096]) for i in range(0, X.shape[0], 4096)]) \
            if X.shape[0] else torch.empty(0)
        self.train(was_training)
        return out.to(torch.float64)


def svdd_loss(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared distance to the centre (labels are ignored: one class)."""
    assert isinstance(head, SVDDHead)
    return head.distances(x).mean()


# --------------------------------------------------------------------- calibration
def calibration_stats(train_scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean and standard deviation of a class's scores on its own training samples."""
    scores = train_scores.to(torch.float64)
    if scores.numel() == 0:
        return {"calib_mean": torch.zeros((), dtype=torch.float64),
                "calib_std": torch.ones((), dtype=torch.float64)}
    mean = scores.mean()
    std = scores.std(correction=0) if scores.numel() > 1 else torch.zeros((), dtype=torch.float64)
    # a floor so that a class of identical samples does not divide by zero
    floor = 1e-6 * mean.abs() + 1e-12
    return {"calib_mean": mean, "calib_std": torch.clamp(std, min=float(floor))}


def calibrate(raw: torch.Tensor, stats: dict[str, torch.Tensor], method: str) -> torch.Tensor:
    """Calibrated scores: ``(raw - mean_k) / std_k`` for ``"zscore"``; ``raw`` for ``"raw"``."""
    if method == "raw":
        return raw
    if method == "zscore":
        return (raw - stats["calib_mean"]) / stats["calib_std"]
    raise ValueError(f"unknown calibration {method!r}")


def aggregate(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax over classes of calibrated scores ``(n, K)`` at ``temperature``.

    Classes without training data carry ``-inf`` and get probability 0; if every class is
    empty the result is uniform. The argmax (ties: lowest class) is the ARCANE prediction.
    """
    if scores.numel() == 0:
        return scores.to(torch.float32)
    finite = torch.isfinite(scores)
    if not bool(finite.any()):
        return torch.full(scores.shape, 1.0 / scores.shape[1])
    logits = torch.where(finite, scores / temperature, torch.full_like(scores, float("-inf")))
    return torch.softmax(logits, dim=1).to(torch.float32)
