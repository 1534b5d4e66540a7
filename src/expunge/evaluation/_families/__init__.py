"""The metric families of one evaluation run, in the order their rows are reported.

Each family is a function ``(RunContext) -> None`` that adds rows, notes and curves; the
context (``_context.py``) holds the splits, both models' predictions and the reference.
"""

from collections.abc import Callable

from expunge.evaluation._families._context import RunContext
from expunge.evaluation._families.accuracy import accuracy_rows, avg_gap_row
from expunge.evaluation._families.cost import cost_rows
from expunge.evaluation._families.distance import distance_rows
from expunge.evaluation._families.membership import logistic_rows, svc_rows, threshold_rows
from expunge.evaluation._families.representation import probe_rows, relearn_rows
from expunge.evaluation._families.shadow import shadow_rows

FAMILIES: tuple[Callable[[RunContext], None], ...] = (
    accuracy_rows, threshold_rows, svc_rows, logistic_rows, shadow_rows, avg_gap_row,
    distance_rows, probe_rows, relearn_rows, cost_rows,
)
