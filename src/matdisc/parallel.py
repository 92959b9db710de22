"""Running work in parallel: dask tasks, and per-structure work beside model passes.

Every stage that fans work out calls :func:`dask_compute`, so the choice of scheduler
lives in one place: ``address`` (config ``dask.scheduler_address``) connects to a
running scheduler; otherwise a local pool of ``threads`` workers runs the tasks.

A loop that runs a model on a batch and then reads every map of the batch back (the
evaluation) uses :func:`worker_pool` and :func:`lagged`: the read-back of batch k runs on
worker processes while the model runs on batch k + 1.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, TypeVar

from tqdm.auto import tqdm

from matdisc.errors import UserError

log = logging.getLogger(__name__)

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")


def dask_compute(
    tasks: Sequence[Any],
    threads: int = 1,
    address: str | None = None,
    *,
    scheduler: str = "threads",
    desc: str | None = None,
) -> list[Any]:
    """Compute dask ``tasks`` (delayed objects or collections); results in task order.

    threads: local workers (``call.threads``). address: a dask.distributed scheduler
    address such as ``tcp://10.0.0.5:8786``; when given, the tasks run on that cluster
    (its workers must see the same file system for tasks that read or write files).
    scheduler: the local scheduler when ``address`` is None: ``threads`` (numpy work
    releases the GIL), ``processes`` (pure-Python work) or ``synchronous`` (debugging).
    desc: progress-bar label (a bar is shown when set).
    """
    tasks = list(tasks)
    if not tasks:
        return []
    if address:
        return _distributed(tasks, address, desc)
    if scheduler not in LOCAL_SCHEDULERS:
        raise ValueError(f"scheduler must be one of {LOCAL_SCHEDULERS}, got {scheduler!r}")
    import dask

    workers = max(1, int(threads))
    if workers == 1 and scheduler != "processes":
        scheduler = "synchronous"
    keys = {getattr(t, "key", None) for t in tasks} - {None}
    with _ProgressBar(keys, desc):
        results = dask.compute(*tasks, scheduler=scheduler, num_workers=workers)
    return list(results)


T = TypeVar("T")


def single_blas_thread() -> contextlib.AbstractContextManager:
    """numpy's and scipy's BLAS on one thread while the context is open. Per-structure
    work runs BLAS on arrays of a few hundred elements, where its threads only contend:
    the evaluation's read-back took 1.6 times the CPU time with two of them."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Executor]:
    """An executor for per-structure work beside the caller's model passes: ``workers``
    processes (that work is numpy and pymatgen on small arrays and holds the GIL, so
    threads do not scale), or one thread for ``workers`` <= 1 (it still overlaps the model,
    which releases the GIL). On Linux the processes are forked, sharing the parent's loaded
    modules; elsewhere (macOS, where forking a threaded process is unsafe) they are spawned
    and import them. The work must not use torch (a forked child does not own the parent's
    torch threads) and its function and arguments must pickle.

    While the pool is open, numpy's and scipy's BLAS run on one thread
    (:func:`single_blas_thread`; the children inherit that).
    """
    with single_blas_thread():
        if int(workers) <= 1:
            executor: Executor = ThreadPoolExecutor(max_workers=1)
        else:
            context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            executor = ProcessPoolExecutor(max_workers=int(workers), mp_context=context)
        with executor:
            yield executor


def lagged(batches: Iterable[tuple[T, list[Future]]]) -> Iterator[tuple[T, list[Any]]]:
    """(context, results) of each (context, futures) batch, in order, each collected only
    after the next batch has been submitted: drawing the next batch from ``batches`` (a
    generator that runs a model pass and submits its maps) overlaps the workers' work on
    this one. A worker's exception is raised here."""
    pending: tuple[T, list[Future]] | None = None
    for batch in batches:
        if pending is not None:
            yield pending[0], [f.result() for f in pending[1]]
        pending = batch
    if pending is not None:
        yield pending[0], [f.result() for f in pending[1]]


def _distributed(tasks: list[Any], address: str, desc: str | None) -> list[Any]:
    try:
        from distributed import Client, as_completed
    except ImportError as exc:  # pragma: no cover - distributed is a dependency
        raise UserError("dask.scheduler_address is set but dask.distributed is missing.") from exc
    try:
        client = Client(address, timeout="30s")
    except (OSError, TimeoutError) as exc:
        raise UserError(
            f"cannot reach the dask scheduler at {address} ({exc}); start it or set "
            f"dask.scheduler_address to null to run locally."
        ) from exc
    try:
        log.info("running %d tasks on the dask cluster at %s", len(tasks), address)
        futures = client.compute(tasks)
        with tqdm(total=len(futures), desc=desc, disable=desc is None) as bar:
            for _ in as_completed(futures):
                bar.update(1)
        return client.gather(futures)
    finally:
        client.close()


class _ProgressBar:
    """A tqdm bar advanced by dask's local scheduler callbacks (one tick per task)."""

    def __init__(self, keys: set[Any], desc: str | None) -> None:
        self.keys = keys
        self.desc = desc
        self._callback = None

    def __enter__(self) -> _ProgressBar:
        if self.desc is None:
            return self
        from dask.callbacks import Callback

        bar = tqdm(total=len(self.keys), desc=self.desc)
        keys = self.keys

        class _Ticks(Callback):
            def _posttask(
                self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any
            ) -> None:
                if key in keys:
                    bar.update(1)

            def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
                bar.close()

        self._callback = _Ticks()
        self._callback.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._callback is not None:
            self._callback.__exit__(*exc)
