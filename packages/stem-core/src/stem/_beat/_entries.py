"""Beat entries defined in code (``app.schedule(...)``), checked when defined, and their
sync to the ScheduleStore when a beat starts."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from .._errors import ConfigurationError, ScheduleConflictError
from .._options import check_priority, check_queue
from ..contracts import ScheduleEntry, ScheduleStore
from ._plan import CATCH_UP, DEFAULT_EACH_LIMIT, jittered
from ._specs import Interval, Spec

if TYPE_CHECKING:
    from .._app import Stem

__all__ = [
    "SOURCE_KEY",
    "ScheduleDefinition",
    "SyncReport",
    "check_options",
    "define",
    "definition_fields",
    "new_entry",
    "sync_definitions",
]

log = logging.getLogger("stem.beat")

#: Where an entry came from (``"code"`` or ``"cli"``), in its ``meta``.
SOURCE_KEY = "stem.source"
#: A hash of the code's definition, in ``meta``: sync rewrites an entry only when the
#: code changed, so what an operator changed since (``stem schedule disable``) stays.
DEFINITION_KEY = "stem.definition"

#: The enqueue options an entry may carry for each firing.
_OPTION_KEYS = ("priority", "expires", "headers", "meta", "max_retries")

_json = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True, slots=True)
class ScheduleDefinition:
    """An entry as the code defines it (``app.schedule(...)``): what to run and when."""

    id: str
    task: str
    spec: Spec
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    jitter: float | None = None
    catch_up: str = "once"
    catch_up_limit: int = 0

    def fingerprint(self) -> str:
        """A hash of every field, to tell whether the code changed since the last sync."""
        return hashlib.sha256(_json.encode(definition_fields(self))).hexdigest()[:32]


def definition_fields(definition: ScheduleDefinition) -> dict[str, Any]:
    """The fields of a :class:`ScheduleEntry` the definition decides (not its run fields)."""
    return {
        "task": definition.task,
        "kind": definition.spec.kind,
        "spec": definition.spec.to_spec(),
        "args": definition.args,
        "kwargs": definition.kwargs,
        "queue": definition.queue,
        "options": definition.options,
        "enabled": definition.enabled,
        "jitter": definition.jitter,
        "catch_up": definition.catch_up,
        "catch_up_limit": definition.catch_up_limit,
    }


def _plain_json(value: Any, what: str) -> Any:
    """``value`` if it comes back the same from JSON (the store keeps it as JSON)."""
    try:
        again = msgspec.json.decode(msgspec.json.encode(value))
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{what} must be plain JSON values: {exc}") from None
    if again != value or _shape(again) != _shape(value):
        raise ConfigurationError(
            f"{what} must be plain JSON values (str, int, float, bool, None, lists, dicts "
            f"with str keys), as the store keeps them: {value!r} would come back as {again!r}"
        )
    return again


def _shape(value: Any) -> Any:
    """The types in a value, so a tuple (read back as a list) or a datetime (read back as
    a str) is told apart from what JSON gives back."""
    if isinstance(value, dict):
        return ("dict", tuple((k, _shape(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(_shape(v) for v in value))
    return type(value).__name__


def check_options(options: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The enqueue options of each firing, checked."""
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"{what}: options must be a dict, not {options!r}")
    unknown = set(options) - set(_OPTION_KEYS)
    if unknown:
        raise ConfigurationError(
            f"{what}: unknown option(s) {', '.join(sorted(unknown))}; an entry's options "
            f"are {', '.join(_OPTION_KEYS)} (queue and arguments have their own parameters)"
        )
    checked = dict(options)
    if "priority" in checked:
        check_priority(checked["priority"])
    if "expires" in checked:
        expires = checked["expires"]
        if isinstance(expires, timedelta):
            expires = checked["expires"] = expires.total_seconds()
        if isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0:
            raise ConfigurationError(
                f"{what}: expires must be a positive number of seconds after each firing, "
                f"not {expires!r}"
            )
    max_retries = checked.get("max_retries", 0)
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigurationError(f"{what}: max_retries must be a whole number >= 0")
    headers = checked.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigurationError(f"{what}: headers must map strings to strings")
    return dict(_plain_json(checked, f"{what}: options"))


def check_catch_up(catch_up: Any, catch_up_limit: int | None, what: str) -> int:
    """The stored ``catch_up_limit`` for a policy (0 unless ``each``)."""
    if catch_up not in CATCH_UP:
        raise ConfigurationError(
            f"{what}: catch_up must be 'once' (one firing for all missed), 'each' (each "
            f"missed firing, up to catch_up_limit) or 'skip', not {catch_up!r}"
        )
    if catch_up != "each":
        if catch_up_limit:
            raise ConfigurationError(f"{what}: catch_up_limit goes with catch_up='each'")
        return 0
    if catch_up_limit is None:
        return DEFAULT_EACH_LIMIT
    if (
        isinstance(catch_up_limit, bool)
        or not isinstance(catch_up_limit, int)
        or catch_up_limit < 1
    ):
        raise ConfigurationError(
            f"{what}: catch_up_limit must be a whole number >= 1, not {catch_up_limit!r}"
        )
    return catch_up_limit


def check_jitter(jitter: float | timedelta | None, spec: Spec, what: str) -> float | None:
    if jitter is None:
        return None
    if isinstance(jitter, timedelta):
        jitter = jitter.total_seconds()
    if isinstance(jitter, bool) or not isinstance(jitter, int | float) or jitter < 0:
        raise ConfigurationError(
            f"{what}: jitter must be seconds >= 0 or a timedelta, not {jitter!r}"
        )
    if isinstance(spec, Interval) and jitter >= spec.every:
        raise ConfigurationError(
            f"{what}: jitter ({jitter:g} s) must be shorter than the interval ({spec.every:g} s)"
        )
    return float(jitter) or None


