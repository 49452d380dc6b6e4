"""The Stem error hierarchy.

Every error Stem raises on purpose derives from :class:`StemError`::

    StemError
    ├── ConfigurationError        bad options, URLs or settings, found at definition time
    │   └── UnknownSchemeError    no adapter is installed for a URL scheme
    ├── ArgumentError             (also a TypeError) arguments do not fit the task's signature
    ├── SerializationError        (also a TypeError) a value cannot be encoded for the wire
    ├── DecodeError               bytes from a broker or store cannot be decoded
    ├── UnknownTaskError          a task name is not registered with the app
    ├── UnknownWorkflowError      a workflow name is not registered with the app
    ├── DuplicateRunError         a workflow run with that id exists already
    ├── LeaseLostError            a workflow run's lease passed to another worker
    ├── NonDeterminismError       a replay met a different step than the one recorded
    ├── EventTimeoutError         (also a TimeoutError) a workflow's event wait ran out
    ├── ScheduleConflictError     a beat entry changed since it was read
    ├── TaskTimeoutError          (also a TimeoutError) waiting for a result took too long
    ├── AdapterError              a broker or store failed; the driver error is the __cause__
    │   ├── SchemaVersionError    a database was written by a newer Stem
    │   └── StoreLostError        the database was deleted or replaced under a running process
    ├── SoftTimeLimitExceeded     raised inside a handler when its soft time limit passes
    ├── TimeLimitExceeded         the hard time limit passed and the handler was stopped
    ├── Retry                     raised by ``ctx.retry()`` to ask for another attempt
    └── Reject                    raised by a handler to dead-letter its message at once

:class:`StemWarning` (a ``UserWarning``) flags a likely mistake that still works.

Each public class reports its module as ``stem``, so error records, dead letters and
tracebacks show ``stem.Reject``, the name to import, rather than a private module.
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "ArgumentError",
    "ConfigurationError",
    "DecodeError",
    "DuplicateRunError",
    "EventTimeoutError",
    "LeaseLostError",
    "NonDeterminismError",
    "Reject",
    "Retry",
    "ScheduleConflictError",
    "SchemaVersionError",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "StemError",
    "StemWarning",
    "StoreLostError",
    "TaskTimeoutError",
    "TimeLimitExceeded",
    "UnknownSchemeError",
    "UnknownTaskError",
    "UnknownWorkflowError",
]


class StemError(Exception):
    """Root of every error Stem raises on purpose."""


class ConfigurationError(StemError, ValueError):
    """An option, URL or setting is invalid; raised where it is given."""


class UnknownSchemeError(ConfigurationError):
    """No adapter is installed for the URL's scheme."""


class ArgumentError(StemError, TypeError):
    """Arguments do not fit the task's signature or annotations; nothing was published.

    Raised at enqueue; a worker that receives such arguments from a producer without
    the handler dead-letters the message as ``bad-arguments`` with this error.
    """


class SerializationError(StemError, TypeError):
    """A value cannot be encoded; nothing was published or stored."""


class DecodeError(StemError):
    """Bytes read from a broker or store do not decode to what was expected."""


class UnknownTaskError(StemError, LookupError):
    """The task name is not registered with this app."""


class UnknownWorkflowError(StemError, LookupError):
    """The workflow name is not registered with this app."""


class DuplicateRunError(StemError):
    """A workflow run with this id exists already: pick another id, or read that run."""


class LeaseLostError(StemError):
    """This process's lease on a workflow run ended and another worker (or a cancel or
    rewind) took the run: its writes are refused so they cannot overwrite newer ones."""


class NonDeterminismError(StemError):
    """A workflow's replay reached a different step than the one its run recorded: the
    code changed under a running workflow. Guard the change with ``wf.patched(...)``."""


class EventTimeoutError(StemError, TimeoutError):
    """``wf.wait_for_event`` ran out of time before the event came; catch it in the
    workflow to take another path."""


class ScheduleConflictError(StemError):
    """A beat entry changed since it was read (its version moved on): read it again,
    and write your change on top of what is stored."""


class TaskTimeoutError(StemError, TimeoutError):
    """A wait for a task or workflow ended before a final state was reached."""


class AdapterError(StemError):
    """A broker or store operation failed; the driver's exception is ``__cause__``."""


class SchemaVersionError(AdapterError):
    """The database holds a schema newer than this version of Stem understands."""


class StoreLostError(AdapterError):
    """What a broker or store was opened on is gone (its database file was deleted or
    replaced): nothing written now would reach anyone else. A worker stops on it; start
    the process again once the database is where it belongs.
    """


class SoftTimeLimitExceeded(StemError):
    """The task ran past its soft time limit; catch it to clean up, then return or raise."""


class TimeLimitExceeded(StemError):
    """The task ran past its hard time limit and was stopped; it is failed, not retried."""


class Retry(StemError):
    """Raised by :meth:`TaskContext.retry` to schedule another attempt.

    Attributes:
        countdown: seconds to wait before the next attempt, or None for the task's backoff.
        exc: the error that caused the retry, if any.
    """

    def __init__(self, countdown: float | None = None, exc: BaseException | None = None) -> None:
        super().__init__(f"retry requested (countdown={countdown})")
        self.countdown = countdown
        self.exc = exc


class Reject(StemError):
    """Raised by a handler to send its message to the dead-letter queue without retrying."""

    def __init__(self, reason: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason


class StemWarning(UserWarning):
    """A likely mistake that does not stop the program (shown once per place by default)."""


# Every class here is public (re-exported by ``stem``): name it from the package.
for _name in __all__:
    globals()[_name].__module__ = "stem"
del _name
