"""MLflow as a sink: experiments created once up front, one run per training job.

Default store: a SQLite file under the results directory addressed by an absolute sqlite:/// URI,
artifacts beside it; MLFLOW_TRACKING_URI overrides both (e.g. an `mlflow server`). Several
training processes write to the same SQLite file at once, so every call retries while the
database is locked instead of losing the run.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def default_uri(results: str | Path) -> str:
    return "sqlite:///" + str((Path(results) / "mlflow" / "mlflow.db").resolve())


def tracking_uri(results: str | Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri(results)


def artifact_root(results: str | Path) -> str:
    return (Path(results) / "mlflow" / "artifacts").resolve().as_uri()


def _retry(fn: Callable[[], T], attempts: int = 30) -> T:
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # sqlite "database is locked" surfaces as several exception types
            text = str(exc).lower()
            if i == attempts - 1 or not ("locked" in text or "busy" in text):
                raise
            time.sleep(0.05 * (1.5 ** min(i, 10)) * (1 + random.random()))
    raise AssertionError("unreachable")


def client(uri: str):
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    from mlflow.tracking import MlflowClient

    return _retry(lambda: MlflowClient(tracking_uri=uri))


def ensure_experiments(uri: str, names: list[str], artifacts: str | None) -> dict[str, str]:
    """Create (or find) one experiment per name; returns name -> experiment id. With no names, only
    sets up the store (a new SQLite database gets its schema here)."""
    c = client(uri)
    _retry(lambda: c.search_experiments(max_results=1))
    ids = {}
    for name in names:
        exp = _retry(lambda: c.get_experiment_by_name(name))
        if exp is None:
            ids[name] = _retry(lambda: c.create_experiment(name, artifact_location=artifacts))
        else:
            ids[name] = exp.experiment_id
    return ids


class Run:
    """One MLflow run, resumable by id; every call retries on a locked database."""

    def __init__(self, uri: str, experiment_id: str, name: str, run_id: str | None = None,
                 tags: dict[str, str] | None = None) -> None:
        self.client = client(uri)
        if run_id is None:
            run = _retry(lambda: self.client.create_run(experiment_id, run_name=name, tags=tags or {}))
            run_id = run.info.run_id
        else:
            _retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, str(v)[:6000]) for k, v in _flatten(params).items()]
        existing = _retry(lambda: self.client.get_run(self.run_id)).data.params
        flat = [p for p in flat if p.key not in existing]  # a resumed run keeps its params
        if flat:
            _retry(lambda: self.client.log_batch(self.run_id, params=flat))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        _retry(lambda: self.client.log_batch(self.run_id, metrics=batch))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        _retry(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def log_artifact(self, path: str | Path) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, str(path)))

    def end(self, status: str = "FINISHED") -> None:
        _retry(lambda: self.client.set_terminated(self.run_id, status=status))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def find_runs(uri: str, experiment_name: str) -> list:
    """All runs of an experiment (for tests and reports)."""
    c = client(uri)
    exp = _retry(lambda: c.get_experiment_by_name(experiment_name))
    if exp is None:
        return []
    return _retry(lambda: c.search_runs([exp.experiment_id], max_results=10000))
