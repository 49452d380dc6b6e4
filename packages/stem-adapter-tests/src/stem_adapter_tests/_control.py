"""The ControlChannel contract suite."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from stem import Clock
from stem.contracts import ControlChannel, ControlMessage

from ._support import ContractSuite, unique

__all__ = ["ControlChannelContract"]

#: The command of the broadcasts the suite sends until every listener has one, so it
#: knows they are listening (a channel may subscribe only when iteration begins).
PROBE = "stem-adapter-tests.probe"

#: Real seconds between probes while waiting for listeners to start.
PROBE_EVERY = 0.02


class Listener:
    """A listener running in the background: what it got, probes left out."""

    def __init__(self, channel: ControlChannel, worker_id: str) -> None:
        self.worker_id = worker_id
        self.got: list[ControlMessage] = []
        self.probed = asyncio.Event()
        self._changed = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(channel.listen(worker_id)))

    async def _run(self, messages: AsyncIterator[ControlMessage]) -> None:
        try:
            async for message in messages:
                if message.command == PROBE:
                    self.probed.set()
                else:
                    self.got.append(message)
                changed, self._changed = self._changed, asyncio.Event()
                changed.set()
        finally:
            close = getattr(messages, "aclose", None)
            if close is not None:
                await close()

    async def wait_for(self, message_id: str, limit: float) -> None:
        """Return once a message with ``message_id`` came; fail after ``limit`` real seconds."""
        try:
            async with asyncio.timeout(limit):
                while not any(m.id == message_id for m in self.got):
                    self._check()
                    waiter = asyncio.ensure_future(self._changed.wait())
                    try:
                        await asyncio.wait({waiter, self.task}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
        except TimeoutError:
            pytest.fail(
                f"listener {self.worker_id!r} got no message {message_id!r} within {limit} s "
                f"(it got {[m.command for m in self.got]})"
            )

    def _check(self) -> None:
        if self.task.done():
            self.task.result()  # raises what the listener raised
            pytest.fail(f"listener {self.worker_id!r} stopped: its iterator ended")

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class ControlChannelContract(ContractSuite):
    """The behaviour every :class:`stem.contracts.ControlChannel` must have.

    Subclass it as ``Test<YourControlChannel>`` and define two fixtures: ``control``,
    the channel under test, and ``foreign_control``, a channel of another namespace on
    the same server (another key prefix), which must see nothing of the first.
    Override ``other_control`` to open a second connection in the same namespace, as
    another process would.

    The rules:

    * a message with a ``destination`` reaches the listeners of that worker id only;
      one without (a broadcast) reaches every listener, once;
    * a listener gets what was sent after it started (it may start when iteration
      begins), never older messages; from one sender, in the order sent;
    * replies to ``reply_to`` reach ``replies(reply_to)``, including replies sent
      before the sender began to read them (a sender creates its iterator, sends the
      command, then reads; fast workers may answer in between);
    * nothing crosses from one namespace to another.

    A listener is known to be listening once it got one of the probes the suite
    broadcasts (command ``stem-adapter-tests.probe``) until it does.
    """

    subject_fixture = "control"

    @pytest.fixture
    def control(self, clock: Clock) -> ControlChannel:
        """The control channel under test; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `control` fixture that builds the ControlChannel"
        )

    @pytest.fixture
    def other_control(self, control: ControlChannel) -> ControlChannel:
        """A second connection in the same namespace (by default the same object)."""
        return control

    @pytest.fixture
    def foreign_control(self, clock: Clock) -> ControlChannel:
        """A channel of another namespace on the same server; every adapter overrides this."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `foreign_control` fixture: a channel of "
            "another namespace (another prefix) on the same server"
        )

    @pytest.fixture
    async def listen(
        self,
        control: ControlChannel,
        other_control: ControlChannel,
        foreign_control: ControlChannel,
    ) -> AsyncIterator[Callable[[ControlChannel, str], Listener]]:
        """Starts a background listener; every one is stopped before the channels close."""
        started: list[Listener] = []

        def start(channel: ControlChannel, worker_id: str) -> Listener:
            listener = Listener(channel, worker_id)
            started.append(listener)
            return listener

        yield start
        for listener in started:
            await listener.stop()

    async def until_listening(self, sender: ControlChannel, *listeners: Listener) -> None:
        """Broadcast probes through ``sender`` until every listener got one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_limit
        while not all(listener.probed.is_set() for listener in listeners):
            for listener in listeners:
                listener._check()
            if loop.time() > deadline:
                late = [x.worker_id for x in listeners if not x.probed.is_set()]
                pytest.fail(f"listeners {late} got no message within {self.wait_limit} s")
            await sender.send(ControlMessage(id=unique("probe"), command=PROBE))
            waits = [asyncio.ensure_future(x.probed.wait()) for x in listeners]
            _, pending = await asyncio.wait(waits, timeout=PROBE_EVERY)
            for wait in pending:
                wait.cancel()

    async def next_reply(
        self, clock: Clock, replies: AsyncIterator[ControlMessage]
    ) -> ControlMessage:
        async def take() -> ControlMessage:
            return await anext(replies)

        return await self.finish(clock, asyncio.ensure_future(take()), what="a reply")

    @staticmethod
    async def close(replies: AsyncIterator[ControlMessage]) -> None:
        close = getattr(replies, "aclose", None)
        if close is not None:
            await close()

    @staticmethod
    def marker(**fields: Any) -> ControlMessage:
        """A broadcast that tells the test everything sent before it has arrived."""
        return ControlMessage(id=unique("end"), command="end", **fields)

    # -- commands -----------------------------------------------------------------------

    async def test_a_message_to_one_worker_reaches_only_that_worker(
        self,
        control: ControlChannel,
        other_control: ControlChannel,
        listen: Callable[[ControlChannel, str], Listener],
        clock: Clock,
    ) -> None:
        alice, bob = listen(control, "worker-alice"), listen(other_control, "worker-bob")
        await self.until_listening(control, alice, bob)
        sent = ControlMessage(
            id=unique("msg"),
            command="revoke",
            args={"task_id": "t-1", "terminate": True, "ключ": [1, 2.5, None, {"✓": "δ"}]},
            destination="worker-alice",
            reply_to=unique("reply"),
            sent_at=clock.now() + 0.125,
        )
        await other_control.send(sent)
        end = self.marker()
        await other_control.send(end)
        await alice.wait_for(end.id, self.wait_limit)
        await bob.wait_for(end.id, self.wait_limit)
        # Every field arrives as sent; from one sender, in the order sent
        assert alice.got == [sent, end]
        assert bob.got == [end]

    async def test_a_broadcast_reaches_every_listener_once(
        self,
        control: ControlChannel,
        other_control: ControlChannel,
        listen: Callable[[ControlChannel, str], Listener],
    ) -> None:
        listeners = [
            listen(control, "worker-a"),
            listen(other_control, "worker-b"),
            listen(other_control, "worker-c"),
        ]
        await self.until_listening(control, *listeners)
        sent = ControlMessage(id=unique("msg"), command="ping", args={"n": 1})
        await control.send(sent)
        end = self.marker()
        await control.send(end)
        for listener in listeners:
            await listener.wait_for(end.id, self.wait_limit)
            assert listener.got == [sent, end], listener.worker_id

    async def test_a_listener_gets_nothing_sent_before_it_started(
        self, control: ControlChannel, listen: Callable[[ControlChannel, str], Listener]
    ) -> None:
        await control.send(ControlMessage(id=unique("old"), command="shutdown"))
        await control.send(
            ControlMessage(id=unique("old"), command="shutdown", destination="worker-late")
        )
        late = listen(control, "worker-late")
        await self.until_listening(control, late)
        end = self.marker()
        await control.send(end)
        await late.wait_for(end.id, self.wait_limit)
        assert late.got == [end]

    # -- replies ------------------------------------------------------------------------

    async def test_replies_reach_the_sender_even_before_it_reads(
        self,
        control: ControlChannel,
        other_control: ControlChannel,
        listen: Callable[[ControlChannel, str], Listener],
        clock: Clock,
    ) -> None:
        workers = [listen(other_control, "worker-a"), listen(other_control, "worker-b")]
        await self.until_listening(control, *workers)
        reply_to = unique("reply")
        replies = control.replies(reply_to)  # how a sender starts: iterator first...
        command = ControlMessage(id=unique("msg"), command="ping", reply_to=reply_to)
        await control.send(command)  # ...then the command
        # Both workers answer before the sender reads a thing
        for worker in workers:
            await worker.wait_for(command.id, self.wait_limit)
            assert worker.got[-1].reply_to == reply_to
            await other_control.reply(
                reply_to,
                ControlMessage(
                    id=unique("pong"),
                    command="pong",
                    args={"worker": worker.worker_id, "ok": True},
                    reply_to=reply_to,
                    sent_at=clock.now(),
                ),
            )
        try:
            got = [await self.next_reply(clock, replies) for _ in workers]
        finally:
            await self.close(replies)
        assert sorted(r.args["worker"] for r in got) == ["worker-a", "worker-b"]
        assert all(r.command == "pong" and r.args["ok"] is True for r in got)

    async def test_replies_come_in_the_order_sent_and_only_to_their_reply_to(
        self, control: ControlChannel, other_control: ControlChannel, clock: Clock
    ) -> None:
        reply_to, elsewhere = unique("reply"), unique("reply")
        replies = control.replies(reply_to)
        await other_control.reply(elsewhere, ControlMessage(id=unique("x"), command="not-mine"))
        sent = [ControlMessage(id=unique("r"), command="pong", args={"i": i}) for i in range(3)]
        for reply in sent:
            await other_control.reply(reply_to, reply)
        try:
            got = [await self.next_reply(clock, replies) for _ in sent]
            # A reply that comes while the sender waits is woken for, not polled for
            waiting = asyncio.ensure_future(anext(replies))
            await asyncio.sleep(0)
            late = ControlMessage(id=unique("r"), command="pong", args={"i": 3})
            await other_control.reply(reply_to, late)
            assert await self.finish(clock, waiting, what="a late reply") == late
        finally:
            await self.close(replies)
        assert got == sent

    # -- namespaces ---------------------------------------------------------------------

    async def test_nothing_crosses_namespaces(
        self,
        control: ControlChannel,
        foreign_control: ControlChannel,
        listen: Callable[[ControlChannel, str], Listener],
        clock: Clock,
    ) -> None:
        # The same worker id in two apps that share a server
        mine, theirs = listen(control, "worker-1"), listen(foreign_control, "worker-1")
        await self.until_listening(control, mine)
        await self.until_listening(foreign_control, theirs)
        directed = ControlMessage(id=unique("msg"), command="stats", destination="worker-1")
        broadcast = ControlMessage(id=unique("msg"), command="ping")
        await control.send(directed)
        await control.send(broadcast)
        my_end, their_end = self.marker(), self.marker()
        await control.send(my_end)
        await foreign_control.send(their_end)
        await mine.wait_for(my_end.id, self.wait_limit)
        await theirs.wait_for(their_end.id, self.wait_limit)
        assert mine.got == [directed, broadcast, my_end]
        assert theirs.got == [their_end]
        # Replies too: the same reply_to in both namespaces
        reply_to = unique("reply")
        replies = control.replies(reply_to)
        await foreign_control.reply(reply_to, ControlMessage(id=unique("r"), command="theirs"))
        mine_reply = ControlMessage(id=unique("r"), command="mine")
        await control.reply(reply_to, mine_reply)
        try:
            assert await self.next_reply(clock, replies) == mine_reply
        finally:
            await self.close(replies)
