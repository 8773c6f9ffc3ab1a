"""An executor that runs each task at once in the caller's thread: a simulation's fences finish
inside the cycle that starts them, in order, with no thread to wait for."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

T = TypeVar("T")


class InlineExecutor(Executor):
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # what a pool thread would keep for the caller, so does this
            future.set_exception(exc)
        return future
