"""Pacing the reads that notice other processes' commits."""

from __future__ import annotations

import pytest

from stem_sqlite._wake import FIRST_PROBE, HOT_PROBES, PROBE_GROWTH, Pacer

pytestmark = pytest.mark.sqlite


def test_reads_come_every_millisecond_after_activity_then_back_off_to_the_interval() -> None:
    pacer = Pacer(0.01)
    gaps = [pacer.next_gap() for _ in range(HOT_PROBES + 20)]
    assert gaps[:HOT_PROBES] == [FIRST_PROBE] * HOT_PROBES
    assert gaps[HOT_PROBES + 1] == pytest.approx(FIRST_PROBE * PROBE_GROWTH)
    assert gaps == sorted(gaps) and gaps[-1] == 0.01
    # An idle waiter stays at the interval, wait after wait, until something happens
    assert pacer.next_gap() == 0.01
    pacer.active()
    assert pacer.next_gap() == FIRST_PROBE


def test_a_wake_interval_below_the_first_gap_is_kept() -> None:
    pacer = Pacer(0.0002)
    assert {pacer.next_gap() for _ in range(30)} == {0.0002}
