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
    n = 4  # writers at once: on 2 cores 4 already contend for the lock; 8 cost twice (each imports MLflow, ~6 s)
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


def _dead_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


def _tiny_training():
    """32 random 28×28 images and four SGD steps on the CPU: (images, data dict, TrainSettings)."""
    import numpy as np

    from stn.train import TrainSettings

    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 32)
    x = rng.integers(0, 255, (32, 28, 28)).astype(np.uint8)
    data = {"x_train": x, "y_train": y, "x_val": x[:8], "y_val": y[:8], "x_test": x[:8], "y_test": y[:8]}
    settings = TrainSettings(iterations=4, batch_size=8, lr=0.01, momentum=0.9, lr_step=100, lr_gamma=0.1,
                             weight_decay=0.0, loc_lr_mult=1.0, eval_every=2, eval_samples=8, checkpoint_every=2,
                             channels_last=False, device="cpu")
    return x, data, settings


def test_an_unreachable_server_costs_no_training_and_the_sync_uploads_it_later(tmp_path, monkeypatch):
    import time

    import torch

    from stn.experiments import tracker
    from stn.io import write_json
    from stn.models import mnist as zoo
    from stn.train import train_run

    results = tmp_path / "results"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_dead_port()}")
    t0 = time.time()
    ids = tracking.init_experiments(results, ["table1"], log=lambda s: None)
    assert ids == {"table1": None} and time.time() - t0 < 60
    assert tracking.experiment_name("table1", results) == f"table1 [{results.resolve()}]"  # one per results tree
    write_json(tmp_path / "ids.json", ids)
    x, data, settings = _tiny_training()
    job = {"experiment": "table1", "dataset": "R", "model": "FCN", "seed": 1, "results": str(results)}
    out = results / "runs" / "table1" / "R" / "FCN" / "seed1"
    torch.manual_seed(0)
    model = zoo.build("FCN", zoo.InputSpec(1, 28, 10, False), 30_000).model
    with pytest.warns(RuntimeWarning, match="MLflow at http://127.0.0.1:.* is unreachable"):
        metrics = train_run(model, data, settings, 1, out, tracker(job, tmp_path / "ids.json", {"dataset": "R"}, out),
                            log=lambda s: None)
    assert metrics["run_id"] is None and (out / "model.pt").exists()
    kinds = [r.split('"kind": "')[1].split('"')[0] for r in (out / tracking.PENDING).read_text().splitlines()]
    assert kinds[0] == "start" and kinds.count("metrics") == 3 and kinds[-1] == "end"
    # the server is back (here: a local store): the sync creates the experiment and the run
    store = tracking.default_uri(tmp_path / "server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert tracking.sync_pending(store, results, log=lambda s: None) == 1
    assert not (out / tracking.PENDING).exists()
    (run,) = tracking.find_runs(store, f"table1 [{results.resolve()}]")
    assert run.info.status == "FINISHED" and run.data.tags["dataset"] == "R"
    assert run.data.params["settings.lr"] == "0.01" and "test_error" in run.data.metrics


def test_a_store_lost_mid_run_is_resumed_by_the_sync(tmp_path):
    uri = tracking.default_uri(tmp_path)
    exp = tracking.ensure_experiments(uri, ["table1"], None)["table1"]
    run = tracking.Run(uri, exp, "R/CNN/seed1", pending=tmp_path / tracking.PENDING, experiment="table1")
    run.log_metrics({"loss": 1.0}, step=1)

    def down(*a, **k):
        raise ConnectionError("connection refused")

    run.client.log_batch = down
    with pytest.warns(RuntimeWarning, match="unreachable \\(connection refused\\)"):
        run.log_metrics({"loss": 0.5}, step=2)
    run.end("FINISHED")  # offline now: recorded, not sent
    assert tracking.find_runs(uri, "table1")[0].info.status == "RUNNING"
    assert tracking.sync_pending(uri, tmp_path, log=lambda s: None) == 1
    (synced,) = tracking.find_runs(uri, "table1")
    assert synced.info.run_id == run.run_id and synced.info.status == "FINISHED"
    assert synced.data.metrics["loss"] == 0.5


def test_a_run_left_running_by_a_killed_job_is_closed_when_the_job_reruns(tmp_path):
    uri = tracking.default_uri(tmp_path)
    exp = tracking.ensure_experiments(uri, ["table1"], None)["table1"]
    orphan = tracking.Run(uri, exp, "R/CNN/seed1")  # killed before its first checkpoint: never ended
    other = tracking.Run(uri, exp, "R/CNN/seed2")
    fresh = tracking.Run(uri, exp, "R/CNN/seed1")
    status = {r.info.run_id: r.info.status for r in tracking.find_runs(uri, "table1")}
    assert status == {orphan.run_id: "KILLED", other.run_id: "RUNNING", fresh.run_id: "RUNNING"}


def test_a_run_resumed_while_the_store_is_down_is_synced_into_the_same_run(tmp_path, monkeypatch):
    uri = tracking.default_uri(tmp_path)
    exp = tracking.ensure_experiments(uri, ["table1"], None)["table1"]
    first = tracking.Run(uri, exp, "R/CNN/seed1", pending=tmp_path / tracking.PENDING, experiment="table1")
    first.log_metrics({"loss": 1.0}, step=1)
    real = tracking.client

    def down(u):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(tracking, "client", down)
    with pytest.warns(RuntimeWarning, match="unreachable"):
        resumed = tracking.Run(uri, exp, "R/CNN/seed1", run_id=first.run_id, pending=tmp_path / tracking.PENDING,
                               experiment="table1")  # a restart from the checkpoint
    resumed.log_metrics({"loss": 0.25}, step=2)
    resumed.end("FINISHED")
    monkeypatch.setattr(tracking, "client", real)
    assert tracking.sync_pending(uri, tmp_path, log=lambda s: None) == 1
    (run,) = tracking.find_runs(uri, "table1")
    assert run.info.run_id == first.run_id and run.info.status == "FINISHED" and run.data.metrics["loss"] == 0.25


def test_a_run_logs_a_loadable_mlflow_model_and_its_dataset(tmp_path, monkeypatch):
    """The run page shows the model (pytorch flavour, with a signature) and the data set: loaded back with
    mlflow.pytorch.load_model, the model gives model.pt's outputs; offline, model.pt is kept as an artifact.
    MLflow's scan of the installed packages against the model's requirements (0.4 s a job) is skipped while
    the model is logged, and in place again after."""
    import mlflow.pytorch
    import torch
    from mlflow.utils import environment

    def scan(requirements):
        raise AssertionError(f"MLflow scanned the installed packages for {requirements}")

    monkeypatch.setattr(environment, "warn_dependency_requirement_mismatches", scan)

    from stn.experiments import tracker
    from stn.io import load_torch, write_json
    from stn.models import mnist as zoo
    from stn.train import as_input, train_run

    results = tmp_path / "results"
    ids = tracking.init_experiments(results, ["table1"], log=lambda s: None)
    write_json(tmp_path / "ids.json", ids)
    x, data, settings = _tiny_training()
    (tmp_path / "R.npz").write_bytes(b"the data set's file")
    job = {"experiment": "table1", "dataset": "R", "model": "ST-FCN-Aff", "seed": 1, "results": str(results)}
    out = results / "runs" / "table1" / "R" / "ST-FCN-Aff" / "seed1"
    torch.manual_seed(0)
    model = zoo.build("ST-FCN-Aff", zoo.InputSpec(1, 28, 10, False), 60_000).model
    tags = {"dataset": "R", "data_sha256": "ab" * 32}
    metrics = train_run(model, data, settings, 1, out, tracker(job, tmp_path / "ids.json", tags, out, tmp_path / "R.npz"),
                        log=lambda s: None)
    uri = tracking.tracking_uri(results)
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pytorch.load_model(f"runs:/{metrics['run_id']}/model")
    saved = zoo.build("ST-FCN-Aff", zoo.InputSpec(1, 28, 10, False), 60_000).model
    saved.load_state_dict(load_torch(out / "model.pt", "the test run")["state_dict"])
    batch = as_input(torch.from_numpy(x[:8]), torch.device("cpu"), False)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(batch), saved.eval()(batch))
    assert environment.warn_dependency_requirement_mismatches is scan
    run = tracking.client(uri).get_run(metrics["run_id"])
    assert run.info.status == "FINISHED"
    (entry,) = run.inputs.dataset_inputs
    assert entry.dataset.name == "R" and entry.dataset.digest == ("ab" * 32)[:36]
    assert str((tmp_path / "R.npz").resolve()) in entry.dataset.source
    info = mlflow.models.get_model_info(f"runs:/{metrics['run_id']}/model")
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 1, 28, 28]


