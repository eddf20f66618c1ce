"""Training: a killed run resumes to the same result; a failing run ends FAILED in MLflow."""
import contextlib
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from stn import tracking
from stn.models import mnist as zoo
from stn.train import TrainSettings, train_run


def tiny_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(y):
        x[i, 2 * label : 2 * label + 6, 4:24] = 255  # a learnable bar per class
    return {"x_train": x, "y_train": y, "x_val": x[:16], "y_val": y[:16], "x_test": x[16:32], "y_test": y[16:32]}


SETTINGS = dict(iterations=20, batch_size=16, lr=0.01, momentum=0.9, lr_step=50_000, lr_gamma=0.1, weight_decay=0.0,
                loc_lr_mult=1.0, eval_every=5, eval_samples=16,
                checkpoint_every=5, channels_last=False, device="cpu")


def model():
    torch.manual_seed(0)
    return zoo.build("ST-FCN-Aff", zoo.InputSpec(1, 28, 10, False), 120_000).model


def train_killed_at(call: int, data, settings, out_dir, monkeypatch) -> None:
    """Train seed 1 into out_dir until the `call`-th loss computation, which raises KeyboardInterrupt (a kill)."""
    calls = {"n": 0}
    real = F.cross_entropy

    def dies(*a, **k):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **k)

    monkeypatch.setattr(F, "cross_entropy", dies)
    with pytest.raises(KeyboardInterrupt):
        train_run(model(), data, settings, seed=1, out_dir=out_dir, log=lambda s: None)
    monkeypatch.setattr(F, "cross_entropy", real)


