"""Per-structure work beside model passes: the worker pool and the lagged collection."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from matdisc.parallel import lagged, worker_pool


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _fails(x: int) -> int:
    raise ValueError(f"item {x} is bad")


def test_lagged_collects_a_batch_after_the_next_is_submitted():
    events: list[str] = []
    with worker_pool(1) as pool:

        def batches():
            for k in range(3):
                events.append(f"submit {k}")
                yield k, [pool.submit(_square_and_pid, 10 * k + j) for j in range(2)]

        for k, results in lagged(batches()):
            events.append(f"collect {k}")
            assert [r[0] for r in results] == [(10 * k + j) ** 2 for j in range(2)]
    assert events == [
        "submit 0", "submit 1", "collect 0", "submit 2", "collect 1", "collect 2"
    ]  # fmt: skip


def test_worker_pool_runs_processes_and_keeps_the_order():
    with worker_pool(1) as one:
        assert isinstance(one, ThreadPoolExecutor)
    with worker_pool(2) as pool:
        assert isinstance(pool, ProcessPoolExecutor)
        results = [pool.submit(_square_and_pid, x) for x in range(16)]
        got = [f.result() for f in results]
    assert [value for value, _ in got] == [x * x for x in range(16)]
    assert os.getpid() not in {pid for _, pid in got}  # the work left this process


def test_a_worker_error_is_raised_not_swallowed():
    with worker_pool(2) as pool, pytest.raises(ValueError, match="item 3 is bad"):
        for _ in lagged(iter([(0, [pool.submit(_fails, 3)])])):
            pass


def test_worker_pool_spawns_where_forking_is_unsafe(monkeypatch):
    """Off Linux (macOS laptops) the workers are spawned, not forked; the work still runs
    in other processes, in order."""
    import matdisc.parallel

    monkeypatch.setattr(matdisc.parallel.sys, "platform", "darwin")
    with worker_pool(2) as pool:
        assert pool._mp_context.get_start_method() == "spawn"
        got = [f.result() for f in [pool.submit(pow, x, 2) for x in range(6)]]
        pids = {pool.submit(os.getpid).result() for _ in range(4)}
    assert got == [x * x for x in range(6)] and os.getpid() not in pids


def test_the_models_take_half_the_threads_beside_worker_processes():
    import torch

    from matdisc.train.device import model_threads_beside

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        with model_threads_beside(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 4
        with model_threads_beside(1):  # one worker thread: the models keep theirs
            assert torch.get_num_threads() == 4
        torch.set_num_threads(1)
        with model_threads_beside(2):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
