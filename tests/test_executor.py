"""The executor: local processes and a real Dask LocalCluster (loopback) give the local run's results."""

from __future__ import annotations

import numpy as np
import pytest
from test_features import LENGTHS, _write_corpus

from asrdistill.data.features import FbankConfig, compute_features
from asrdistill.data.shards import iter_shard
from asrdistill.parallel import Executor, ExecutorConfig, configure

DASK = ExecutorConfig(backend="dask", cluster="local", workers=2)


def _square_with_offset(x: int) -> int:
    import test_executor

    return x * x + test_executor.OFFSET


OFFSET = 0


def _set_offset(value: int) -> None:
    import test_executor

    test_executor.OFFSET = value


@pytest.mark.parametrize("config", [ExecutorConfig(), DASK], ids=["local", "dask"])
def test_map_in_order_or_as_completed_with_initializer(config):
    with Executor(2, config, initializer=_set_offset, initargs=(7,)) as ex:
        assert ex.parallel
        assert list(ex.map(_square_with_offset, iter(range(20)))) == [x * x + 7 for x in range(20)]
        assert sorted(ex.map(_square_with_offset, range(20), ordered=False)) == [x * x + 7 for x in range(20)]
    with Executor(1, config, initializer=_set_offset, initargs=(3,)) as ex:  # nj = 1: in this process
        assert not ex.parallel and list(ex.map(_square_with_offset, [2])) == [7]


def test_features_on_a_dask_cluster_equal_the_local_run(tmp_path):
    data = _write_corpus(tmp_path, LENGTHS)
    data.save(tmp_path / "data")
    config = FbankConfig(shard_size_mb=0.015)
    local = compute_features(tmp_path / "data", tmp_path / "local", config, nj=1)
    configure(DASK)
    try:
        dask = compute_features(tmp_path / "data", tmp_path / "dask", config, nj=2)
    finally:
        configure(ExecutorConfig())
    assert len(local.shards) > 1 and [s.keys for s in dask.shards] == [s.keys for s in local.shards]
    for a, b in zip(local.shard_paths, dask.shard_paths):
        for (ka, sa), (kb, sb) in zip(iter_shard(a), iter_shard(b)):
            assert ka == kb and np.array_equal(sa["feats"], sb["feats"])


def test_config_is_validated():
    with pytest.raises(ValueError, match="backend"):
        ExecutorConfig(backend="ray")
    with pytest.raises(ValueError, match="cluster"):
        ExecutorConfig(backend="dask", cluster="lsf")


def test_run_jobs_runs_every_line_and_reports_failures(tmp_path, capfd):
    from asrdistill import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("recipe: {a: 1}\n")
    good = [f"config-get --config {cfg} recipe.a" for _ in range(3)]
    (tmp_path / "ok.txt").write_text("# independent jobs\n" + "\n".join(good) + "\n")
    assert cli.main(["run-jobs", "--nj", "2", str(tmp_path / "ok.txt")]) == 0
    assert capfd.readouterr().out.split() == ["1", "1", "1"]  # every job ran once, in a child process
    (tmp_path / "bad.txt").write_text("\n".join(good + [f"config-get --config {cfg} recipe.missing"]) + "\n")
    assert cli.main(["run-jobs", "--nj", "2", str(tmp_path / "bad.txt")]) == 1


def test_run_jobs_on_a_dask_cluster_equals_the_local_backend(tmp_path, monkeypatch, caplog):
    """run.sh's stages 7, 9, 10 and 12 hand their command lines to run-jobs: on a Dask LocalCluster (loopback) two
    independent jobs, given with relative paths as run.sh writes them, give what the local backend gives."""
    import logging

    from asrdistill import cli
    from asrdistill.data.shards import FEATS_PREFIX, ShardManifest

    _write_corpus(tmp_path, LENGTHS).save(tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # the jobs' relative paths are the caller's, also on the Dask workers
    (tmp_path / "c.yaml").write_text("features: {shard_size_mb: 0.015}\n")
    out = {}
    for backend in ("local", "dask"):
        lines = [f"features --config c.yaml --nj 1 --threads 1 data {backend}/{job}" for job in ("a", "b")]
        (tmp_path / f"{backend}.txt").write_text("\n".join(lines) + "\n")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="asrdistill"):
            assert (
                cli.main(
                    [
                        "run-jobs",
                        "--config",
                        "c.yaml",
                        "--set",
                        f"executor.backend={backend}",
                        "--set",
                        "executor.workers=2",
                        "--nj",
                        "2",
                        f"{backend}.txt",
                    ]
                )
                == 0
            )
        assert ("dask executor:" in caplog.text) == (backend == "dask")  # the jobs ran on the cluster's workers
        out[backend] = {job: ShardManifest.load(tmp_path / backend / job, FEATS_PREFIX) for job in ("a", "b")}
    for job in ("a", "b"):
        local, dask = out["local"][job], out["dask"][job]
        assert len(local.shards) > 1 and [s.keys for s in dask.shards] == [s.keys for s in local.shards]
        for a, b in zip(local.shard_paths, dask.shard_paths):
            for (ka, sa), (kb, sb) in zip(iter_shard(a), iter_shard(b)):
                assert ka == kb and np.array_equal(sa["feats"], sb["feats"])
