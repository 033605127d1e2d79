"""One way to run independent CPU jobs in parallel: local worker processes, or a Dask cluster.

Feature extraction, alignment passes and decoding each map a picklable
module-level function over work items (utterance chunks, shards, utterances).
:class:`Executor` is that map: worker processes on this machine by default
(``multiprocessing``, as before), or the workers of a Dask ``distributed``
cluster, which is either an existing scheduler (``address``), a
``LocalCluster``, or Slurm / PBS batch jobs started by ``dask-jobqueue``. The
results are the same whichever runs them. The process-wide choice comes from
the recipe config's ``executor`` section (the CLI calls :func:`configure`), so
the stages need not pass it along.

Why Dask: it is pure Python and pip-installable; its futures map one to one onto
``Pool.imap`` / ``imap_unordered``; a ``LocalCluster`` runs the same code on a
laptop and in the tests; and ``dask-jobqueue`` turns the same config into Slurm
or PBS jobs without a site script. Ray brings its own C++ runtime and object
store, more than a CPU toolkit needs, and no batch-queue launcher of its own;
submitit is Slurm-only and runs one job per task (each would import torch and
load its model again) rather than a pool of long-lived workers.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

__all__ = ["ExecutorConfig", "Executor", "configure"]

log = logging.getLogger(__name__)

BACKENDS = ("local", "dask")
CLUSTERS = ("local", "slurm", "pbs")


@dataclass
class ExecutorConfig:
    """Where parallel CPU jobs run (section ``executor`` of a recipe config)."""

    backend: str = "local"  # "local": worker processes on this machine; "dask": a Dask cluster
    address: str = ""  # dask: an existing scheduler (tcp://host:8786); "" = start a cluster
    cluster: str = "local"  # dask, no address: "local" (LocalCluster), "slurm" or "pbs" (dask-jobqueue)
    workers: int = 0  # dask clusters started here: worker processes; 0 = the caller's nj
    cores: int = 1  # jobqueue: cores per batch job (one single-threaded worker per core)
    memory: str = "4GB"  # jobqueue: memory per batch job
    queue: str = ""  # jobqueue: partition / queue ("" = the site default)
    walltime: str = "02:00:00"  # jobqueue: time limit per batch job
    job_extra: list[str] = field(default_factory=list)  # jobqueue: extra #SBATCH / #PBS directive lines

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"executor.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.cluster not in CLUSTERS:
            raise ValueError(f"executor.cluster must be one of {CLUSTERS}, got {self.cluster!r}")
        if self.workers < 0 or self.cores < 1:
            raise ValueError("executor: workers must be >= 0 and cores >= 1")


_DEFAULT = [ExecutorConfig()]


def configure(config: ExecutorConfig) -> None:
    """Make ``config`` the default of every :class:`Executor` this process creates without one."""
    _DEFAULT[0] = config


_INITIALIZED: set[str] = set()  # tokens of the initializers already run in this (worker) process


class _WithInit:
    """``fn`` that first runs ``initializer(*initargs)`` once per process (Dask has no pool initializer)."""

    def __init__(self, fn: Callable, initializer: Callable, initargs: tuple):
        self.fn, self.initializer, self.initargs = fn, initializer, initargs
        self.token = uuid.uuid4().hex

    def __call__(self, item: Any) -> Any:
        if self.token not in _INITIALIZED:
            self.initializer(*self.initargs)
            _INITIALIZED.add(self.token)
        return self.fn(item)


def _next(it: Iterator) -> list:
    """The next item of ``it`` as a one-element list, or [] at its end."""
    return [x for _, x in zip(range(1), it)]


class Executor:
    """``map(fn, items)`` in-process (``nj <= 1``), or over ``nj`` local processes or a Dask cluster's workers.

    ``initializer(*initargs)`` runs once in every worker before its first item
    (thread counts, loading a decoding graph). ``start_method`` is the local
    pool's ("spawn" is safe with torch threads running; "fork" starts faster).
    Use as a context manager: leaving it stops the workers.
    """

    def __init__(
        self,
        nj: int,
        config: ExecutorConfig | None = None,
        initializer: Callable | None = None,
        initargs: tuple = (),
        start_method: str = "spawn",
    ):
        self.config = config or _DEFAULT[0]
        self.initializer, self.initargs = initializer, initargs
        self.pool = self.client = self.cluster = None
        self.workers = nj
        self._initialized_here = False
        if nj > 1 and self.config.backend == "dask":
            self.workers = self.config.workers or nj
            self._start_dask(self.workers)
        elif nj > 1:
            ctx = mp.get_context(start_method if start_method in mp.get_all_start_methods() else "spawn")
            self.pool = ctx.Pool(nj, initializer=initializer, initargs=initargs)

    def _start_dask(self, workers: int) -> None:
        from distributed import Client, LocalCluster

        c = self.config
        if c.address:
            self.client = Client(c.address)
        else:
            if c.cluster == "local":
                self.cluster = LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
                )
            else:
                import dask_jobqueue

                cls = dask_jobqueue.SLURMCluster if c.cluster == "slurm" else dask_jobqueue.PBSCluster
                self.cluster = cls(
                    cores=c.cores,
                    processes=c.cores,
                    memory=c.memory,
                    queue=c.queue or None,
                    walltime=c.walltime,
                    job_extra_directives=list(c.job_extra),
                )
                self.cluster.scale(jobs=-(-workers // c.cores))
            self.client = Client(self.cluster)
        log.info("dask executor: %s", self.client)

    @property
    def parallel(self) -> bool:
        """True when items run in other processes (so in-process state is not shared with them)."""
        return self.pool is not None or self.client is not None

    def map(self, fn: Callable, items: Iterable, ordered: bool = True) -> Iterator:
        """Results of ``fn(item)``: in item order, or (``ordered=False``) as they complete."""
        if self.client is not None:
            from distributed import as_completed

            client = self.client
            call = fn if self.initializer is None else _WithInit(fn, self.initializer, self.initargs)
            it = iter(items)
            window = 4 * self.workers  # items in flight: a stream of posteriors never sits whole in memory
            futures: deque = deque(client.submit(call, x, pure=False) for _, x in zip(range(window), it))
            try:
                if ordered:
                    while futures:
                        result = futures.popleft().result()
                        futures.extend(client.submit(call, x, pure=False) for x in _next(it))
                        yield result
                else:
                    done = as_completed(list(futures))
                    for f in done:
                        result = f.result()
                        futures.remove(f)
                        for x in _next(it):
                            futures.append(client.submit(call, x, pure=False))
                            done.add(futures[-1])
                        yield result
            finally:
                if client.status == "running":  # not closed under a half-read map
                    client.cancel(list(futures))
            return
        if self.pool is not None:
            yield from (self.pool.imap(fn, items) if ordered else self.pool.imap_unordered(fn, items))
            return
        if self.initializer is not None and not self._initialized_here:
            self.initializer(*self.initargs)
            self._initialized_here = True
        yield from map(fn, items)

    def close(self) -> None:
        """Stop the workers (unfinished items are dropped)."""
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