def define(
    app: Stem,
    name: str,
    spec: Spec,
    task: Any,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    queue: str | None = None,
    options: Mapping[str, Any] | None = None,
    enabled: bool = True,
    jitter: float | timedelta | None = None,
    catch_up: str = "once",
    catch_up_limit: int | None = None,
    known_tasks: bool = True,
) -> ScheduleDefinition:
    """A checked definition (see :meth:`stem.Stem.schedule`).

    ``known_tasks=False`` (``stem schedule add`` without ``--app``) takes a task name
    the app does not register as it is; the beat checks it when it fires.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"a beat entry needs a name (its id), not {name!r}")
    what = f"beat entry {name!r}"
    if not isinstance(spec, Spec):
        raise ConfigurationError(
            f"{what}: the spec must be Interval(...), Cron(...), Solar(...) or Clocked(...), "
            f"not {spec!r}"
        )
    task_name = task if isinstance(task, str) else getattr(task, "name", None)
    if not isinstance(task_name, str) or not task_name:
        raise ConfigurationError(f"{what}: name the task by its handle or its name, not {task!r}")
    handle = app.tasks.get(task_name)
    if handle is None and known_tasks:
        known = ", ".join(sorted(n for n in app.tasks if not n.startswith("stem."))) or "none"
        raise ConfigurationError(
            f"{what}: task {task_name!r} is not registered with this app (it registers: "
            f"{known}); define the schedule after the task, in the module the beat loads"
        )
    if not isinstance(task, str) and handle is not task:
        raise ConfigurationError(f"{what}: task {task_name!r} belongs to another app")
    if isinstance(args, str | bytes) or not isinstance(args, Sequence):
        raise ConfigurationError(f"{what}: args must be a list or tuple, not {args!r}")
    kwargs = dict(kwargs or {})
    if handle is not None:
        handle.check_arguments(tuple(args), kwargs)  # ArgumentError names what does not fit
    elif not all(isinstance(key, str) for key in kwargs):
        raise ConfigurationError(f"{what}: kwargs must have str keys")
    if not isinstance(enabled, bool):
        raise ConfigurationError(f"{what}: enabled must be True or False, not {enabled!r}")
    return ScheduleDefinition(
        id=name,
        task=task_name,
        spec=spec,
        args=_plain_json(list(args), f"{what}: args"),
        kwargs=_plain_json(kwargs, f"{what}: kwargs"),
        queue=None if queue is None else check_queue(queue),
        options=check_options(options or {}, what),
        enabled=enabled,
        jitter=check_jitter(jitter, spec, what),
        catch_up=catch_up,
        catch_up_limit=check_catch_up(catch_up, catch_up_limit, what),
    )


def new_entry(definition: ScheduleDefinition, now: float, *, source: str = "code") -> ScheduleEntry:
    """The entry to store for a definition first seen at ``now``."""
    meta: dict[str, Any] = {SOURCE_KEY: source}
    if source == "code":
        meta[DEFINITION_KEY] = definition.fingerprint()
    return ScheduleEntry(
        id=definition.id,
        **definition_fields(definition),
        next_run_at=jittered(definition.spec.first_after(now), definition.jitter),
        meta=meta,
    )


@dataclass(slots=True)
class SyncReport:
    """What syncing the code's entries to the store did, by entry id."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: Stored entries that came from code but are no longer defined: left alone.
    no_longer_in_code: list[str] = field(default_factory=list)


async def sync_definitions(
    store: ScheduleStore,
    definitions: Mapping[str, ScheduleDefinition],
    now: float,
    *,
    attempts: int = 10,
) -> SyncReport:
    """Store the code's entries: create the new ones, rewrite those whose definition
    changed in code (keeping their run fields), leave the rest alone.

    A changed spec (or an entry enabled again) gets a fresh due time from ``now``. A
    write that meets another writer (a beat recording a firing, another beat syncing)
    is read again and retried.

    Raises:
        ScheduleConflictError: an entry kept changing through every attempt.
    """
    report = SyncReport()
    for definition in definitions.values():
        for _ in range(attempts):
            try:
                outcome = await _sync_one(store, definition, now)
            except ScheduleConflictError:
                continue
            getattr(report, outcome).append(definition.id)
            break
        else:
            raise ScheduleConflictError(
                f"beat entry {definition.id!r} kept changing while it was synced "
                f"({attempts} attempts): is something rewriting it in a loop?"
            )
    for entry in await store.list():
        if entry.meta.get(SOURCE_KEY) == "code" and entry.id not in definitions:
            report.no_longer_in_code.append(entry.id)
    return report


async def _sync_one(store: ScheduleStore, definition: ScheduleDefinition, now: float) -> str:
    stored = await store.get(definition.id)
    if stored is None:
        await store.upsert(new_entry(definition, now))
        return "created"
    fingerprint = definition.fingerprint()
    if stored.meta.get(DEFINITION_KEY) == fingerprint:
        return "unchanged"
    fields = definition_fields(definition)
    updated = msgspec.structs.replace(
        stored,
        **fields,
        meta={**stored.meta, SOURCE_KEY: "code", DEFINITION_KEY: fingerprint},
    )
    respec = (stored.kind, stored.spec) != (fields["kind"], _plain_json(fields["spec"], "spec"))
    if respec or stored.jitter != definition.jitter:
        updated.next_run_at = jittered(definition.spec.first_after(now), definition.jitter)
        updated.last_error = None
    elif definition.enabled and not stored.enabled:
        # Enabled again: on from now; what fell due while it was off is not caught up.
        updated.next_run_at = jittered(definition.spec.next_after(now), definition.jitter)
    await store.upsert(updated)
    return "updated"
