"""How ``stem wf`` shows runs to people: a run's state in words, and ``stem wf show``."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from stem.contracts import RunStatus, StepCheckpoint, Watcher, WorkflowRun

from .._output import clock_time, duration, print_pairs, relative, short, table

__all__ = ["detail", "print_run", "status_text"]

_STYLES = {
    RunStatus.PENDING: "",
    RunStatus.RUNNING: "blue",
    RunStatus.SUSPENDED: "cyan",
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "bold red",
    RunStatus.CANCELLED: "yellow",
}


def status_text(status: RunStatus, text: str | None = None) -> Text:
    return Text(text or status.value, style=_STYLES[status])


def detail(run: WorkflowRun, now: float) -> str:
    """What a run is doing or how it ended, in a few words (the list's last column)."""
    if run.status is RunStatus.SUSPENDED:
        if run.wait_topic is not None:
            until = f" until {clock_time(run.wait_deadline)}" if run.wait_deadline else ""
            return f"waiting for {run.wait_topic!r}{until}"
        if run.resume_at is not None:
            return f"sleeping until {clock_time(run.resume_at)}"
        return "suspended"
    if run.status is RunStatus.RUNNING:
        return f"leased to {run.lease_owner} until {clock_time(run.lease_expires_at)}"
    if run.status is RunStatus.PENDING:
        return "resumed by an event" if run.resume is not None else "waiting for a worker"
    if run.error is not None:
        return short(f"{run.error.type}: {run.error.message}", 80).strip('"')
    if run.status is RunStatus.COMPLETED:
        return f"result {short(run.result, 60)}"
    return ""


def _policy(run: WorkflowRun) -> str:
    policy = run.policy
    if policy is None:
        return "none"
    parts = []
    if policy.max_run_duration is not None:
        parts.append(f"max run {duration(policy.max_run_duration)}")
    if policy.max_suspend_duration is not None:
        parts.append(f"max suspend {duration(policy.max_suspend_duration)}")
    return ", ".join(parts) or "none"


def print_run(
    out: Console,
    run: WorkflowRun,
    steps: list[StepCheckpoint],
    watchers: list[Watcher],
    now: float,
) -> None:
    pairs: list[tuple[str, str | Text]] = [
        ("run", run.id),
        ("workflow", run.workflow),
        ("status", status_text(run.status)),
        ("queue", run.queue),
        ("params", short(run.params, 2000)),
        ("created", clock_time(run.created_at)),
        ("updated", clock_time(run.updated_at)),
    ]
    if run.finished_at is not None:
        pairs.append(
            (
                "finished",
                f"{clock_time(run.finished_at)} after {duration(run.finished_at - run.created_at)}",
            )
        )
    if run.status is RunStatus.COMPLETED:
        pairs.append(("result", short(run.result, 2000)))
    if run.error is not None:
        pairs.append(("error", Text(f"{run.error.type}: {run.error.message}", style="red")))
    if run.wait_topic is not None:
        deadline = relative(run.wait_deadline, now) if run.wait_deadline else "no deadline"
        pairs.append(("waiting for", f"{run.wait_topic!r} (deadline: {deadline})"))
    if run.resume_at is not None:
        pairs.append(("sleeping until", relative(run.resume_at, now)))
    if run.suspended_at is not None and run.status is RunStatus.SUSPENDED:
        pairs.append(("suspended", relative(run.suspended_at, now)))
    if run.resume is not None:
        woke = run.resume.kind + (f" on {run.resume.topic!r}" if run.resume.topic else "")
        if run.resume.kind == "event":
            woke += f", payload {short(run.resume.payload)}"
        pairs.append(("woken by", woke))
    if run.wake_at is not None:
        pairs.append(("next wake", relative(run.wake_at, now)))
    if run.lease_owner is not None:
        pairs.append(("lease", f"{run.lease_owner} until {relative(run.lease_expires_at, now)}"))
    pairs += [("fence", str(run.fence)), ("cursor", str(run.cursor)), ("policy", _policy(run))]
    if run.parent_id is not None:
        pairs.append(("parent", run.parent_id))
    if run.meta:
        pairs.append(("meta", short(run.meta, 2000)))
    print_pairs(out, pairs)
    if run.error is not None and run.error.traceback:
        out.print()
        out.print(Text(run.error.traceback.rstrip(), style="dim"))

    out.print()
    if not steps:
        out.print("no steps recorded")
    else:
        grid = table("#", "STEP", "KIND", "VALUE", "ATTEMPTS", "STARTED", "COMPLETED", "TOOK")
        for step in steps:
            took = step.completed_at - step.started_at if step.started_at else None
            grid.add_row(
                str(step.position),
                step.name,
                step.kind,
                short(step.value),
                str(step.attempts),
                clock_time(step.started_at),
                clock_time(step.completed_at),
                duration(took),
            )
        out.print(grid)
    if watchers:
        out.print()
        grid = table("WATCHING TOPIC", "DEADLINE", "SINCE")
        for watcher in watchers:
            grid.add_row(
                watcher.topic,
                relative(watcher.deadline, now) if watcher.deadline else "none",
                clock_time(watcher.created_at),
            )
        out.print(grid)
