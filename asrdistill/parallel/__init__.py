"""Running independent CPU jobs: local processes or a Dask cluster, behind one interface."""

from asrdistill.parallel.executor import Executor, ExecutorConfig, configure

__all__ = ["Executor", "ExecutorConfig", "configure"]