def test_runs_nest_under_one_parent_run_per_table(tmp_path):
    """`stn mlflow-init` gives each table a parent run (found again, not duplicated, when it runs twice), and a
    run started from its file carries the parent's id, so the runs view nests it there."""
    import torch

    from stn.cli import main
    from stn.experiments import tracker
    from stn.io import read_json
    from stn.models import mnist as zoo
    from stn.train import train_run

    results = tmp_path / "results"
    ids_file = tmp_path / "table1.json"
    for _ in range(2):
        assert main(["mlflow-init", "--results", str(results), "--experiments", "table1", "--out", str(ids_file)]) == 0
    ids = read_json(ids_file)
    parent = ids["parents"]["table1"]
    c = tracking.client(tracking.tracking_uri(results))
    runs = c.search_runs([ids["table1"]], "")
    assert [r.info.run_id for r in runs] == [parent] and runs[0].data.tags["stn.role"] == "table"
    x, data, settings = _tiny_training()
    job = {"experiment": "table1", "dataset": "R", "model": "FCN", "seed": 1, "results": str(results)}
    out = results / "runs" / "table1" / "R" / "FCN" / "seed1"
    torch.manual_seed(0)
    model = zoo.build("FCN", zoo.InputSpec(1, 28, 10, False), 30_000).model
    metrics = train_run(model, data, settings, 1, out, tracker(job, ids_file, {"dataset": "R"}, out), log=lambda s: None)
    tags = c.get_run(metrics["run_id"]).data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert tags["mlflow.source.name"] == f"stn run --job {out / 'job.json'}" and tags["mlflow.user"]
    assert tags["mlflow.source.git.commit"] == tags["git_commit"] and tags["mlflow.source.type"] == "LOCAL"
