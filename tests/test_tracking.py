"""MLflow sink: concurrent writers lose no run; failed runs end FAILED."""
import multiprocessing as mp

import pytest

from stn import tracking


def _log_one(uri, exp_id, i):
    run = tracking.Run(uri, exp_id, f"run{i}", tags={"i": str(i)})
    run.log_params({"settings": {"lr": 0.01, "i": i}})
    for step in range(5):
        run.log_metrics({"loss": 1.0 / (step + 1), "val_error": float(i)}, step=step)
    run.end("FINISHED")


def test_parallel_processes_lose_no_run(tmp_path):
    uri = tracking.default_uri(tmp_path)
    ids = tracking.ensure_experiments(uri, ["table1"], tracking.artifact_root(tmp_path))
    n = 8
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_log_one, args=(uri, ids["table1"], i)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    runs = tracking.find_runs(uri, "table1")
    assert sorted(r.data.tags["i"] for r in runs) == sorted(str(i) for i in range(n))
    assert all(r.info.status == "FINISHED" for r in runs)
    client = tracking.client(uri)
    for r in runs:
        history = client.get_metric_history(r.info.run_id, "loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(5))
        assert r.data.params["settings.lr"] == "0.01"


def test_experiments_are_created_once(tmp_path):
    uri = tracking.default_uri(tmp_path)
    a = tracking.ensure_experiments(uri, ["table1"], None)
    b = tracking.ensure_experiments(uri, ["table1"], None)
    assert a == b


def test_env_var_overrides_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///" + str(tmp_path / "other.db"))
    assert tracking.tracking_uri("results") == "sqlite:///" + str(tmp_path / "other.db")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.tracking_uri(tmp_path).startswith("sqlite:////")
