"""``stem wf``: start, inspect and steer workflow runs; export runs and check that the
current code still replays them.

Everything goes through the app's public workflow API (``start_workflow``,
``emit_event``, ``cancel_workflow``...) and the WorkflowStore contract, so the
commands work on every adapter.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import IO, Any

import click
import msgspec

from stem import DuplicateRunError, NonDeterminismError, Stem, UnknownWorkflowError

# Not exported by `stem` (yet): the replay check the engine keeps for this command.
from stem.contracts import RunStatus, StepCheckpoint, WorkflowRun, WorkflowStore

from .._options import NotFoundError, StoppedOnError
from .._output import clock_time, console, echo_json, plain, short, table
from .._target import Target, json_option, target_options
from ._wf_show import detail, print_run, status_text

__all__ = ["ExportedRun", "wf"]

#: Runs read from the store per request when a command reads them all.
_PAGE = 500

_STATUSES = [status.value for status in RunStatus]


class ExportedRun(msgspec.Struct, kw_only=True):
    """One line of ``stem wf export``: a run and its checkpoints, as the store keeps them."""

    run: WorkflowRun
    steps: list[StepCheckpoint] = []


@click.group()
def wf() -> None:
    """Workflow runs: start, list, show, cancel, rewind, send events, check replays.

    Every command takes --app module:attribute, --url URL, or both; --json prints JSON.
    Exit codes: 0 ok, 1 failure, 2 bad usage, 3 run, step or workflow not found.
    """


def _status(value: str | None) -> RunStatus | None:
    return None if value is None else RunStatus(value.lower())


def _json_value(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from None


def _params(items: tuple[str, ...], params_json: str | None) -> dict[str, Any]:
    """``--params`` (a JSON object) with each ``--param`` on top."""
    params: dict[str, Any] = {}
    if params_json is not None:
        given = _json_value(params_json, "--params")
        if not isinstance(given, dict):
            raise click.BadParameter(
                f"expected a JSON object of parameters, not {type(given).__name__}",
                param_hint="--params",
            )
        params.update(given)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or key == ":":
            raise click.BadParameter(
                f"{item!r}: use KEY=TEXT, or KEY:=JSON for numbers, lists and objects",
                param_hint="--param",
            )
        if key.endswith(":"):
            params[key[:-1]] = _json_value(value, f"--param {key[:-1]}")
        else:
            params[key] = value
    return params


def _fit(data: Any) -> Any:
    """Plain data for JSON output (a value converted to the workflow's return type may
    be a struct or dataclass)."""
    try:
        return msgspec.to_builtins(data)
    except (TypeError, ValueError):
        return repr(data)


async def _run_or_exit(store: WorkflowStore, run_id: str) -> WorkflowRun:
    run = await store.get_run(run_id)
    if run is None:
        raise NotFoundError(f"there is no workflow run {run_id!r}")
    return run


# -- start ------------------------------------------------------------------------------


@wf.command()
@target_options
@json_option
@click.argument("name")
@click.option(
    "-p",
    "--param",
    "param_items",
    multiple=True,
    metavar="KEY=TEXT|KEY:=JSON",
    help="A parameter (repeat for several): KEY=TEXT gives a string, KEY:=JSON any JSON value.",
)
@click.option("--params", "params_json", metavar="JSON", help="The parameters as a JSON object.")
@click.option("--run-id", default=None, help="The run's id (a run with this id must not exist).")
@click.option("--queue", default=None, help="Run it on this queue instead of the workflow's own.")
@click.option("--wait", is_flag=True, help="Wait until the run ends; exit 1 unless it completed.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait: give up after this many seconds (exit 1).",
)
def start(
    target: Target,
    as_json: bool,
    name: str,
    param_items: tuple[str, ...],
    params_json: str | None,
    run_id: str | None,
    queue: str | None,
    wait: bool,
    timeout: float | None,
) -> None:
    """Start a run of workflow NAME.

    With --app, NAME must be one of the app's workflows and the parameters are checked
    against its signature; with --url only, the run is stored as given and the worker
    that runs it checks them.
    """
    if timeout is not None and not wait:
        raise click.UsageError("--timeout goes with --wait")
    params = _params(param_items, params_json)

    async def body(app: Stem) -> int:
        if target.app_spec and name not in app.workflows:
            known = ", ".join(sorted(app.workflows)) or "none"
            raise NotFoundError(
                f"{target.app_spec} registers no workflow {name!r} (it registers: {known})"
            )
        try:
            ref = await app.start_workflow(name, params, run_id=run_id, queue=queue)
        except DuplicateRunError as exc:
            raise StoppedOnError(f"DuplicateRunError: {exc}") from None
        if not wait:
            if as_json:
                echo_json({"run_id": str(ref), "workflow": name})
            else:
                click.echo(f"started run {ref} of {name}")
            return 0
        if not as_json:
            click.echo(f"started run {ref} of {name}; waiting for it to end")
        outcome = await app.wait_for_workflow(str(ref), timeout=timeout)
        run = outcome.run
        if as_json:
            echo_json(
                {
                    "run_id": str(ref),
                    "workflow": name,
                    "status": None if outcome.status is None else outcome.status.value,
                    "result": run.result if run is not None else _fit(outcome.value),
                    "error": None if outcome.error is None else plain(outcome.error),
                    "timed_out": outcome.timed_out,
                }
            )
        elif outcome.timed_out:
            click.echo(
                f"run {ref} is still {outcome.status} after {timeout:g} s: "
                f"stem wf show {ref} tells where it is",
                err=True,
            )
        elif outcome.ok:
            click.echo(f"completed: {short(run.result if run else _fit(outcome.value), 2000)}")
        else:
            error = outcome.error
            reason = f"{error.type}: {error.message}" if error else "no error recorded"
            click.echo(f"{outcome.status}: {reason}", err=True)
        return 0 if outcome.ok else 1

    code = target.run(body)
    if code:
        raise click.exceptions.Exit(code)


# -- list, show, watchers, workflows -------------------------------------------------------


@wf.command("list")
@target_options
@json_option
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.option(
    "--status", type=click.Choice(_STATUSES, case_sensitive=False), help="Only runs in this state."
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
def list_runs(
    target: Target,
    as_json: bool,
    workflow: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> None:
    """List runs, oldest first."""

    async def body(app: Stem) -> tuple[list[WorkflowRun], float]:
        runs = await app.workflow_store.list_runs(
            workflow=workflow, status=_status(status), limit=limit, offset=offset
        )
        return runs, app.clock.now()

    runs, now = target.run(body)
    if as_json:
        echo_json([plain(run) for run in runs])
        return
    out = console()
    if not runs:
        out.print("no runs" + (" at this offset" if offset else ""))
        return
    grid = table("RUN ID", "WORKFLOW", "STATUS", "STEPS", "CREATED", "UPDATED", "DETAIL")
    for run in runs:
        grid.add_row(
            run.id,
            run.workflow,
            status_text(run.status),
            str(run.cursor),
            clock_time(run.created_at),
            clock_time(run.updated_at),
            detail(run, now),
        )
    out.print(grid)
    if len(runs) == limit:
        click.echo(f"more runs may follow: --offset {offset + limit}", err=True)


@wf.command()
@target_options
@json_option
@click.argument("run_id")
def show(target: Target, as_json: bool, run_id: str) -> None:
    """Show a run: its state, result or error, its steps in order, and its watchers."""

    async def body(app: Stem) -> None:
        store = app.workflow_store
        run = await _run_or_exit(store, run_id)
        steps = await store.list_steps(run_id)
        watchers = []
        if run.wait_topic is not None:
            watchers = [w for w in await store.list_watchers(run.wait_topic) if w.run_id == run_id]
        if as_json:
            echo_json(
                {
                    "run": plain(run),
                    "steps": [plain(step) for step in steps],
                    "watchers": [plain(w) for w in watchers],
                }
            )
        else:
            print_run(console(), run, steps, watchers, app.clock.now())

    target.run(body)


@wf.command()
@target_options
@json_option
@click.option("--topic", default=None, help="Only runs waiting on this topic.")
def watchers(target: Target, as_json: bool, topic: str | None) -> None:
    """List the runs waiting for an event, oldest first."""

    async def body(app: Stem) -> None:
        found = await app.workflow_store.list_watchers(topic)
        if as_json:
            echo_json([plain(w) for w in found])
            return
        out = console()
        if not found:
            out.print("no run waits for an event" + (f" on {topic!r}" if topic else ""))
            return
        grid = table("TOPIC", "RUN ID", "DEADLINE", "WAITING SINCE")
        for watcher in found:
            grid.add_row(
                watcher.topic,
                watcher.run_id,
                clock_time(watcher.deadline) if watcher.deadline else "none",
                clock_time(watcher.created_at),
            )
        out.print(grid)

    target.run(body)


@wf.command()
@target_options
@json_option
def workflows(target: Target, as_json: bool) -> None:
    """List the workflows the app (--app) registers, with kind and queue."""

    async def body(app: Stem) -> list[dict[str, Any]]:
        rows = []
        for name in sorted(app.workflows):
            definition = app.workflows.registry[name]
            steps = getattr(definition, "steps", None)
            rows.append(
                {
                    "name": name,
                    "kind": definition.kind,
                    "queue": definition.queue or app.default_queue,
                    "policy": None if definition.policy is None else plain(definition.policy),
                    "steps": None if steps is None else [step.name for step in steps],
                }
            )
        return rows

    rows = target.run(body, needs_app="stem wf workflows")
    if as_json:
        echo_json(rows)
        return
    out = console()
    if not rows:
        out.print(f"{target.app_spec} registers no workflows")
        return
    grid = table("NAME", "KIND", "QUEUE", "POLICY", "STEPS")
    for row in rows:
        policy = row["policy"] or {}
        grid.add_row(
            row["name"],
            row["kind"],
            row["queue"],
            ", ".join(f"{k}={v:g} s" for k, v in policy.items() if v is not None) or "-",
            "-" if row["steps"] is None else ", ".join(row["steps"]),
        )
    out.print(grid)


# -- steering -----------------------------------------------------------------------------


def _ended(run: WorkflowRun, what: str) -> StoppedOnError:
    return StoppedOnError(f"run {run.id} has already ended ({run.status}): nothing to {what}")


@wf.command()
@target_options
@json_option
@click.argument("run_id")
@click.option(
    "--reason",
    default="cancelled with stem wf cancel",
    show_default=True,
    help="Kept as its error.",
)
def cancel(target: Target, as_json: bool, run_id: str, reason: str) -> None:
    """Cancel a run that has not ended (and its children); exit 1 if it had ended."""

    async def body(app: Stem) -> None:
        run = await _run_or_exit(app.workflow_store, run_id)
        if run.status.is_final or not await app.cancel_workflow(run_id, reason):
            run = await _run_or_exit(app.workflow_store, run_id)
            raise _ended(run, "cancel")
        if as_json:
            echo_json({"run_id": run_id, "status": RunStatus.CANCELLED.value, "reason": reason})
        else:
            click.echo(f"cancelled run {run_id}: {reason}")

    target.run(body)


@wf.command()
@target_options
@json_option
@click.argument("run_id")
@click.argument("step")
def rewind(target: Target, as_json: bool, run_id: str, step: str) -> None:
    """Run RUN_ID again from its step STEP: that step and every later one run again."""

    async def body(app: Stem) -> None:
        store = app.workflow_store
        await _run_or_exit(store, run_id)
        if not await app.rewind_workflow(run_id, step):
            names = [s.name for s in await store.list_steps(run_id)]
            raise NotFoundError(
                f"run {run_id} has no step {step!r}; its steps: {', '.join(names) or 'none'}"
            )
        if as_json:
            echo_json({"run_id": run_id, "step": step, "status": RunStatus.PENDING.value})
        else:
            click.echo(f"rewound run {run_id} to step {step!r}: a worker runs it from there")

    target.run(body)


@wf.command()
@target_options
@json_option
@click.argument("topic")
@click.option("--payload", default=None, metavar="JSON", help="The event's payload, as JSON.")
def emit(target: Target, as_json: bool, topic: str, payload: str | None) -> None:
    """Resume every run waiting on TOPIC with the payload."""
    data = _json_value(payload, "--payload")

    async def body(app: Stem) -> None:
        resumed = await app.emit_event(topic, data)
        if as_json:
            echo_json({"topic": topic, "resumed": resumed})
        elif resumed:
            click.echo(f"resumed {len(resumed)} run(s) waiting on {topic!r}:")
            for run_id in resumed:
                click.echo(f"  {run_id}")
        else:
            click.echo(f"no run waits on {topic!r}")

    target.run(body)


@wf.command()
@target_options
@json_option
@click.argument("run_id")
@click.argument("topic")
@click.option("--payload", default=None, metavar="JSON", help="The event's payload, as JSON.")
def send(target: Target, as_json: bool, run_id: str, topic: str, payload: str | None) -> None:
    """Give an event on TOPIC to one run: at once if it waits on TOPIC, else kept until
    it does. Exit 1 if the run has ended."""
    data = _json_value(payload, "--payload")

    async def body(app: Stem) -> None:
        run = await _run_or_exit(app.workflow_store, run_id)
        if run.status.is_final:
            raise _ended(run, "send to")
        waiting = run.status is RunStatus.SUSPENDED and run.wait_topic == topic
        if not await app.send_event(run_id, topic, data):
            raise _ended(await _run_or_exit(app.workflow_store, run_id), "send to")
        if as_json:
            echo_json({"run_id": run_id, "topic": topic, "delivered": waiting})
        elif waiting:
            click.echo(f"sent {topic!r} to run {run_id}, which resumes")
        else:
            click.echo(f"kept {topic!r} for run {run_id} until it waits on it")

    target.run(body)


# -- export and replay checks -------------------------------------------------------------


async def _stored_runs(
    store: WorkflowStore,
    *,
    workflow: str | None,
    statuses: Iterable[RunStatus | None],
    limit: int | None = None,
) -> AsyncIterator[WorkflowRun]:
    """Every run matching, page by page (each status in turn), up to ``limit``."""
    seen: set[str] = set()
    for status in statuses:
        offset = 0
        while True:
            page = await store.list_runs(
                workflow=workflow, status=status, limit=_PAGE, offset=offset
            )
            for run in page:
                if run.id in seen:  # moved pages while we read
                    continue
                seen.add(run.id)
                yield run
                if limit is not None and len(seen) >= limit:
                    return
            if len(page) < _PAGE:
                break
            offset += len(page)


@wf.command()
@target_options
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.option(
    "--status", type=click.Choice(_STATUSES, case_sensitive=False), help="Only runs in this state."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many runs.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    required=True,
    help="The file to write (- for stdout).",
)
def export(
    target: Target, workflow: str | None, status: str | None, limit: int | None, output: Path
) -> None:
    """Write runs and their steps as JSON lines, for `stem wf replay-check --from`.

    Every run by default, oldest first; the file is replaced only once all is written.
    """
    to_stdout = str(output) == "-"

    def write_all(sink: IO[bytes]) -> int:
        async def body(app: Stem) -> int:
            store = app.workflow_store
            count = 0
            runs = _stored_runs(store, workflow=workflow, statuses=[_status(status)], limit=limit)
            async for run in runs:
                steps = await store.list_steps(run.id)
                sink.write(msgspec.json.encode(ExportedRun(run=run, steps=steps)) + b"\n")
                count += 1
            return count

        return target.run(body)

    if to_stdout:
        write_all(sys.stdout.buffer)
        sys.stdout.flush()
        return
    # Atomic: a failed export leaves the file as it was, not cut short.
    with click.open_file(str(output), "wb", atomic=True) as sink:
        count = write_all(sink)
    click.echo(f"exported {count} run(s) to {output}", err=True)


class _Check(msgspec.Struct, kw_only=True):
    run_id: str
    workflow: str
    status: str
    steps: int
    outcome: str  # "ok", "mismatch", "unknown-workflow" or "error"
    error: str | None = None


def _read_export(path: Path) -> list[ExportedRun]:
    decoder = msgspec.json.Decoder(ExportedRun)
    runs = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                runs.append(decoder.decode(line))
            except msgspec.DecodeError as exc:
                raise click.BadParameter(
                    f"line {number} of {path} is not a run from `stem wf export`: {exc}",
                    param_hint="--from",
                ) from None
    return runs


@wf.command("replay-check")
@target_options
@json_option
@click.option(
    "--from",
    "from_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Check the runs of this file (from `stem wf export`) instead of a store's.",
)
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.option(
    "--status",
    type=click.Choice(_STATUSES, case_sensitive=False),
    help="Only runs in this state (default: every run that has not ended).",
)
@click.option("--all", "every", is_flag=True, help="Every run, ended ones too.")
def replay_check(
    target: Target,
    as_json: bool,
    from_file: Path | None,
    workflow: str | None,
    status: str | None,
    every: bool,
) -> None:
    """Replay recorded runs against the app's current code, without running a step.

    A run whose replay meets a different step than it recorded would fail after a
    deploy: it is reported as a mismatch, and the exit code is 1. By default the runs
    that have not ended are checked (those a deploy would strand).
    """
    if from_file is not None and target.url:
        raise click.UsageError("--from reads runs from a file: leave out --url (or STEM_URL)")
    if status is not None and every:
        raise click.UsageError("--status and --all do not go together")
    wanted = _status(status)

    def chosen(run: WorkflowRun) -> bool:
        if workflow is not None and run.workflow != workflow:
            return False
        if wanted is not None:
            return run.status is wanted
        return every or not run.status.is_final

    exported = _read_export(from_file) if from_file is not None else None

    async def body(app: Stem) -> tuple[list[_Check], int]:
        results: list[_Check] = []
        skipped = 0
        if exported is not None:
            records = [(r.run, r.steps) for r in exported if chosen(r.run)]
            skipped = len(exported) - len(records)
        else:
            store = app.workflow_store
            statuses: list[RunStatus | None] = (
                [wanted]
                if wanted is not None
                else [None]
                if every
                else [s for s in RunStatus if not s.is_final]
            )
            records = []
            async for run in _stored_runs(store, workflow=workflow, statuses=statuses):
                records.append((run, await store.list_steps(run.id)))
        for run, steps in records:
            outcome, error = "ok", None
            try:
                await app.workflows.replay_check(run, steps)
            except NonDeterminismError as exc:
                outcome, error = "mismatch", str(exc)
            except UnknownWorkflowError as exc:
                outcome, error = "unknown-workflow", str(exc)
            except Exception as exc:
                outcome, error = "error", f"{type(exc).__name__}: {exc}"
            results.append(
                _Check(
                    run_id=run.id,
                    workflow=run.workflow,
                    status=run.status.value,
                    steps=len(steps),
                    outcome=outcome,
                    error=error,
                )
            )
        return results, skipped

    results, skipped = target.run(body, needs_app="stem wf replay-check")
    failed = sum(1 for r in results if r.outcome != "ok")
    if as_json:
        echo_json(
            {
                "checked": len(results),
                "failed": failed,
                "skipped": skipped,
                "runs": [plain(r) for r in results],
            }
        )
    else:
        out = console()
        for r in results:
            mark = status_text(RunStatus.COMPLETED, "ok") if r.outcome == "ok" else None
            steps = f"{r.steps} step" + ("" if r.steps == 1 else "s")
            head = f"{r.run_id}  {r.workflow}  ({r.status}, {steps})"
            if mark is not None:
                out.print(mark + "  " + head)
            else:
                out.print(status_text(RunStatus.FAILED, r.outcome) + f"  {head}: {r.error}")
        summary = f"{len(results)} run(s) checked, {failed} failed"
        if skipped:
            summary += f"; {skipped} not selected (--all checks ended runs too)"
        click.echo(summary)
    if failed:
        raise click.exceptions.Exit(1)
