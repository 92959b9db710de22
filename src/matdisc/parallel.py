"""Running dask tasks: local threads/processes, or a running dask.distributed cluster.

Every stage that fans work out calls :func:`dask_compute`, so the choice of scheduler
lives in one place: ``address`` (config ``dask.scheduler_address``) connects to a
running scheduler; otherwise a local pool of ``threads`` workers runs the tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

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
