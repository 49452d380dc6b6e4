"""The public surface of stem_adapter_tests is what ``__all__`` says, on purpose."""

from __future__ import annotations

import stem_adapter_tests


def test_all_is_the_public_api() -> None:
    assert sorted(stem_adapter_tests.__all__) == [
        "BrokerContract",
        "ControlChannelContract",
        "EventBusContract",
        "LockStoreContract",
        "RateLimiterContract",
        "ResultBackendContract",
        "RevokeStoreContract",
        "ScheduleStoreContract",
        "WorkflowScriptContract",
        "WorkflowStoreContract",
        "requires",
        "skip_or_fail",
    ]
    for name in stem_adapter_tests.__all__:
        assert getattr(stem_adapter_tests, name) is not None


def test_suites_are_not_collected_by_themselves() -> None:
    # pytest collects classes named Test*; a suite must run only through a subclass.
    for name in (
        "BrokerContract",
        "ControlChannelContract",
        "EventBusContract",
        "LockStoreContract",
        "RateLimiterContract",
        "ResultBackendContract",
        "RevokeStoreContract",
        "ScheduleStoreContract",
        "WorkflowScriptContract",
        "WorkflowStoreContract",
    ):
        assert not name.startswith("Test")
        assert getattr(stem_adapter_tests, name).__doc__