def test_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    data = tiny_data()
    settings = TrainSettings(**{**SETTINGS, "eval_every": 4})  # the checkpoint at 10 falls between evaluations
    full = train_run(model(), data, settings, seed=1, out_dir=tmp_path / "full", log=lambda s: None)
    train_killed_at(13, data, settings, tmp_path / "resumed", monkeypatch)
    assert (tmp_path / "resumed" / "checkpoint.pt").exists()
    logs = []
    resumed = train_run(model(), data, settings, seed=1, out_dir=tmp_path / "resumed", log=logs.append)
    assert any("resuming from iteration 10" in line for line in logs)
    assert resumed["test_error"] == full["test_error"]
    a = torch.load(tmp_path / "full" / "model.pt")["state_dict"]
    b = torch.load(tmp_path / "resumed" / "model.pt")["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()
    # the logged curve (its running training loss included) and the model file are the uninterrupted run's
    curve = lambda d: [{k: v for k, v in p.items() if k != "seconds"} for p in json.loads((d / "curve.json").read_text())]  # noqa: E731
    assert curve(tmp_path / "resumed") == curve(tmp_path / "full")
    assert (tmp_path / "resumed" / "model.pt").read_bytes() == (tmp_path / "full" / "model.pt").read_bytes()


def test_learns_the_toy_task(tmp_path):
    settings = TrainSettings(**{**SETTINGS, "iterations": 60})
    metrics = train_run(model(), tiny_data(), settings, seed=0, out_dir=tmp_path, log=lambda s: None)
    assert metrics["test_error"] < 50


def test_failed_run_ends_failed(tmp_path, monkeypatch):
    uri = tracking.default_uri(tmp_path)
    exp = tracking.ensure_experiments(uri, ["table1"], None)["table1"]
    monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(FloatingPointError, match="diverged at iteration 1"):
        train_run(model(), tiny_data(), TrainSettings(**SETTINGS), 0, tmp_path / "run",
                  tracker_factory=lambda rid: tracking.Run(uri, exp, "boom", rid), log=lambda s: None)
    runs = tracking.find_runs(uri, "table1")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_unknown_setting_is_named():
    with pytest.raises(ValueError, match="unknown training settings \\['iteratons'\\]"):
        TrainSettings.from_dict({"iteratons": 5})


def test_adam_learns_the_toy_task_and_a_wrong_optimizer_is_named(tmp_path):
    settings = TrainSettings.from_dict({**SETTINGS, "iterations": 60, "lr": 0.003, "optimizer": "adam"})
    metrics = train_run(model(), tiny_data(), settings, seed=0, out_dir=tmp_path, log=lambda s: None)
    assert metrics["test_error"] < 50
    with pytest.raises(ValueError, match="optimizer 'adagrad' is not one of \\['adam', 'sgd'\\]"):
        TrainSettings.from_dict({**SETTINGS, "optimizer": "adagrad"})


def test_initial_weights_follow_the_seed_across_processes():
    """torch's start-up seed differs per process, so a run's seed must set the initial weights."""
    import subprocess
    import sys

    code = (
        "import hashlib, sys; from stn.experiments.classification import build_model; "
        "from stn.models import mnist as zoo; "
        "t = {'R': {'target': 120000, 'models': {'ST-CNN-Aff': {'params': zoo.build('ST-CNN-Aff', "
        "zoo.InputSpec(1, 28, 10, False), 120000).params}}}}; "
        "m = build_model('R', 'ST-CNN-Aff', t, int(sys.argv[1])).model; "
        "print(hashlib.sha256(b''.join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest())"
    )
    digest = lambda seed: subprocess.run([sys.executable, "-c", code, str(seed)], capture_output=True, text=True,  # noqa: E731
                                         check=True).stdout.strip()
    first = digest(1)
    assert first == digest(1)
    assert first != digest(2)


def test_an_exploding_loss_stops_naming_the_step_and_the_rate(tmp_path):
    from stn.train import Diverged

    settings = TrainSettings(**{**SETTINGS, "lr": 1e6, "momentum": 0.9})
    with pytest.raises(Diverged, match=r"training diverged at iteration \d+: loss .* at learning rate 1e\+06; lower"):
        train_run(model(), tiny_data(), settings, seed=0, out_dir=tmp_path, log=lambda s: None)
    assert not (tmp_path / "metrics.json").exists()


def test_a_deferred_loss_watch_trains_the_same_run_and_names_the_same_divergence(tmp_path, monkeypatch):
    """On a GPU the loss is read only at check points (LossWatch): forced on the CPU here, the curve and weights
    are bitwise the per-step ones, and an exploding run names the same first diverged step, loss and rate, though
    its check comes later (nothing between steps 1 and 20 checks here but CHECK_EVERY, set to 7)."""
    import stn.train as train
    from stn.train import Diverged

    def outcome(out_dir, **extra):
        settings = TrainSettings(**{**SETTINGS, "eval_every": 20, "checkpoint_every": 20, **extra})
        try:
            train_run(model(), tiny_data(), settings, seed=1, out_dir=out_dir, log=lambda s: None)
        except Diverged as exc:
            return str(exc)
        return (json.loads((out_dir / "curve.json").read_text())[-1]["train_loss"],
                (out_dir / "model.pt").read_bytes())

    # the rate tripled every step: the loss explodes a few steps in, at a rate of its own
    eager = [outcome(tmp_path / "eager"), outcome(tmp_path / "eager-x", lr=1.0, lr_step=1, lr_gamma=3.0)]
    monkeypatch.setattr(train, "DEFERRED_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(train, "CHECK_EVERY", 7)
    deferred = [outcome(tmp_path / "deferred"), outcome(tmp_path / "deferred-x", lr=1.0, lr_step=1, lr_gamma=3.0)]
    assert deferred[0] == eager[0]
    message = eager[1]
    assert message.startswith("training diverged at iteration ") and deferred[1] == message
    it = int(message.split("iteration ")[1].split(":")[0])
    # read at the check of step 7 together with steps before it (step 1 is read at once: it sets the threshold)
    assert 2 < it < 7, "the diverged step must be read at the first check, after other steps"
    assert f"at learning rate {3.0 ** (it - 1):g};" in message  # that step's own rate


def test_only_a_gpu_run_moves_its_training_set_and_only_one_that_fits(monkeypatch):
    import stn.train as train
    from stn.train import device_resident

    x = torch.zeros(4, 8, 8, dtype=torch.uint8)
    assert device_resident(x, torch.device("cpu")) is x
    monkeypatch.setattr(train, "RESIDENT_BYTES", 255)  # x holds 256 bytes: too large, so not moved (no GPU needed)
    assert device_resident(x, torch.device("cuda")) is x
    rendered = object()  # a set that renders its samples on demand
    assert device_resident(rendered, torch.device("cuda")) is rendered


@pytest.mark.cuda
def test_an_exploding_gpu_run_names_its_first_diverged_step_as_the_cpu_does(tmp_path):
    """On a GPU the set lives on the device and the loss is read at check points; the divergence named is still the
    first step's, with its rate (the same schedule as the CPU's, which it need not match in value)."""
    from stn.train import Diverged

    settings = TrainSettings(**{**SETTINGS, "lr": 1.0, "lr_step": 1, "lr_gamma": 3.0, "device": "cuda"})
    with pytest.raises(Diverged, match=r"training diverged at iteration (\d+): loss .* at learning rate") as info:
        train_run(model(), tiny_data(), settings, seed=1, out_dir=tmp_path, log=lambda s: None)
    it = int(str(info.value).split("iteration ")[1].split(":")[0])
    rate = float(str(info.value).split("learning rate ")[1].split(";")[0])
    assert rate == pytest.approx(3.0 ** (it - 1))


@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_and_threads_give_bitwise_equal_weights(tmp_path, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        settings = TrainSettings(**{**SETTINGS, "iterations": 12, "batch_size": 32, "channels_last": True})
        files = []
        for r in range(2):
            torch.manual_seed(0)
            net = zoo.build("ST-CNN-Aff", zoo.InputSpec(1, 28, 10, False), 120_000).model
            train_run(net, tiny_data(128), settings, 0, tmp_path / str(r), log=lambda s: None)
            files.append((tmp_path / str(r) / "model.pt").read_bytes())
        assert files[0] == files[1]
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_compiled_steps_follow_the_eager_loss_curve(tmp_path):
    """compile: default (Inductor, the custom sampler ops traced into the graph) trains the same 20 steps as
    eager: every step's loss agrees to float rounding, Inductor being free to reorder sums."""
    import torch._dynamo

    data = tiny_data()
    curves = {}
    for mode in ("none", "default"):
        torch._dynamo.reset()
        settings = TrainSettings(**{**SETTINGS, "eval_every": 1, "compile": mode})
        logs = []
        train_run(model(), data, settings, seed=1, out_dir=tmp_path / mode, log=logs.append)
        assert not any("training eagerly" in line for line in logs)
        curves[mode] = [p["train_loss"] for p in json.loads((tmp_path / mode / "curve.json").read_text())]
        if mode == "default":
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    assert len(curves["none"]) == 20 and curves["none"][-1] < curves["none"][0]
    np.testing.assert_allclose(curves["default"], curves["none"], rtol=1e-4)


@pytest.mark.cuda
def test_cuda_graph_steps_follow_the_eager_loss_curve(tmp_path):
    """compile: reduce-overhead on a GPU (each step replays one CUDA-graph capture) trains the eager curve."""
    import torch._dynamo

    data = tiny_data()
    curves = {}
    for mode in ("none", "reduce-overhead"):
        torch._dynamo.reset()
        settings = TrainSettings(**{**SETTINGS, "eval_every": 1, "compile": mode, "device": "cuda"})
        logs = []
        train_run(model(), data, settings, seed=1, out_dir=tmp_path / mode, log=logs.append)
        assert not any("training eagerly" in line for line in logs)
        curves[mode] = [p["train_loss"] for p in json.loads((tmp_path / mode / "curve.json").read_text())]
    assert len(curves["none"]) == 20
    np.testing.assert_allclose(curves["reduce-overhead"], curves["none"], rtol=1e-3)


@pytest.mark.cuda
@pytest.mark.parametrize("optimizer,precision", [("sgd", "fp32"), ("adam", "fp32"), ("sgd", "bf16")])
def test_whole_step_cuda_graphs_follow_the_eager_loss_curve(tmp_path, optimizer, precision):
    """compile: graph on a GPU (gather, forward, backward and optimiser step recorded once, replayed each step, the
    rate dropping mid-run) records without falling back and trains the eager curve and rates."""
    data = tiny_data()
    curves = {}
    for mode in ("none", "graph"):
        settings = TrainSettings(**{**SETTINGS, "eval_every": 1, "compile": mode, "device": "cuda", "lr_step": 8,
                                    "lr_gamma": 0.5, "optimizer": optimizer, "precision": precision,
                                    "lr": 0.01 if optimizer == "sgd" else 0.003})
        logs = []
        train_run(model(), data, settings, seed=1, out_dir=tmp_path / mode, log=logs.append)
        assert not any("training eagerly" in line for line in logs), logs
        curves[mode] = json.loads((tmp_path / mode / "curve.json").read_text())
    assert [p["lr"] for p in curves["graph"]] == [p["lr"] for p in curves["none"]]
    assert len(curves["none"]) == 20 and curves["none"][-1]["train_loss"] < curves["none"][0]["train_loss"]
    np.testing.assert_allclose([p["train_loss"] for p in curves["graph"]], [p["train_loss"] for p in curves["none"]],
                               rtol=1e-3)


def test_a_failing_compile_falls_back_to_eager(tmp_path, monkeypatch):
    """Where torch.compile cannot build the step (no compiler, an unsupported op), the run says so once and
    trains eagerly: the same curve as compile: none."""
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("backend compiler failed\nmore detail")

    data = tiny_data()
    eager = train_run(model(), data, TrainSettings(**SETTINGS), seed=1, out_dir=tmp_path / "eager", log=lambda s: None)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: Broken())
    logs = []
    fell_back = train_run(model(), data, TrainSettings(**{**SETTINGS, "compile": "default"}), seed=1,
                          out_dir=tmp_path / "compiled", log=logs.append)
    assert [line for line in logs if "training eagerly" in line] == [
        "torch.compile (mode default) failed on the first step (RuntimeError: backend compiler failed); training eagerly"]
    assert fell_back["test_error"] == eager["test_error"]
    curve = lambda d: [p["train_loss"] for p in json.loads((d / "curve.json").read_text())]  # noqa: E731
    assert curve(tmp_path / "compiled") == curve(tmp_path / "eager")


def test_a_wrong_compile_mode_is_named():
    with pytest.raises(ValueError, match="compile 'max' is not one of"):
        TrainSettings.from_dict({**SETTINGS, "compile": "max"})


def test_channels_last_applies_to_models_with_convolutions_only():
    from stn.train import wants_channels_last

    spec = zoo.InputSpec(2, 42, 19, True)
    cnn, st_fcn = (zoo.build(name, spec, 240_000).model for name in ("CNN", "2xST-FCN-Aff"))
    assert wants_channels_last(cnn, True) and not wants_channels_last(cnn, False)
    assert not wants_channels_last(st_fcn, True)  # no convolution: channels-first, no copies


def test_evaluation_in_small_batches_on_the_cpu_gives_the_same_predictions():
    from stn.train import eval_batch_size, predict

    assert eval_batch_size(torch.device("cpu")) == 32
    assert (eval_batch_size(torch.device("cuda")), eval_batch_size(torch.device("cuda"), rendered=True)) == (500, 64)
    torch.manual_seed(0)
    cnn = zoo.build("CNN", zoo.InputSpec(1, 28, 10, False), 120_000).model
    with torch.no_grad():
        cnn[-1].weight.mul_(100)  # spread the untrained logits so that the predictions differ between images
    x = torch.randint(0, 256, (70, 28, 28), dtype=torch.uint8)  # 70: the last batch of 32 is short
    whole = predict(cnn, x, torch.device("cpu"), False, batch=500)
    assert whole.shape == (70,) and len(whole.unique()) > 1
    assert torch.equal(predict(cnn, x, torch.device("cpu"), False, batch=eval_batch_size(torch.device("cpu"))), whole)


def test_loc_warmup_ramps_only_the_localisation_rate():
    from stn.modules import param_groups
    from stn.train import make_scheduler

    settings = TrainSettings(**{**SETTINGS, "lr": 0.1, "loc_lr_mult": 0.5, "lr_step": 4, "loc_warmup": 3})
    net = model()
    opt = torch.optim.SGD(param_groups(net, settings.lr, settings.loc_lr_mult), lr=settings.lr)
    sched = make_scheduler(opt, settings)
    rates = []
    for _ in range(6):
        rates.append([round(g["lr"], 6) for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [g["name"] for g in opt.param_groups] == ["main", "localisation"]
    # main: 0.1 until the drop at 4; localisation: 0.05 ramped over 3 steps from 0, then dropped with the rest
    assert rates == [[0.1, 0.0], [0.1, 0.016667], [0.1, 0.033333], [0.1, 0.05], [0.01, 0.005], [0.01, 0.005]]
    assert "loc_warmup" not in TrainSettings(**SETTINGS).to_dict()  # a spec without a ramp reads as before


def test_start_zoom_starts_every_transformer_zoomed_in_and_a_resumed_run_keeps_its_weights(tmp_path, monkeypatch):
    from stn import SpatialTransformer

    data = tiny_data()
    one = TrainSettings(**{**SETTINGS, "iterations": 1, "start_zoom": 0.5, "loc_lr_mult": 1e-9})
    train_run(model(), data, one, seed=1, out_dir=tmp_path / "one", log=lambda s: None)
    bias = [v for k, v in torch.load(tmp_path / "one" / "model.pt")["state_dict"].items() if k.endswith("regressor.bias")]
    assert len(bias) == sum(isinstance(m, SpatialTransformer) for m in model().modules()) > 0
    for b in bias:  # θ after one step at a vanishing rate: still 0.5 × the identity
        torch.testing.assert_close(b, 0.5 * torch.tensor([1.0, 0, 0, 0, 1, 0]), atol=1e-6, rtol=0)
    assert "start_zoom" not in TrainSettings(**SETTINGS).to_dict()  # a spec without it reads as before
    settings = TrainSettings(**{**SETTINGS, "iterations": 12, "start_zoom": 0.7})
    full = train_run(model(), data, settings, seed=1, out_dir=tmp_path / "full", log=lambda s: None)
    train_killed_at(8, data, settings, tmp_path / "resumed", monkeypatch)
    resumed = train_run(model(), data, settings, seed=1, out_dir=tmp_path / "resumed", log=lambda s: None)
    assert (tmp_path / "resumed" / "model.pt").read_bytes() == (tmp_path / "full" / "model.pt").read_bytes()
    assert resumed["test_error"] == full["test_error"]
    assert full["start_zoom"] == 0.7  # recorded for the transforms tables' "(from 0.70)"


def test_start_zoom_zooms_only_the_transformer_on_the_input_of_st_cnn_multi():
    """ST-CNN Multi's later transformers warp feature maps, where a zoom would crop features, not the picture."""
    from stn import SpatialTransformer
    from stn.models.svhn import build
    from stn.train import input_transformers

    multi = build("ST-CNN-Multi", 1, 64, width=0.1, fc=16, loc_filters=4)
    assert len(multi.sts) == 4 and input_transformers(multi) == [multi.sts["0"]]
    assert input_transformers(build("CNN", 1, 64, width=0.1, fc=16)) == []
    one = model()
    assert input_transformers(one) == [m for m in one.modules() if isinstance(m, SpatialTransformer)] != []


def test_a_warmed_up_run_resumes_to_identical_weights_and_holds_the_window_first(tmp_path, monkeypatch):
    data = tiny_data()
    settings = TrainSettings(**{**SETTINGS, "iterations": 12, "loc_warmup": 8})
    full = train_run(model(), data, settings, seed=1, out_dir=tmp_path / "full", log=lambda s: None)
    train_killed_at(8, data, settings, tmp_path / "resumed", monkeypatch)
    resumed = train_run(model(), data, settings, seed=1, out_dir=tmp_path / "resumed", log=lambda s: None)
    assert resumed["test_error"] == full["test_error"]
    assert (tmp_path / "resumed" / "model.pt").read_bytes() == (tmp_path / "full" / "model.pt").read_bytes()
    # one step at rate 0 leaves the localisation net where it started and moves the classifier
    one = TrainSettings(**{**SETTINGS, "iterations": 1, "loc_warmup": 8, "momentum": 0.0})
    before = model()
    train_run(before, data, one, seed=1, out_dir=tmp_path / "one", log=lambda s: None)
    after = torch.load(tmp_path / "one" / "model.pt")["state_dict"]
    start = model().state_dict()
    loc = [k for k in start if ".localisation." in k or ".regressor." in k]
    assert loc and all(torch.equal(after[k], start[k]) for k in loc)
    assert any(not torch.equal(after[k], start[k]) for k in start if k.startswith("classifier."))


class ReplayingRecorder:
    """A CPU stand-in for stn.graphs.CudaRecorder: each 'replay' re-runs the recorded step (with the rates read from
    their tensors, as in the recording) into the recording's own output, so compile: graph's host-side logic (warm-up,
    inputs copied in, rates refreshed) trains for real. `fail` makes the recording raise, as a capture-unsafe op does.
    Given the optimiser, a replay sets its groups' float rates to NaN around the step, as a recording that baked a
    float in would train at a stale rate: only rates read from the tensors keep the step finite."""

    def __init__(self, fail: bool = False, opt=None):
        self.fail, self.opt, self.records, self.replays, self.warms = fail, opt, 0, 0, 0

    def warm(self, fn):
        self.warms += 1
        return fn()

    def record(self, fn):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\ndetail")
        self.records += 1
        out = torch.zeros(())

        def replay():
            self.replays += 1
            floats = [g["lr"] for g in self.opt.param_groups] if self.opt else []
            for g in self.opt.param_groups if self.opt else []:
                g["lr"] = float("nan")
            out.copy_(fn())
            for g, lr in zip(self.opt.param_groups if self.opt else [], floats):
                g["lr"] = lr

        return replay, out


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("resident", [True, False])
def test_a_graphed_step_trains_the_eager_steps_with_the_schedule_s_rates(optimizer, resident):
    """compile: graph replays one recording per step: with the inputs copied in and a rate that drops mid-run (and
    a localisation group of its own) refilled before the replay, its losses and weights are the eager steps'
    (bitwise for SGD; Adam reads a float32 rate, not a double: losses 1e-6 apart, weights 1e-4)."""
    from stn.graphs import WARMUP
    from stn.modules import param_groups
    from stn.train import Batches, TrainStep, batch_fetch, make_optimizer, make_scheduler

    data = tiny_data()
    x_train, y_train = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    fetch = batch_fetch(x_train, y_train, torch.device("cpu"), False)

    def train(mode, recorder=None):  # recorder: a function of the optimiser
        settings = TrainSettings(**{**SETTINGS, "optimizer": optimizer, "lr": 0.01 if optimizer == "sgd" else 0.003,
                                    "loc_lr_mult": 0.5, "lr_step": 4, "lr_gamma": 0.5, "compile": mode})
        net = model()
        opt = make_optimizer(settings.optimizer, param_groups(net, settings.lr, settings.loc_lr_mult), settings.lr,
                             settings.momentum)
        sched, batches = make_scheduler(opt, settings), Batches(len(y_train), 16, 1)
        recorder = recorder and recorder(opt)
        step = TrainStep(net, opt, fetch, settings, torch.device("cpu"), resident, log=pytest.fail, recorder=recorder)
        losses = []
        for _ in range(12):
            losses.append(step(batches.next()).item())
            sched.step()
        return losses, [p.detach().clone() for p in net.parameters()], opt, recorder

    eager, eager_weights, *_ = train("none")
    graphed, graphed_weights, opt, recorder = train("graph", lambda opt: ReplayingRecorder(opt=opt))
    assert (recorder.warms, recorder.records, recorder.replays) == (WARMUP, 1, 12 - WARMUP)
    assert all(isinstance(g["lr"], float) for g in opt.param_groups), "the schedule keeps its floats"
    assert len({g["lr"] for g in opt.param_groups}) == 2 and eager[-1] < eager[0]
    exact = optimizer == "sgd"
    np.testing.assert_allclose(graphed, eager, rtol=0 if exact else 1e-6, atol=0)
    for a, b in zip(graphed_weights, eager_weights):
        torch.testing.assert_close(a, b, rtol=0 if exact else 1e-4, atol=0 if exact else 1e-4)


def test_a_graph_run_records_once_and_falls_back_to_eager_where_it_cannot_record(tmp_path, monkeypatch):
    """train_run under compile: graph trains the eager run (curve and weights bitwise, with SGD) through one recording;
    where recording fails, and on a device without CUDA graphs, it says so once and trains eagerly, the same run."""
    import stn.graphs as graphs

    data = tiny_data()
    settings = TrainSettings(**{**SETTINGS, "lr_step": 6, "lr_gamma": 0.5})

    def outcome(name, mode, recorder):
        if recorder is not None:
            monkeypatch.setattr(graphs, "recorder_for", lambda device: recorder)
        logs = []
        train_run(model(), data, TrainSettings(**{**settings.to_dict(), "compile": mode}), seed=1,
                  out_dir=tmp_path / name, log=logs.append)
        curve = [(p["train_loss"], p["lr"]) for p in json.loads((tmp_path / name / "curve.json").read_text())]
        return curve, (tmp_path / name / "model.pt").read_bytes(), [line for line in logs if "graph" in line]

    eager = outcome("eager", "none", None)
    cpu = outcome("cpu", "graph", None)  # the real recorder_for: none on a CPU
    assert cpu[:2] == eager[:2]
    assert cpu[2] == ["compile: graph records CUDA graphs, which the cpu has not; training eagerly"]
    recorder = ReplayingRecorder()
    replayed = outcome("replayed", "graph", recorder)
    assert replayed[:2] == eager[:2] and replayed[2] == [] and recorder.records == 1
    assert recorder.replays == settings.iterations - graphs.WARMUP
    failing = outcome("failing", "graph", ReplayingRecorder(fail=True))
    assert failing[:2] == eager[:2]
    assert failing[2] == ["compile: graph could not record the training step (RuntimeError: operation not permitted "
                          "when stream is capturing); training eagerly"]


def test_a_killed_graph_run_resumes_to_the_eager_run_s_weights(tmp_path, monkeypatch):
    """Under compile: graph (the stand-in recorder), a run killed at step 13 checkpointed the schedule's float rates,
    not the recording's tensors, and resumes (warming up and recording afresh) to the uninterrupted eager run's
    curve and model file."""
    import stn.graphs as graphs

    data = tiny_data()
    settings = TrainSettings(**{**SETTINGS, "eval_every": 4, "lr_step": 6, "lr_gamma": 0.5})
    train_run(model(), data, settings, seed=1, out_dir=tmp_path / "eager", log=lambda s: None)
    graph = TrainSettings(**{**settings.to_dict(), "compile": "graph"})
    recorders = []
    monkeypatch.setattr(graphs, "recorder_for", lambda device: recorders.append(ReplayingRecorder()) or recorders[-1])
    train_killed_at(13, data, graph, tmp_path / "graph", monkeypatch)
    saved = torch.load(tmp_path / "graph" / "checkpoint.pt", weights_only=False)
    assert saved["iteration"] == 10 and all(type(g["lr"]) is float for g in saved["optimizer"]["param_groups"])
    train_run(model(), data, graph, seed=1, out_dir=tmp_path / "graph", log=lambda s: None)
    assert [r.records for r in recorders] == [1, 1]
    curve = lambda d: [{k: v for k, v in p.items() if k != "seconds"} for p in json.loads((d / "curve.json").read_text())]  # noqa: E731
    assert curve(tmp_path / "graph") == curve(tmp_path / "eager")
    assert (tmp_path / "graph" / "model.pt").read_bytes() == (tmp_path / "eager" / "model.pt").read_bytes()


class HostRead(AssertionError):
    """A training step read a tensor's value back to Python, or stn's code built a tensor from host data."""


@contextlib.contextmanager
def no_host_reads():
    """While the context is open, HostRead is raised by the Tensor methods that bring a value to the host (on a GPU:
    wait for the device; inside a CUDA-graph recording: fail, or bake the value in), and by the constructors that
    copy host data to a tensor when stn's own code calls them (on a GPU a pageable host-to-device copy, which a
    recording refuses: session 44's H200 run of `w.new_tensor(eps)` in the projective divide). torch's own callers
    pass (the optimisers keep their step counts in host tensors on purpose)."""
    reads = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")
    saved = [(torch.Tensor, name, getattr(torch.Tensor, name)) for name in (*reads, "new_tensor")]
    saved += [(torch, name, getattr(torch, name)) for name in ("tensor", "as_tensor", "from_numpy")]

    def forbid(name):
        def read(self, *args, **kwargs):
            raise HostRead(f"Tensor.{name} in a training step")
        return read

    def forbid_in_stn(name, build):
        def construct(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller == "stn" or caller.startswith("stn."):
                raise HostRead(f"{name} from host data in {caller}, in a training step")
            return build(*args, **kwargs)
        return construct

    try:
        for owner, name, method in saved:
            setattr(owner, name, forbid(name) if name in reads else forbid_in_stn(name, method))
        with NoDataDependentShapes():
            yield
    finally:
        for owner, name, method in saved:
            setattr(owner, name, method)


class NoDataDependentShapes(TorchDispatchMode):
    """Raises HostRead at every op (forward or backward) whose output's shape depends on the values, which on a GPU
    reads a count back to the host (and fails a CUDA-graph recording): nonzero, masked_select, unique, boolean
    indexing and the like. Sees inside ops that Python never calls by name (autograd's backward, custom ops)."""

    FORBIDDEN = {"nonzero", "masked_select", "_unique", "_unique2", "unique_dim", "unique_consecutive", "bincount",
                 "repeat_interleave", "_local_scalar_dense", "equal", "is_nonzero", "masked_scatter", "histc"}
    MASKED = {"index", "index_put", "index_put_", "_index_put_impl_"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        indices = args[1] if name in self.MASKED and len(args) > 1 else ()  # (self, indices, ...)
        masked = any(isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8) for t in indices)
        if name in self.FORBIDDEN or masked:
            raise HostRead(f"aten.{name}{' with a boolean mask' if masked else ''} in a training step: its output's "
                           "shape depends on the values")
        return func(*args, **(kwargs or {}))


def _every_trained_model():
    """(label, model, input shape, labels (N,) or (N, P), classes) for a model of each kind every table trains, small."""
    from stn.experiments import finegrained, multidigit, volumetric
    from stn.experiments.classification import input_spec
    from stn.paper import registry

    for dataset, names in (("RTS", registry.TABLE1_MODELS), ("ADD", ("2xST-FCN-Aff", "2xST-FCN-TPS"))):
        spec = input_spec(dataset)
        for name in names:
            shape = (spec.channels, spec.size, spec.size) if spec.channels > 1 else (spec.size, spec.size)
            yield f"{dataset} {name}", zoo.build(name, spec, 240_000).model, shape, (), spec.classes
    net2 = {"width": 0.1667, "fc": 16, "loc_filters": 4, "dropout": 0.5, "init": "he"}
    for name in ("CNN", "ST-CNN-Single", "ST-CNN-Multi"):
        yield f"SEQ64 {name}", multidigit.build_model("SEQ64", name, net2, 0), (64, 64), (5,), 11
    net3 = {"backbone": "small", "width": 4, "loc_channels": 8, "loc_fc": 8, "dropout": 0.5}
    for name in ("CNN", "2xST-CNN", "4xST-CNN"):
        yield f"PARTS48 {name}", finegrained.build_model("PARTS48", name, net3, 0), (48, 48), (), 25
    for name in ("ST3D", "baseline"):
        yield f"MNIST3D {name}", volumetric.build(name, widths=4, seed=0)[0], (1, 60, 60, 60), (), 10


def _step_every_trained_model(device: torch.device, precision: str, guard) -> list[str]:
    """Two training steps (TrainStep: gather, forward, backward, optimiser step; SGD, then Adam) of every model of
    `_every_trained_model` on `device`, each step inside `guard()`; returns their labels."""
    from stn.modules import param_groups
    from stn.train import TrainStep, batch_fetch, make_optimizer

    seen = []
    for label, net, shape, label_shape, classes in _every_trained_model():
        net = net.to(device)
        g = torch.Generator().manual_seed(0)
        x_set = torch.randint(0, 256, (8, *shape), generator=g, dtype=torch.uint8)
        y_set = torch.randint(0, classes, (8, *label_shape), generator=g).to(device)
        x_set = (x_set.float() / 255 if len(shape) == 4 else x_set).to(device)  # the 3-D sets are rendered floats
        fetch = batch_fetch(x_set, y_set, device, False)
        for optimizer in ("sgd", "adam"):
            settings = TrainSettings(**{**SETTINGS, "optimizer": optimizer, "precision": precision})
            opt = make_optimizer(optimizer, param_groups(net, 0.01, 0.5), 0.01, 0.9)
            step = TrainStep(net, opt, fetch, settings, device, True, log=pytest.fail)
            for i in range(2):  # the second step too: the optimiser's state exists from the first on
                idx = torch.arange(i * 4, i * 4 + 4, device=device)
                with guard():
                    loss = step(idx)
                assert loss.shape == (), label
        seen.append(label)
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_training_step_of_any_model_reads_a_value_back_to_the_host(precision):
    """What compile: graph records, and what an eager GPU step must not wait on: the step of every kind of model the
    tables train (Tables 1-4 and the 3-D transformer; gather, forward, backward, optimiser step; SGD and Adam) reads
    no tensor's value into Python and runs no op whose output's shape depends on the values (checked by mutation:
    a data-dependent `if`, or a boolean-mask index, in SpatialTransformer fails it)."""
    assert len(_step_every_trained_model(torch.device("cpu"), precision, no_host_reads)) == 18


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_gpu_training_step_of_any_model_waits_for_the_device(precision):
    """On a GPU the same steps make no synchronising CUDA call either (torch's sync debug mode set to error: it
    also sees the waits inside ops, which the CPU test cannot), besides passing the CPU test's checks."""
    @contextlib.contextmanager
    def no_syncs():
        torch.cuda.set_sync_debug_mode("error")
        try:
            with no_host_reads():
                yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    assert len(_step_every_trained_model(torch.device("cuda"), precision, no_syncs)) == 18
