from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ucloud_common.config import Settings
from ucloud_common.store import Store
from ucloud_scheduler.fencing import CommandFence
from ucloud_scheduler.scheduler import Scheduler

FENCE = Path(__file__).resolve().parents[1] / "helpers" / "fence.sh"


@pytest.fixture
def fence_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "fence.log"
    monkeypatch.setenv("FENCE_LOG", str(log))
    return log


@pytest.fixture
def start_scheduler(settings: Settings, store: Store, fence_log: Path) -> Iterator[Callable[..., Scheduler]]:
    running: list[tuple[Scheduler, threading.Event, threading.Thread, Store]] = []

    def start(**overrides: object) -> Scheduler:
        own_settings = settings.model_copy(update=overrides)
        own_store = Store(own_settings)
        scheduler = Scheduler(own_store, own_settings, CommandFence(str(FENCE), 10))
        stop = threading.Event()
        thread = threading.Thread(target=scheduler.run, args=(stop,), daemon=True)
        thread.start()
        running.append((scheduler, stop, thread, own_store))
        return scheduler

    yield start
    for _, stop, thread, own_store in running:
        stop.set()
        thread.join(timeout=10)
        own_store.close()
