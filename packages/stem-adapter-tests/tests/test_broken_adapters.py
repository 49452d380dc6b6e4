"""The suites catch broken adapters: deliberately broken subclasses of the in-memory
adapter fail the contract tests aimed at their fault, and the real one passes them.

Each test writes a test module into a pytester directory and runs it in process, so
what is checked is what an adapter author sees: which tests pass and which fail.
"""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

# The inner runs get the settings the suites expect (the workspace's pyproject is not
# theirs): async tests without markers, and warnings as errors.
INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

PRIORITY_TESTS = [
    "test_higher_priority_first_and_fifo_within_a_priority",
    "test_priority_applies_across_a_limited_read",
    "test_delayed_high_priority_message_waits_for_its_eta",
]

SUBJECTS = textwrap.dedent(
    '''
    import pytest
    from hypothesis import Phase, settings
    from stem.contracts import BrokerCapabilities
    from stem.memory import MemoryBroker, MemoryLockStore
    from stem_adapter_tests import BrokerContract, LockStoreContract


    class ForgetfulBroker(MemoryBroker):
        """Never redelivers: a message whose lease ran out is leased again, unseen."""

        async def reserve(self, queues, limit, lease):
            got = await super().reserve(queues, limit, lease)
            return [d for d in got if d.deliveries == 1]


    class CredulousBroker(MemoryBroker):
        """Says yes to every ack, even of a stale or settled delivery."""

        async def ack_many(self, deliveries):
            await super().ack_many(deliveries)
            return len(deliveries)


    class GreedyLockStore(MemoryLockStore):
        """Hands a lock to anyone who asks."""

        async def acquire(self, key, owner, ttl):
            self._locks[key] = (owner, self.clock.now() + ttl)
            return True


    class PlainBroker(MemoryBroker):
        """Declares it has no priorities and no notification."""

        capabilities = BrokerCapabilities(priority=False, notify=False, shared=False)


    class TestRealBroker(BrokerContract):
        @pytest.fixture
        def broker(self, clock):
            return MemoryBroker(clock=clock)


    # A broken broker fails the model test at once; shrinking the failure to its
    # smallest form would take most of this test's time, and nobody reads it here.
    QUICK = settings(
        BrokerContract.model_settings, phases=[Phase.explicit, Phase.generate], derandomize=True
    )


    class TestForgetfulBroker(BrokerContract):
        model_settings = QUICK

        @pytest.fixture
        def broker(self, clock):
            return ForgetfulBroker(clock=clock)


    class TestCredulousBroker(BrokerContract):
        model_settings = QUICK

        @pytest.fixture
        def broker(self, clock):
            return CredulousBroker(clock=clock)


    class TestPlainBroker(BrokerContract):
        @pytest.fixture
        def broker(self, clock):
            return PlainBroker(clock=clock)


    class TestRealLockStore(LockStoreContract):
        @pytest.fixture
        def locks(self, clock):
            return MemoryLockStore(clock=clock)


    class TestGreedyLockStore(LockStoreContract):
        @pytest.fixture
        def locks(self, clock):
            return GreedyLockStore(clock=clock)
    '''
)

REDELIVERY_TESTS = [
    "test_expired_lease_is_redelivered",
    "test_extend_lease_postpones_redelivery",
    "test_nack_with_requeue_redelivers",
    "test_nack_with_delay_hides_until_due",
    "test_behaves_like_the_model",
]
ACK_TESTS = [
    "test_double_ack_returns_false",
    "test_ack_many_counts_only_current_deliveries",
    "test_stale_delivery_cannot_settle_or_disturb_the_new_holder",
    "test_behaves_like_the_model",
]
LOCK_TESTS = [
    "test_acquire_is_exclusive",
    "test_reacquire_by_the_owner_refreshes",
    "test_concurrent_acquires_have_one_winner",
]


def run(
    pytester: pytest.Pytester, classes: list[str], tests: list[str]
) -> dict[str, dict[str, str]]:
    """Run ``tests`` of ``classes`` from SUBJECTS; outcome by class, then by test name."""
    pytester.makeini(INI)
    pytester.makepyfile(test_subjects=SUBJECTS)
    selection = f"({' or '.join(classes)}) and ({' or '.join(tests)})"
    reprec = pytester.inline_run("-p", "no:cacheprovider", "-k", selection)
    outcomes: dict[str, dict[str, str]] = {}
    for report in reprec.getreports("pytest_runtest_logreport"):
        if report.when == "call" or report.outcome != "passed":
            _, cls, test = report.nodeid.split("::")
            outcomes.setdefault(cls, {})[test] = report.outcome
    return outcomes


def test_a_broker_that_never_redelivers_fails_the_redelivery_tests(
    pytester: pytest.Pytester,
) -> None:
    outcomes = run(pytester, ["TestRealBroker", "TestForgetfulBroker"], REDELIVERY_TESTS)
    assert outcomes["TestRealBroker"] == dict.fromkeys(REDELIVERY_TESTS, "passed")
    assert outcomes["TestForgetfulBroker"] == dict.fromkeys(REDELIVERY_TESTS, "failed")


def test_a_broker_that_acks_anything_fails_the_ack_tests(pytester: pytest.Pytester) -> None:
    outcomes = run(pytester, ["TestRealBroker", "TestCredulousBroker"], ACK_TESTS)
    assert outcomes["TestRealBroker"] == dict.fromkeys(ACK_TESTS, "passed")
    assert outcomes["TestCredulousBroker"] == dict.fromkeys(ACK_TESTS, "failed")


def test_a_lock_store_that_is_not_exclusive_fails_the_lock_tests(pytester: pytest.Pytester) -> None:
    outcomes = run(pytester, ["TestRealLockStore", "TestGreedyLockStore"], LOCK_TESTS)
    assert outcomes["TestRealLockStore"] == dict.fromkeys(LOCK_TESTS, "passed")
    assert outcomes["TestGreedyLockStore"] == dict.fromkeys(LOCK_TESTS, "failed")


def test_missing_capabilities_skip_with_the_reason(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_subjects=SUBJECTS)
    selection = f"TestPlainBroker and ({' or '.join(PRIORITY_TESTS)})"
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs", "-k", selection)
    result.assert_outcomes(skipped=len(PRIORITY_TESTS))
    result.stdout.fnmatch_lines(["*PlainBroker declares priority=False*"] * len(PRIORITY_TESTS))


def test_a_suite_without_its_fixture_says_what_to_define(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_unwired="""
        from stem_adapter_tests import BrokerContract

        class TestUnwired(BrokerContract):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "test_ack_removes_the_message")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*TestUnwired must define a `broker` fixture*"])


def test_an_unknown_capability_name_fails_instead_of_skipping(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(
        test_typo="""
        import pytest
        from stem.memory import MemoryBroker
        from stem_adapter_tests import BrokerContract, requires

        class TestTypo(BrokerContract):
            @pytest.fixture
            def broker(self, clock):
                return MemoryBroker(clock=clock)

            @requires("priorty")
            async def test_with_a_typo(self, broker):
                pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "test_with_a_typo")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*MemoryBroker has no capability flag 'priorty'*"])
