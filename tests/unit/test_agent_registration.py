"""An agent registers again after a lost lease in one thread, however many losses are told meanwhile
(a thread per loss once piled up 680 threads, all retrying, in an agent whose etcd had gone), and a
loss told while that thread is at work is not forgotten."""

from __future__ import annotations

import threading
import time

from pytest_mock import MockerFixture

from ucloud_common.config import Settings
from ucloud_common.specs import Specs
from ucloud_common.store import MemoryStore
from ucloud_vm.agent import Agent, HostSpec
from ucloud_vm.fake_driver import FakeDriver


class Lease:
    def __init__(self, lost: bool) -> None:
        self.lost = threading.Event()
        if lost:
            self.lost.set()


def test_losses_told_while_registering_start_no_second_thread_and_are_not_forgotten(mocker: MockerFixture) -> None:
    agent = Agent(MemoryStore(), Settings(), HostSpec("h1", "10.0.0.1", Specs(cpu=1, ram=1, ssd=1)), FakeDriver(), {})
    release = threading.Event()
    running, most, calls = 0, 0, 0
    lock = threading.Lock()

    def register() -> None:
        nonlocal running, most, calls
        with lock:
            running, calls = running + 1, calls + 1
            most = max(most, running)
            first = calls == 1
        if first:
            release.wait(10)
        # The first lease made is lost at once (told while registering: ignored by _reregister);
        # the second holds.
        agent._lease = Lease(lost=first)  # type: ignore[assignment]
        with lock:
            running -= 1

    mocker.patch.object(agent, "_register", side_effect=register)
    agent._reregister()
    for _ in range(50):  # losses told meanwhile: no thread of their own
        agent._reregister()
    release.set()
    deadline = time.monotonic() + 10
    while (agent._registering or calls < 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (most, calls, agent._registering) == (1, 2, False)
