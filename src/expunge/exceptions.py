"""Every error and warning expunge raises.

Each error also inherits from the builtin that ordinary code would catch (scikit-learn's
pattern), so ``except ValueError`` keeps working. Messages name the bad value and the fix.
Raising any of these leaves model, store and ledger exactly as they were.
"""

from __future__ import annotations


class ExpungeError(Exception):
    """Base class of every error expunge raises."""


class InvalidParameterError(ExpungeError, ValueError, TypeError):
    """A constructor or function argument has the wrong type or value."""


class NotFittedError(ExpungeError, ValueError, AttributeError):
    """A method that needs a fitted strategy was called before ``fit``."""


class InvalidRequestError(ExpungeError, ValueError):
    """A forget request is malformed: empty, duplicated ids, or ids that are not integers."""


class UnknownSampleError(ExpungeError, LookupError):
    """A requested id is not in the training set."""


class UnknownSubjectError(ExpungeError, LookupError):
    """No retained sample belongs to the requested subject."""


class AlreadyForgottenError(ExpungeError, ValueError):
    """A requested id was forgotten by an earlier request."""


class UnknownStrategyError(ExpungeError, ValueError):
    """No strategy is registered under the given name."""


class UnknownModelError(ExpungeError, ValueError):
    """No reference model is registered under the given name."""


class UnsupportedModelError(ExpungeError, ValueError):
    """A model cannot be used with the data or strategy (wrong input shape, no parameters...)."""


class StrategyRegistrationError(ExpungeError, ValueError, TypeError):
    """A class cannot be registered as a strategy: not a concrete subclass of
    ``UnlearningStrategy``, without a ``name`` or ``guarantee``, or its name is taken."""


class DatasetError(ExpungeError, ValueError):
    """A data file is missing, truncated or malformed, or arrays disagree in length."""


class StoreError(ExpungeError, OSError):
    """A store directory is missing, unreadable or not an expunge store."""


class UnfinishedRewriteError(StoreError):
    """A committed request's in-place rewrite of the training data failed (a disk error):
    the request stands in the ledger, and the old files, which still hold the forgotten
    rows, stay on disk until the rewrite is finished (the next request, or recovery on
    ``expunge.open``)."""


class StoreMismatchError(ExpungeError, ValueError):
    """A store was created with other parameters or data than the ones given now."""


class WorkerError(ExpungeError, RuntimeError):
    """A worker (process pool or Ray) died while training a sub-model.

    Nothing was committed: the model, the ledger and the store's committed state are the ones
    before the request. Checkpoints finished before the failure stay in the store as orphans;
    retrying the request reuses them, and reopening the store deletes them.
    """


class LedgerIntegrityError(ExpungeError):
    """The deletion ledger's hash chain does not verify: a row was edited, removed or moved.

    Also the base of every failed integrity check (:meth:`UnlearningStrategy.verify`).
    """


class StoreIntegrityError(LedgerIntegrityError):
    """A store file does not match the digest committed for it (edited, truncated, swapped),
    or the store's committed state does not match its ledger. The message names the file."""


class StoreLockedError(ExpungeError, TimeoutError):
    """Another process held the store's write lock for longer than the ``timeout`` given."""


class ConcurrentModificationError(ExpungeError, RuntimeError):
    """The store's committed state changed under a request (a writer that bypassed the lock).

    Nothing was committed: retry the request, which re-reads the store first.
    """


class DivergedError(ExpungeError, ArithmeticError):
    """An approximate request produced non-finite parameters (a gradient-ascent-style
    method diverged, or a patch overflowed).

    Nothing was committed or written: the model, the ledger and the store are the ones
    before the request. Lower the method's step size or number of steps, or use an exact
    strategy for a request of this size.
    """


class ExpungeWarning(UserWarning):
    """Base class of every warning expunge emits."""


class ApproximationWarning(ExpungeWarning):
    """An approximate computation is unreliable (solver did not converge, curvature not PD)."""


class CostWarning(ExpungeWarning):
    """A request costs as much as the exact alternative (retraining) or more."""


class NondeterminismWarning(ExpungeWarning):
    """An exactness guarantee cannot hold bitwise in the current setting."""


__all__ = [
    "AlreadyForgottenError",
    "ApproximationWarning",
    "ConcurrentModificationError",
    "CostWarning",
    "DatasetError",
    "ExpungeError",
    "ExpungeWarning",
    "InvalidParameterError",
    "InvalidRequestError",
    "LedgerIntegrityError",
    "NondeterminismWarning",
    "NotFittedError",
    "StoreError",
    "StoreIntegrityError",
    "StoreLockedError",
    "StoreMismatchError",
    "StrategyRegistrationError",
    "UnfinishedRewriteError",
    "UnknownModelError",
    "UnknownSampleError",
    "UnknownStrategyError",
    "UnsupportedModelError",
    "WorkerError",
]
