"""Single-threaded workers for independent pieces of PyTorch work (sam_engine.utils.cpu_threads)."""

from __future__ import annotations

import threading

import pytest
import torch

from sam_engine.utils import cpu_threads

pytestmark = pytest.mark.skipif(not cpu_threads.available(), reason="PyTorch's intra-op threads are not OpenMP's")


@pytest.fixture
def two_threads():
    """The test runs with 2 intra-op threads (CI's machine has 2 cores), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_workers_run_single_threaded_and_leave_other_threads_alone(two_threads):
    seen = cpu_threads.parallel_map(lambda i: (i, torch.get_num_threads(), threading.current_thread().name),
                                    range(6), 2)
    assert [item for item, _, _ in seen] == list(range(6))  # in order
    assert {threads for _, threads, _ in seen} == {1}
    assert all(name.startswith("sam-engine-cpu") for _, _, name in seen)
    assert torch.get_num_threads() == 2  # the calling thread keeps its threads...
    later = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [2]  # ... and so does a thread started afterwards


def test_gradient_and_inference_modes_reach_the_workers(two_threads):
    def modes(_):
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    assert set(cpu_threads.parallel_map(modes, range(2), 2)) == {(True, False)}
    with torch.no_grad():
        assert set(cpu_threads.parallel_map(modes, range(2), 2)) == {(False, False)}
    with torch.inference_mode():
        assert set(cpu_threads.parallel_map(modes, range(2), 2)) == {(False, True)}


def test_one_worker_is_a_plain_loop_and_errors_propagate(two_threads):
    assert cpu_threads.parallel_map(lambda i: threading.current_thread().name, range(3), 1) == [
        threading.current_thread().name
    ] * 3

    def fail(i):
        if i == 2:
            raise ValueError(f"item {i}")
        return i

    with pytest.raises(ValueError, match="item 2"):
        cpu_threads.parallel_map(fail, range(4), 2)


def test_a_call_from_a_worker_runs_in_that_worker(two_threads):
    """Nested, the workers would wait for themselves: the inner map is a loop in the worker."""
    def inner(_):
        return set(cpu_threads.parallel_map(lambda i: threading.current_thread().name, range(3), 2))

    names = cpu_threads.parallel_map(lambda _: (threading.current_thread().name, inner(0)), range(2), 2)
    assert all(inner_names == {outer} for outer, inner_names in names)
