"""Task options: retry strategies, rate limits, time limits, uniqueness, and their checks."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import msgspec

from ._errors import ConfigurationError

__all__ = ["ExponentialBackoff", "RateLimit", "RetryStrategy", "TaskOptions", "seconds"]

PoolKind = Literal["async", "thread", "process"]

#: A retry strategy maps the number of the attempt that failed (0 for the first run) to
#: the seconds to wait before the next one.
RetryStrategy = Callable[[int], float]


def seconds(value: float | timedelta | None, what: str) -> float | None:
    """Seconds from a number or timedelta; a negative value is a ConfigurationError."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{what} must be seconds (a number) or a timedelta, not {value!r}")
    if value < 0:
        raise ConfigurationError(f"{what} cannot be negative (got {value})")
    return float(value)


class ExponentialBackoff:
    """``base * factor**attempt`` seconds, capped at ``max_delay``, with full jitter by default.

    Full jitter (a uniform draw between 0 and the cap) spreads retries of many tasks
    that failed together, so they do not hammer a recovering service in lockstep.
    """

    def __init__(
        self,
        base: float = 1.0,
        factor: float = 2.0,
        max_delay: float = 600.0,
        *,
        jitter: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if base < 0 or factor < 1 or max_delay < 0:
            raise ConfigurationError(
                "ExponentialBackoff needs base >= 0, factor >= 1, max_delay >= 0"
            )
        self.base, self.factor, self.max_delay, self.jitter = base, factor, max_delay, jitter
        self._rng = rng or random.Random()

    def __call__(self, attempt: int) -> float:
        cap = min(self.max_delay, self.base * self.factor ** min(attempt, 64))
        return self._rng.uniform(0, cap) if self.jitter else cap

    def __repr__(self) -> str:
        return (
            f"ExponentialBackoff(base={self.base}, factor={self.factor}, "
            f"max_delay={self.max_delay}, jitter={self.jitter})"
        )


_RATE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*(s|sec|m|min|h|hr|hour|second|minute)s?\s*$"
)
_UNIT = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
}


class RateLimit(msgspec.Struct, frozen=True):
    """At most ``count`` task starts per ``period`` seconds."""

    count: float
    period: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Parse ``"10/s"``, ``"100/m"``, ``"1000/h"`` or ``"5/10s"``."""
        match = _RATE.match(text) if isinstance(text, str) else None
        if match is None:
            raise ConfigurationError(
                f"rate limit {text!r} is not understood; write COUNT/UNIT such as "
                "'10/s', '100/m', '1000/h' or '5/10s'"
            )
        count = float(match.group(1))
        period = float(match.group(2) or 1) * _UNIT[match.group(3)]
        if count <= 0 or period <= 0:
            raise ConfigurationError(f"rate limit {text!r} must allow a positive number of tasks")
        return cls(count, period)

    @property
    def interval(self) -> float:
        """Seconds between starts at the steady rate."""
        return self.period / self.count


@dataclass(frozen=True, kw_only=True)
class TaskOptions:
    """The options of a task, checked when the task is defined."""

    name: str
    queue: str = "default"
    priority: int = 0
    max_retries: int = 3
    retry_backoff: RetryStrategy | None = None
    retry_for: tuple[type[BaseException], ...] = (Exception,)
    rate_limit: RateLimit | None = None
    visibility_timeout: float = 60.0
    soft_time_limit: float | None = None
    time_limit: float | None = None
    unique: bool = False
    unique_for: float | None = None
    expires: float | None = None
    pool: PoolKind | None = None
    result_ttl: float | None = 86400.0
    args_encoder: str = "json"
    result_encoder: str = "json"

    def backoff(self, attempt: int) -> float:
        return (self.retry_backoff or _DEFAULT_BACKOFF)(attempt)


_DEFAULT_BACKOFF = ExponentialBackoff()


def check_priority(priority: Any) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise ConfigurationError(
            f"priority must be a whole number from 0 to 9 (higher runs first), not {priority!r}"
        )
    return priority


def check_queue(queue: Any) -> str:
    if (
        not isinstance(queue, str)
        or not queue
        or len(queue) > 200
        or any(c.isspace() for c in queue)
    ):
        raise ConfigurationError(f"queue must be a non-empty name without spaces, not {queue!r}")
    return queue


def build_options(name: str, **raw: Any) -> TaskOptions:
    """Check raw keyword options and build :class:`TaskOptions`, or raise ConfigurationError."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"task name must be a non-empty string, not {name!r}")
    opts: dict[str, Any] = {"name": name}
    for key, value in raw.items():
        if value is None:
            continue
        if key == "queue":
            opts[key] = check_queue(value)
        elif key == "priority":
            opts[key] = check_priority(value)
        elif key == "max_retries":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"max_retries must be a whole number >= 0, not {value!r}")
            opts[key] = value
        elif key == "retry_backoff":
            if isinstance(value, int | float | timedelta) and not isinstance(value, bool):
                fixed = seconds(value, "retry_backoff")
                opts[key] = lambda _attempt, _d=fixed: _d
            elif callable(value):
                opts[key] = value
            else:
                raise ConfigurationError(
                    "retry_backoff must be seconds, a timedelta, or a callable(attempt) -> seconds"
                )
        elif key == "retry_for":
            types = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
                raise ConfigurationError("retry_for must be an exception class or a tuple of them")
            opts[key] = types
        elif key == "rate_limit":
            opts[key] = value if isinstance(value, RateLimit) else RateLimit.parse(value)
        elif key in {
            "visibility_timeout",
            "soft_time_limit",
            "time_limit",
            "unique_for",
            "expires",
            "result_ttl",
        }:
            secs = seconds(value, key)
            if (
                key in {"visibility_timeout", "soft_time_limit", "time_limit", "unique_for"}
                and secs == 0
            ):
                raise ConfigurationError(f"{key} must be more than zero")
            opts[key] = secs
        elif key == "pool":
            if value not in ("async", "thread", "process"):
                raise ConfigurationError(
                    f"pool must be 'async', 'thread' or 'process', not {value!r}"
                )
            opts[key] = value
        elif key == "unique":
            if not isinstance(value, bool):
                raise ConfigurationError(f"{key} must be True or False, not {value!r}")
            opts[key] = value
        elif key in {"args_encoder", "result_encoder"}:
            opts[key] = value
        else:
            raise ConfigurationError(f"unknown task option {key!r}")
    soft, hard = opts.get("soft_time_limit"), opts.get("time_limit")
    if soft is not None and hard is not None and soft >= hard:
        raise ConfigurationError("soft_time_limit must be shorter than time_limit (the hard limit)")
    if opts.get("unique_for") is not None and not opts.get("unique"):
        opts["unique"] = True
    return TaskOptions(**opts)
