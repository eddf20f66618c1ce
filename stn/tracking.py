"""MLflow as a sink: experiments created once up front, one run per training job.

Default store: a SQLite file under the results directory addressed by an absolute sqlite:/// URI,
artifacts beside it; MLFLOW_TRACKING_URI overrides both (e.g. an `mlflow server`). Several
training processes write to the same SQLite file at once, so every call retries while the
database is locked instead of losing the run.

Training never waits on tracking: HTTP calls time out after HTTP_TIMEOUT seconds with HTTP_RETRIES
retries, and once a call fails for any other reason than a locked database the run goes offline: it
warns once, naming the URI, keeps training, and appends what it would have sent to a PENDING file in
its run directory, which `stn mlflow-sync` uploads later.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

from .io import first_line

T = TypeVar("T")

HTTP_TIMEOUT, HTTP_RETRIES = "10", "2"  # seconds per MLflow HTTP request, retries (MLflow's own: 120 s, 7)
PENDING = "mlflow_pending.jsonl"  # a run's tracking calls that could not be sent, one JSON record per line
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT)
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)


def default_uri(results: str | Path) -> str:
    return "sqlite:///" + str((Path(results) / "mlflow" / "mlflow.db").resolve())


def tracking_uri(results: str | Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri(results)


def artifact_root(results: str | Path) -> str:
    return (Path(results) / "mlflow" / "artifacts").resolve().as_uri()


def experiment_name(name: str, results: str | Path) -> str:
    """The MLflow experiment of table `name` for a results directory: the plain name in the directory's own
    store, "<name> [<results, absolute>]" on a shared server, so two result trees never mix there."""
    if tracking_uri(results) == default_uri(results):
        return name
    return f"{name} [{Path(results).resolve()}]"


def init_experiments(results: str | Path, names: list[str], log: Callable[[str], None] = print) -> dict[str, str | None]:
    """Set up the store and the experiments of `names` for a results directory: name -> experiment id. A
    tracking server that cannot be reached gives None ids and a warning (the runs then track offline); a
    local store that fails is an error."""
    uri = tracking_uri(results)
    try:
        ids = ensure_experiments(uri, [experiment_name(n, results) for n in names], artifact_root(results))
    except Exception as exc:
        if uri == default_uri(results):
            raise
        log(f"warning: MLflow at {uri} is unreachable ({first_line(exc)}); the runs will keep their tracking in "
            f"{PENDING} files for `stn mlflow-sync`")
        return {n: None for n in names}
    return {n: ids[experiment_name(n, results)] for n in names}


PARENT_TAG = ("stn.role", "table")  # the tag that marks a table's parent run


def init_parent_runs(results: str | Path, ids: dict[str, str | None],
                     log: Callable[[str], None] = print) -> dict[str, str]:
    """One parent run per table (experiment) that its runs nest under in the MLflow runs view: name -> run id.
    Found again by its tag, so re-creating the experiments reuses it. Per table rather than per cell: the
    runs view then lists a table's cells side by side under one row, one click from the comparison the
    table makes. A store that cannot be reached gives no parents (the runs are then simply not nested)."""
    uri = tracking_uri(results)
    key, value = PARENT_TAG
    parents = {}
    try:
        c = client(uri)
        for name, exp_id in ids.items():
            if exp_id is None:
                continue
            found = _retry(lambda: c.search_runs([exp_id], f"tags.`{key}` = '{value}'", max_results=1))
            if found:
                parents[name] = found[0].info.run_id
                continue
            run = _retry(lambda: c.create_run(exp_id, run_name=f"{name}: every run", tags={key: value}))
            _retry(lambda: c.set_terminated(run.info.run_id, status="FINISHED"))
            parents[name] = run.info.run_id
    except Exception as exc:
        if uri == default_uri(results):
            raise
        log(f"warning: MLflow at {uri} could not take the tables' parent runs ({first_line(exc)}); the runs will not be nested")
    return parents


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
    """One MLflow run, resumable by id; every call retries on a locked database. With `pending` (a file in
    the run's directory) an unreachable store does not stop training: the run goes offline and records
    its calls there for `sync_pending`; with `experiment_id` None it starts offline."""

    def __init__(self, uri: str, experiment_id: str | None, name: str, run_id: str | None = None,
                 tags: dict[str, str] | None = None, pending: Path | None = None, experiment: str = "") -> None:
        self.uri, self.pending, self.run_id, self.offline = uri, pending, run_id, False
        start = {"kind": "start", "experiment": experiment, "name": name, "tags": tags or {}}
        try:
            if experiment_id is None:
                raise ConnectionError("the pipeline could not reach it when the experiments were created")
            self.client = client(uri)
            if run_id is None:
                self._close_orphans(experiment_id, name)
                run = _retry(lambda: self.client.create_run(experiment_id, run_name=name, tags=tags or {}))
                self.run_id = run.info.run_id
            else:
                _retry(lambda: self.client.update_run(run_id, status="RUNNING"))
        except Exception as exc:
            self._go_offline(exc)
            self._record(start if self.run_id is None else {"kind": "resume", "run_id": self.run_id})

    def _close_orphans(self, experiment_id: str, name: str) -> None:
        """A job killed before its first checkpoint left its run RUNNING; its rerun starts afresh, so
        that run is marked KILLED."""
        runs = _retry(lambda: self.client.search_runs(
            [experiment_id], f"attributes.run_name = '{name}' and attributes.status = 'RUNNING'", max_results=100))
        for r in runs:
            _retry(lambda: self.client.set_terminated(r.info.run_id, status="KILLED"))

    def _go_offline(self, exc: Exception) -> None:
        if self.pending is None:
            raise exc
        if not self.offline:
            warnings.warn(f"MLflow at {self.uri} is unreachable ({first_line(exc)}); training goes on and this run's tracking "
                          f"is kept in {self.pending}; upload it later with `stn mlflow-sync`", RuntimeWarning, stacklevel=3)
        self.offline = True

    def _record(self, record: dict) -> None:
        self.pending.parent.mkdir(parents=True, exist_ok=True)
        with open(self.pending, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _send(self, fn: Callable[[], Any], record: dict) -> None:
        if not self.offline:
            try:
                _retry(fn)
                return
            except Exception as exc:
                self._go_offline(exc)
                if self.run_id is not None:  # the run exists on the server: the sync resumes it
                    self._record({"kind": "resume", "run_id": self.run_id})
        self._record(record)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = {k: str(v)[:6000] for k, v in _flatten(params).items()}

        def send():
            existing = _retry(lambda: self.client.get_run(self.run_id)).data.params
            fresh = [Param(k, v) for k, v in flat.items() if k not in existing]  # a resumed run keeps its params
            if fresh:
                _retry(lambda: self.client.log_batch(self.run_id, params=fresh))

        self._send(send, {"kind": "params", "params": flat})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self._send(lambda: self.client.log_batch(self.run_id, metrics=batch),
                   {"kind": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}, "step": step, "time": now})

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._send(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]),
                   {"kind": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path) -> None:
        self._send(lambda: self.client.log_artifact(self.run_id, str(path)),
                   {"kind": "artifact", "path": str(Path(path).resolve())})

    def log_dataset(self, name: str, digest: str, source: str | Path, context: str = "training") -> None:
        """The run's data set as an MLflow dataset input (the run page's "Datasets"): its name, the sha256 the
        pipeline recorded for it (as digest) and the file it was read from."""
        record = {"kind": "dataset", "name": name, "digest": digest[:36], "source": str(Path(source).resolve()),
                  "context": context}
        self._send(lambda: self.client.log_inputs(self.run_id, datasets=[_dataset_input(record)]), record)

    def log_model(self, model, example, weights: str | Path) -> None:
        """The trained model as an MLflow model: the PyTorch flavour, the module pickled (cloudpickle) with a
        signature inferred from `example` (a float32 CPU batch in [0, 1], (N, C, H, W) or (N, C, D, H, W))
        and the model's output on it. `mlflow.pytorch.load_model(f"runs:/{run_id}/model")` returns it, needing
        only torch and an importable `stn` (not the pipeline's build steps or parameter tables). Offline, or if
        MLflow cannot log it, the run keeps `weights` (model.pt) as a plain artifact instead."""
        if not self.offline:
            try:
                _retry(lambda: self._log_model(model, example))
                return
            except Exception as exc:
                warnings.warn(f"MLflow could not log the model of run {self.run_id} ({first_line(exc)}); "
                              f"logging {weights} as a plain artifact instead", RuntimeWarning, stacklevel=2)
        self.log_artifact(weights)

    def _log_model(self, model, example) -> None:
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        # its warning that pickles run code when loaded, once per run in every job log; the README says it
        logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
        cpu = copy.deepcopy(model).cpu().eval()  # the caller's model keeps its device and mode
        with torch.no_grad():
            signature = infer_signature(example.numpy(), cpu(example).numpy())
        mlflow.set_tracking_uri(self.uri)
        # leaving the run marks it FINISHED; end() sets the final state
        with mlflow.start_run(run_id=self.run_id), _without_requirement_scan():
            mlflow.pytorch.log_model(cpu, name="model", signature=signature, serialization_format="pickle",
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])

    def end(self, status: str = "FINISHED") -> None:
        self._send(lambda: self.client.set_terminated(self.run_id, status=status), {"kind": "end", "status": status})


@contextlib.contextmanager
def _without_requirement_scan():
    """MLflow checks a logged model's requirements against the installed packages by mapping every installed
    module to its distribution: 0.43 s of a short job's ~8 (a Table 1 R FCN run: 8.25 -> 7.9 s wall).
    The requirements logged here are this process's own torch and mlflow versions, so the check cannot fail;
    it is switched off while the model is logged and restored after."""
    from mlflow.utils import environment

    check = environment.warn_dependency_requirement_mismatches
    environment.warn_dependency_requirement_mismatches = lambda requirements: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = check


def sync_pending(uri: str, results: str | Path, log: Callable[[str], None] = print) -> int:
    """Upload every run's PENDING file under `results` to `uri` (creating experiments and runs where needed);
    each file is removed once its run is complete on the server. Returns the number of runs uploaded."""
    from mlflow.entities import Metric, Param, RunTag

    files = sorted(Path(results).rglob(PENDING))
    if not files:
        log(f"nothing to upload: no {PENDING} under {results}")
        return 0
    c = client(uri)
    done = 0
    for path in files:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        start = next((r for r in records if r["kind"] == "start"), None)
        resume = next((r for r in records if r["kind"] == "resume"), None)
        if resume:
            run_id = resume["run_id"]
        elif start:
            exp_id = ensure_experiments(uri, [start["experiment"]], artifact_root(results))[start["experiment"]]
            run_id = _retry(lambda: c.create_run(exp_id, run_name=start["name"], tags=start["tags"])).info.run_id
        else:
            raise ValueError(f"{path} has neither a start nor a resume record; it was not written by stn")
        status = None
        for r in records:
            if r["kind"] == "params":
                existing = _retry(lambda: c.get_run(run_id)).data.params
                fresh = [Param(k, v) for k, v in r["params"].items() if k not in existing]
                if fresh:
                    _retry(lambda: c.log_batch(run_id, params=fresh))
            elif r["kind"] == "metrics":
                batch = [Metric(k, v, r["time"], r["step"]) for k, v in r["metrics"].items()]
                _retry(lambda: c.log_batch(run_id, metrics=batch))
            elif r["kind"] == "tags":
                _retry(lambda: c.log_batch(run_id, tags=[RunTag(k, v) for k, v in r["tags"].items()]))
            elif r["kind"] == "artifact" and Path(r["path"]).exists():
                _retry(lambda: c.log_artifact(run_id, r["path"]))
            elif r["kind"] == "dataset":
                _retry(lambda: c.log_inputs(run_id, datasets=[_dataset_input(r)]))
            elif r["kind"] == "end":
                status = r["status"]
        if status:
            _retry(lambda: c.set_terminated(run_id, status=status))
        path.unlink()
        done += 1
        log(f"uploaded {path.parent} as run {run_id}")
    return done


def _dataset_input(record: dict):
    """MLflow's dataset input for a "dataset" record (Run.log_dataset sends it, or keeps it for the sync)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(record["name"], record["digest"], "local", json.dumps({"uri": record["source"]}))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", record["context"])])


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def find_runs(uri: str, experiment_name: str, parents: bool = False) -> list:
    """The training runs of an experiment (for tests and reports), or with `parents` its table's parent run(s)."""
    c = client(uri)
    exp = _retry(lambda: c.get_experiment_by_name(experiment_name))
    if exp is None:
        return []
    key, value = PARENT_TAG
    runs = _retry(lambda: c.search_runs([exp.experiment_id], max_results=10000))
    return [r for r in runs if (r.data.tags.get(key) == value) == parents]
