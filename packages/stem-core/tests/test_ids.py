"""Task ids sort by creation time, so ids land at the end of every index keyed by them."""

from __future__ import annotations

import time
import uuid

from stem._ids import new_task_id


def test_ids_are_uuid_version_7_with_the_time_in_front() -> None:
    before = time.time_ns() // 1_000_000
    task_id = new_task_id()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(task_id)
    assert str(parsed) == task_id
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert before <= parsed.int >> 80 <= after


def test_ids_made_in_order_carry_rising_times_and_do_not_repeat() -> None:
    ids = [new_task_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    millis = [uuid.UUID(i).int >> 80 for i in ids]
    assert millis == sorted(millis)  # so string order follows creation, to the millisecond
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)
