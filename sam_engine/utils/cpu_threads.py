"""Independent pieces of PyTorch work on a CPU's cores: one thread each, each running its operations alone.

PyTorch spreads every operation over its intra-op threads (OpenMP) and joins them at its end. The automatic
mask generator's decoder runs hundreds of small operations per batch of clicks: many are too small to be
split at all, and the others pay a fork and a join each. Decoding independent batches on threads of their
own, each single-threaded, keeps every core busy instead, with the same masks (docs/performance.md).

Only with PyTorch's OpenMP backend, whose thread settings are per thread (``parallel_map`` falls back to
a loop otherwise); the pool's threads change nothing for the process's other threads.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

THREAD_NAME = "sam-engine-cpu"
"""The workers' name prefix."""

Item = TypeVar("Item")
Result = TypeVar("Result")


def available() -> bool:
    """Whether single-threaded workers can be made: PyTorch's intra-op threads come from OpenMP."""
    return torch.backends.openmp.is_available()


def parallel_map(function: Callable[[Item], Result], items: Iterable[Item], workers: int) -> list[Result]:
    """``[function(item) for item in items]``, run by ``workers`` single-threaded workers (in order).

    The caller's gradient and inference modes hold in the workers (PyTorch keeps them per thread). The
    first exception raised by ``function`` is raised here. ``workers`` 1, no OpenMP, or a call from a
    worker itself (which would wait for its own pool): a plain loop.
    """
    items = list(items)
    nested = threading.current_thread().name.startswith(THREAD_NAME)
    if workers <= 1 or len(items) <= 1 or nested or not available():
        return [function(item) for item in items]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def call(item: Item) -> Result:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return function(item)

    return list(_single_threaded_pool(workers).map(call, items))


@functools.cache
def _single_threaded_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads whose PyTorch operations each run on one thread.

    ``torch.set_num_threads`` sets the calling thread's OpenMP and MKL thread counts, and also the count
    that threads started later take: each worker sets its own to 1 (after PyTorch's lazy set-up of that
    thread, which would reset it), all wait at a barrier, then the count for later threads is restored.
    """
    threads = torch.get_num_threads()
    ready = threading.Barrier(workers + 1)

    def single_threaded() -> None:
        torch.get_num_threads()  # PyTorch's per-thread set-up happens here, not after ours
        torch.set_num_threads(1)
        ready.wait()

    pool = ThreadPoolExecutor(workers, thread_name_prefix=THREAD_NAME)
    for _ in range(workers):  # each blocks at the barrier, so each starts a thread of its own
        pool.submit(single_threaded)
    ready.wait()
    torch.set_num_threads(threads)
    return pool
