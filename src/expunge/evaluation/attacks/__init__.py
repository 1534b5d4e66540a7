"""Membership-inference attacks used by :func:`expunge.evaluate`.

* threshold attacks on the loss, confidence, entropy and modified entropy
  (:func:`threshold_attack`);
* the OPTML papers' SVC "MIA-Efficacy" (:func:`svc_mia_efficacy`);
* the NeurIPS 2023 challenge kit's logistic regression on the loss
  (:func:`logistic_loss_attack`);
* LiRA and U-LiRA with a few shadow models (:func:`train_shadows`,
  :func:`likelihood_ratio_scores`, :func:`shadow_membership`, :func:`ulira_leave_one_out`);
* RMIA with the shadow models as references (:func:`rmia_scores`).

Every score follows one convention: higher means "more likely a member".
"""

from expunge.evaluation.attacks._lira import (
    ShadowModels,
    likelihood_ratio_scores,
    shadow_membership,
    train_shadows,
    ulira_leave_one_out,
)
from expunge.evaluation.attacks._logistic import LogisticAttackResult, logistic_loss_attack
from expunge.evaluation.attacks._rmia import rmia_scores
from expunge.evaluation.attacks._svc import SVC_PARAMS, svc_mia_efficacy
from expunge.evaluation.attacks._threshold import (
    THRESHOLD_FEATURES,
    member_score,
    threshold_attack,
)

__all__ = [
    "SVC_PARAMS",
    "THRESHOLD_FEATURES",
    "LogisticAttackResult",
    "ShadowModels",
    "likelihood_ratio_scores",
    "logistic_loss_attack",
    "member_score",
    "rmia_scores",
    "shadow_membership",
    "svc_mia_efficacy",
    "threshold_attack",
    "train_shadows",
    "ulira_leave_one_out",
]
