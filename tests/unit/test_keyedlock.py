"""One lock per key: keys are held apart from each other, one key by one thread at a time, and a
key's lock is dropped once nobody holds or waits for it (users come and go)."""

from __future__ import annotations

import threading

from ucloud_common.keyedlock import KeyedLocks


def test_one_key_is_held_by_one_thread_at_a_time_and_forgotten_after() -> None:
    locks = KeyedLocks()
    inside, most = [0], [0]
    guard = threading.Lock()

    def work() -> None:
        for _ in range(200):
            with locks.held("alice"):
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1 and len(locks) == 0


def test_other_keys_are_not_held_up_and_a_holder_may_take_its_key_again() -> None:
    locks = KeyedLocks()
    held, release = threading.Event(), threading.Event()

    def hold_bob() -> None:
        with locks.held("bob"):
            held.set()
            release.wait(5)

    with locks.held("alice"):
        with locks.held("alice"):  # re-entrant
            bob = threading.Thread(target=hold_bob)
            bob.start()
            assert held.wait(5)  # not held up by alice
    assert len(locks) == 1  # bob's, still held
    release.set()
    bob.join()
    assert len(locks) == 0
