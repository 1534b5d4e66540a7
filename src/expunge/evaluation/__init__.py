"""Evaluation harness: did a strategy forget, and at what cost, against a retrained reference.

``evaluate(strategy, test=..., forget_ids=..., reference="retrain")`` returns an
:class:`EvaluationReport` with, for the model and its reference side by side:

* accuracy: UA (1 - forget accuracy), RA, TA, the removed class when a whole class is
  forgotten, each as a gap to the reference, and SalUn's Avg. Gap;
* membership inference: threshold attacks (loss, confidence, entropy, modified entropy),
  the OPTML papers' SVC MIA-Efficacy, the challenge kit's logistic regression on the loss,
  LiRA, U-LiRA and RMIA with a few shadow models (AUC, best balanced accuracy, TPR at 1 % /
  0.1 % FPR where meaningful);
* representation: a linear probe on hidden features and the time to relearn the forget set;
* across runs (``seeds=``, two axes: training x unlearning seeds, 95 % intervals): KLoM,
  the KL divergence of margins between unlearned and retrained models per point;
* distances to the reference: prediction agreement, mean L1 of softmax outputs, JS
  divergence, parameter L2;
* cost: forget seconds, samples retrained, store bytes, precompute time.

The building blocks (features, metrics, attacks, distances) are public and tested against
closed forms and scikit-learn. See ``docs/evaluation.md``.
"""

from expunge.evaluation._cache import EvaluationCache
from expunge.evaluation._distances import (
    js_divergence,
    mean_l1_distance,
    parameter_l2,
    prediction_agreement,
)
from expunge.evaluation._evaluate import ATTACKS, DEFAULT_ATTACKS, combine_reports, evaluate
from expunge.evaluation._families.representation import CHECKS, hidden_features
from expunge.evaluation._features import (
    confidence,
    entropy,
    logit_scaled_confidence,
    m_entropy,
    sample_loss,
)
from expunge.evaluation._klom import klom_scores, margins
from expunge.evaluation._metrics import (
    MembershipMetrics,
    best_balanced_accuracy,
    membership_metrics,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
)
from expunge.evaluation._reference import retrain_reference
from expunge.evaluation._report import EvaluationReport, MetricRow, interval
from expunge.evaluation._shadow_pool import memorisation_scores, memorised_forget_ids
from expunge.evaluation.attacks import (
    LogisticAttackResult,
    ShadowModels,
    likelihood_ratio_scores,
    logistic_loss_attack,
    rmia_scores,
    shadow_membership,
    svc_mia_efficacy,
    threshold_attack,
    train_shadows,
    ulira_leave_one_out,
)

__all__ = [
    "ATTACKS",
    "CHECKS",
    "DEFAULT_ATTACKS",
    "EvaluationCache",
    "EvaluationReport",
    "LogisticAttackResult",
    "MembershipMetrics",
    "MetricRow",
    "ShadowModels",
    "best_balanced_accuracy",
    "combine_reports",
    "confidence",
    "entropy",
    "evaluate",
    "hidden_features",
    "interval",
    "js_divergence",
    "klom_scores",
    "likelihood_ratio_scores",
    "logistic_loss_attack",
    "logit_scaled_confidence",
    "m_entropy",
    "margins",
    "mean_l1_distance",
    "membership_metrics",
    "memorisation_scores",
    "memorised_forget_ids",
    "parameter_l2",
    "prediction_agreement",
    "retrain_reference",
    "rmia_scores",
    "roc_auc",
    "roc_curve",
    "sample_loss",
    "shadow_membership",
    "svc_mia_efficacy",
    "threshold_attack",
    "tpr_at_fpr",
    "train_shadows",
    "ulira_leave_one_out",
]
