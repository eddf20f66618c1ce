"""Training one (data set, model, seed) run: SGD per appendix A.4 (or Adam), periodic evaluation, resumable.

A run writes into its own directory: checkpoint.pt every `checkpoint_every` iterations (a killed
job resumes from it, MLflow run included), curve.json, model.pt and, last, metrics.json, which
is the file the pipeline treats as "done". Every write is atomic.
"""
from __future__ import annotations

import bisect
import ctypes
import functools
import hashlib
import io
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import graphs, ops
from .io import atomic_path, load_torch, write_json
from .modules import SpatialTransformer, param_groups
from .settings import OPTIMIZER_NAMES, TrainSettings, late_fall  # noqa: F401  (TrainSettings is re-exported)


EXPLODE = 100.0  # a loss above EXPLODE × max(first loss, 1) counts as divergence
FIRST_LOG_S, LOG_EVERY_S = 5.0, 30.0  # progress lines: the first after 5 s (a rate and eta to go by), then every 30 s


class Diverged(FloatingPointError):
    """Training diverged: a non-finite loss, or one that exploded past EXPLODE times its first value."""


DEFERRED_DEVICES = ("cuda",)  # where LossWatch reads the loss only at check points
CHECK_EVERY = 100  # there, the training loop checks for divergence at least this often (steps)
RESIDENT_BYTES = 1 << 30  # a training set up to this size is moved to the GPU once (see device_resident)


class LossWatch:
    """The training loss of each step: the running sum for the curve, the last value for the progress line and
    the divergence test (a non-finite loss, or one past EXPLODE × max(first loss, 1)). On the CPU reading a loss
    costs nothing, so each is read and tested as it is added, as `loss.item()`. On a GPU reading one waits for the
    device to finish the step, which would stall the host every step; there the losses are kept as tensors (no
    work per step) and read together, one wait for all, when the loop calls `check()` (at its eval, progress and
    checkpoint points and every CHECK_EVERY steps), which raises for the first diverged step with its iteration,
    loss and learning rate. Either way the sums are the same float64 additions in the same order."""

    def __init__(self, device: torch.device, first: float | None = None, running: float = 0.0, seen: int = 0):
        self.deferred = device.type in DEFERRED_DEVICES
        self.total, self.seen, self.first, self.last = running, seen, first, None
        self.pending: list[tuple[int, float, torch.Tensor]] = []  # (iteration, learning rate, loss) not yet read

    def add(self, it: int, loss: torch.Tensor, lr: float) -> None:
        """Step `it`'s loss, trained at learning rate `lr`."""
        self.pending.append((it, lr, loss.detach()))
        if not self.deferred or self.first is None:  # the first loss sets the threshold
            self.check()

    def check(self) -> None:
        """Read the losses added since the last check; raise Diverged for the first diverged one."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        losses = [t for _, _, t in pending]
        values = [losses[0].item()] if len(losses) == 1 else torch.stack(losses).tolist()
        for (it, lr, _), value in zip(pending, values):
            self.first = value if self.first is None else self.first
            if not math.isfinite(value) or value > EXPLODE * max(self.first, 1.0):
                raise Diverged(f"training diverged at iteration {it}: loss {value:.4g} (first {self.first:.4g}) at "
                               f"learning rate {lr:g}; lower the learning rate (the table's train.lr, or a "
                               "train_overrides entry for this run)")
            self.total += value
            self.seen += 1
            self.last = value

    def mean(self) -> float:
        """The mean loss since the last call (or the start), and a fresh sum."""
        self.check()
        mean = self.total / self.seen
        self.total, self.seen = 0.0, 0
        return mean

    def running(self) -> tuple[float, int]:
        """(the loss summed since the last mean, steps in it), for a checkpoint."""
        self.check()
        return self.total, self.seen

    def last_value(self) -> float:
        self.check()
        return self.last


# Both optimisers run fused: one kernel per parameter instead of a handful of element-wise ops each
# (Adam's step 420 -> 145 µs on the CPU for a Table 4 ST-FCN's 14 tensors). The same update, rounded
# differently (2e-6 apart after 50 Adam steps).
def _sgd(params, lr: float, momentum: float, weight_decay: float):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)


def _adam(params, lr: float, momentum: float, weight_decay: float):
    """Adam's β₁ is the momentum setting, so one config key means the same thing for both."""
    return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay, fused=True)


OPTIMIZERS = dict(zip(OPTIMIZER_NAMES, (_sgd, _adam)))


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr, momentum, weight_decay)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but no CUDA device is available; use device: auto or cpu")
    return torch.device(name)


class Batches:
    """Seeded sampling without replacement, epoch after epoch; its state is two integers and a permutation.
    With `device` a GPU the indices are served from a copy of the permutation on the GPU (one copy per epoch,
    from pinned memory, which does not wait for the device): a slice of it per step, no transfer."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | None = None) -> None:
        self.n, self.batch_size = n, batch_size
        self.device = device if device is not None and device.type != "cpu" else None
        self.gen = torch.Generator().manual_seed(seed)
        self._set_perm(torch.randperm(n, generator=self.gen))
        self.pos = 0

    def _set_perm(self, perm: torch.Tensor) -> None:
        self.perm = perm
        self.served = perm if self.device is None else to_device(perm, self.device)

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self._set_perm(torch.randperm(self.n, generator=self.gen))
            self.pos = 0
        idx = self.served[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        self.gen.set_state(s["gen"])
        self._set_perm(s["perm"].cpu())
        self.pos = s["pos"]


def _source(x):
    """Index-able inputs: a uint8 array, or an object that renders samples on demand (3-D volumes)."""
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


def device_resident(t, device: torch.device):
    """A training tensor moved to the GPU once, where it fits in RESIDENT_BYTES: each batch is then gathered
    there, so the host neither copies images nor waits for a transfer every step. The CPU, rendered sets (not
    tensors) and larger sets keep theirs where they are, and batches are gathered on the host."""
    if device.type != "cuda" or not isinstance(t, torch.Tensor) or t.numel() * t.element_size() > RESIDENT_BYTES:
        return t
    return t.to(device)


def _first(x, n: int):
    return x[:n] if isinstance(x, np.ndarray) else x.take(n)


def wants_channels_last(model: nn.Module, channels_last: bool) -> bool:
    """Whether `model` trains on channels-last inputs: where the setting asks for it and the model has a 2-D
    convolution. Without one the layout buys nothing and costs copies (the fused sampler and concatenation
    work channels-first: a Table 4 2×ST-FCN step took 10% longer channels-last)."""
    return channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`, the host not waiting: a CPU tensor bound for a GPU goes through pinned memory (a copy
    from pageable memory may first wait for everything queued on the device)."""
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def as_input(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 images become floats in [0, 1]; rendered float inputs pass through."""
    x = to_device(x, device)
    x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def batch_fetch(x_set, y_set: torch.Tensor, device: torch.device, channels_last: bool) -> Callable:
    """fetch(idx) -> (x, y): batch `idx` of a training set as the model's input (`as_input`) and its labels, on
    `device`; what TrainStep gathers each step (inside the recording where the set lives on the device)."""
    def fetch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return as_input(x_set[idx], device, channels_last), to_device(y_set[idx], device)

    return fetch


def eval_batch_size(device: torch.device, rendered: bool = False) -> int:
    """Images per forward pass when evaluating. On the CPU 32: at 500, a TC CNN's activations (500 × 39 × 52²
    floats) exceed glibc's 32 MB mmap threshold, so every batch maps fresh pages (page faults, a quarter of
    the time in the kernel) and spills the caches; 1,000 TC test images took 2.65 s at 500 against 1.49 s
    at 32 (one thread). On a GPU 500, or 64 for rendered 3-D inputs (large)."""
    if device.type == "cpu":
        return 32
    return 64 if rendered else 500


@torch.no_grad()
def predict(model: nn.Module, x, device: torch.device, channels_last: bool, batch: int | None = None) -> torch.Tensor:
    """Arg-max predictions (N,) or (N, P), `batch` images at a time (default `eval_batch_size(device)`)."""
    batch = batch or eval_batch_size(device)
    model.eval()
    out = []
    for start in range(0, len(x), batch):
        out.append(model(as_input(x[start : start + batch], device, channels_last)).argmax(-1).cpu())
    model.train()
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def error_rate(model, x, y, device, channels_last, batch: int | None = None) -> float:
    """Percent of wrong predictions; for sequence labels (N, P), of sequences with any position wrong."""
    pred = predict(model, x, device, channels_last, batch)
    wrong = pred != y
    return float((wrong.any(-1) if wrong.dim() > 1 else wrong).float().mean().item() * 100) if len(y) else float("nan")


def classification_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy; for sequence logits (N, P, C) against labels (N, P), the sum of the P positions'
    softmax losses (one classifier per position, as Table 2's model), averaged over the batch."""
    if logits.dim() == 3:
        return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").sum(1).mean()
    return F.cross_entropy(logits, y)


@functools.cache  # asked by every run twice (its tags and MLflow's source tags): one `git` call per process
def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def config_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _save(obj, path: Path) -> None:
    """torch.save through a buffer: saved to a path, the zip's entries would be named after the temporary
    file, and two identical runs would give different model.pt bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def autocast(precision: str, device: torch.device):
    """The context of a training step's forward pass at `precision` (settings.PRECISIONS): for bf16,
    torch.autocast in bfloat16 on the step's device (the backward follows the forward's dtypes); for fp32 a
    disabled autocast, which changes nothing. The spatial transformers turn it off for θ and the sampling."""
    # no cast cache: each weight is cast once per forward anyway, and a CUDA-graph recording (compile: graph)
    # must not keep casts made outside it
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory in the process (no trimming, no mmap per large block), so
    that each training step's tensors (a few MB each, the same sizes every step) reuse warm pages instead of
    new ones from the kernel. `stn run` calls it first (and the benchmarks: without it their times varied
    2.2-5.1 ms from run to run at 256x1x60x60 while the kernels' cost did not). Measured on an AMD EPYC, one
    thread: a TC CNN bf16 step 148 -> 132 ms, ADD 2xST-FCN-Aff 7.2 -> 6.3 ms, R ST-CNN-Aff 28.8 -> 26.3 ms;
    373k -> 129k page faults over those runs. The process keeps its peak heap. False where there is no glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _forward_backward(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                      precision: str = "fp32") -> torch.Tensor:
    """One step's loss, its gradients left in the parameters. Batches are always full (Batches reshuffles
    rather than serve a short one), so a compiled model sees one shape and compiles (or captures) once.
    With precision bf16 the forward runs under autocast and the loss is taken in fp32."""
    opt.zero_grad(set_to_none=True)
    with autocast(precision, x.device):
        logits = model(x)
    loss = classification_loss(logits.float(), y)
    loss.backward()
    return loss


class TrainStep:
    """A training step as one call, `step(idx) -> loss`: gather batch `idx` through `fetch(idx) -> (x, y)`,
    forward, backward and the optimiser step, under `settings.compile`:

    - none: eagerly;
    - default, reduce-overhead: forward and backward through torch.compile (reduce-overhead on a GPU also
      CUDA-graphs those two), the optimiser step eagerly. If the first compiled step fails, it says so once and
      trains eagerly;
    - graph: on a GPU the whole step recorded once as a CUDA graph and replayed (stn.graphs.GraphedStep), the
      batch gather included where `resident` (the set and `idx` live on the device); elsewhere eagerly, said once.
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, fetch: Callable, settings: TrainSettings,
                 device: torch.device, resident: bool, log: Callable[[str], None], recorder=None) -> None:
        self.model, self.opt, self.fetch, self.precision, self.log = model, opt, fetch, settings.precision, log
        self.mode, self.resident, self.first = settings.compile, resident, True
        self.net = model if self.mode in ("none", "graph") else torch.compile(model, mode=self.mode, dynamic=False)
        self.graphed = None
        if self.mode == "graph":
            recorder = recorder or graphs.recorder_for(device)
            if recorder is None:
                log(f"compile: graph records CUDA graphs, which the {device.type} has not; training eagerly")
            else:
                self.graphed = graphs.GraphedStep(self._gathered if resident else self._step, opt, recorder, log)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = _forward_backward(self.net, self.opt, x, y, self.precision)
        self.opt.step()
        return loss

    def _gathered(self, idx: torch.Tensor) -> torch.Tensor:
        return self._step(*self.fetch(idx))

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.graphed is not None:
            return self.graphed(idx) if self.resident else self.graphed(*self.fetch(idx))
        x, y = self.fetch(idx)
        if not self.first or self.net is self.model:
            return self._step(x, y)
        self.first = False
        try:
            return self._step(x, y)
        except Exception as exc:  # noqa: BLE001 (only the first compiled step: the eager retry raises real errors)
            self.log(f"torch.compile (mode {self.mode}) failed on the first step ({graphs.one_line(exc)}); "
                     "training eagerly")
            self.net = self.model
            return self._step(x, y)


def make_scheduler(opt: torch.optim.Optimizer, settings: TrainSettings) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule: a drop by lr_gamma every lr_step (or at each of lr_milestones), and with
    loc_warmup > 0 the localisation group's rate ramping linearly from 0 over its first loc_warmup steps. Without
    a ramp it stays StepLR / MultiStepLR, so the rates, and the checkpoints of runs written before the ramp
    existed, are bitwise what they were."""
    lrs = torch.optim.lr_scheduler
    if not settings.loc_warmup:
        return (lrs.MultiStepLR(opt, sorted(settings.lr_milestones), settings.lr_gamma) if settings.lr_milestones
                else lrs.StepLR(opt, settings.lr_step, settings.lr_gamma))
    milestones = sorted(settings.lr_milestones or [])

    def drops(it: int) -> float:
        passed = bisect.bisect_right(milestones, it) if milestones else it // settings.lr_step
        return settings.lr_gamma ** passed

    def ramp(it: int) -> float:
        return drops(it) * min(1.0, it / settings.loc_warmup)

    return lrs.LambdaLR(opt, [ramp if g.get("name") == "localisation" else drops for g in opt.param_groups])


def _saved_settings(ckpt: dict) -> TrainSettings | None:
    """The settings a checkpoint was written with (None if unreadable); keys added since default."""
    try:
        return TrainSettings.from_dict(ckpt.get("settings") or {})
    except (TypeError, ValueError):
        return None


def input_transformers(model: nn.Module) -> list[SpatialTransformer]:
    """The transformers that sample the model's input, which `start_zoom` starts zoomed in: the model's own
    `input_transformers()` where it has transformers deeper in (ST-CNN Multi's warp feature maps), else all."""
    own = getattr(model, "input_transformers", None)
    return list(own()) if own else [m for m in model.modules() if isinstance(m, SpatialTransformer)]


def train_run(
    model: nn.Module,
    data: dict[str, np.ndarray],
    settings: TrainSettings,
    seed: int,
    out_dir: Path,
    tracker_factory: Callable[[str | None], "object"] | None = None,
    describe: dict | None = None,
    artifacts: Callable[[nn.Module, Path], list[Path]] | None = None,
    log: Callable[[str], None] = lambda s: print(s, flush=True),
) -> dict:
    """Train `model` on data["x_train"/"y_train"], evaluating on val and finally test. Returns metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(settings.device)
    torch.manual_seed(seed)
    zoomed = input_transformers(model) if settings.start_zoom != 1 else []
    for st in zoomed:
        st.start_at(settings.start_zoom)  # a resumed run's checkpoint replaces it below
    model = model.to(device)
    channels_last = wants_channels_last(model, settings.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x_train, y_train = _source(data["x_train"]), torch.from_numpy(data["y_train"])
    x_train = device_resident(x_train, device)
    resident = isinstance(x_train, torch.Tensor) and x_train.device.type == device.type
    y_train = y_train.to(device) if resident else y_train
    fetch = batch_fetch(x_train, y_train, device, channels_last)
    x_val = _source(_first(data["x_val"], settings.eval_samples))
    y_val = torch.from_numpy(data["y_val"][: settings.eval_samples])
    groups = param_groups(model, settings.lr, settings.loc_lr_mult)
    opt = make_optimizer(settings.optimizer, groups, settings.lr, settings.momentum, settings.weight_decay)
    sched = make_scheduler(opt, settings)
    batches = Batches(len(y_train), min(settings.batch_size, len(y_train)), seed, device if resident else None)
    eval_batch = eval_batch_size(device, rendered=not isinstance(data["x_val"], np.ndarray))
    start_it, curve, run_id, elapsed, first_loss = 0, [], None, 0.0, None
    ckpt_path = out_dir / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = load_torch(ckpt_path, "this run from scratch (the checkpoint only saves time)", device)
        if _saved_settings(ckpt) != settings or ckpt.get("seed") != seed:
            log(f"{ckpt_path} was written with other settings or seed; starting afresh")
            ckpt = None
    else:
        ckpt = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        batches.load_state_dict(ckpt["batches"])
        torch.set_rng_state(ckpt["torch_rng"])
        start_it, curve, run_id, elapsed = ckpt["iteration"], ckpt["curve"], ckpt.get("run_id"), ckpt.get("elapsed", 0.0)
        first_loss = ckpt.get("first_loss")
        log(f"resuming from iteration {start_it} ({ckpt_path})")

    run = tracker_factory(run_id) if tracker_factory else None
    if run is not None:
        run.log_params({"settings": settings.to_dict(), "seed": seed, **(describe or {})})
        run.set_tags({"device": str(device), "sampler_impl": ops.resolve_impl("auto", device),
                      "torch_version": torch.__version__, "git_commit": git_commit()})
    status = "FAILED"
    try:
        t0 = time.time() - elapsed
        running, seen = (ckpt["running"], ckpt["seen"]) if ckpt is not None and "running" in ckpt else (0.0, 0)
        watch = LossWatch(device, first_loss, running, seen)
        next_log = time.time() + FIRST_LOG_S
        model.train()
        step = TrainStep(model, opt, fetch, settings, device, resident, log)
        for it in range(start_it + 1, settings.iterations + 1):
            loss = step(batches.next())
            watch.add(it, loss, opt.param_groups[0]["lr"])
            sched.step()
            evaluate = it % settings.eval_every == 0 or it == settings.iterations
            report = time.time() >= next_log or it == settings.iterations
            save = it % settings.checkpoint_every == 0 and it != settings.iterations
            if evaluate or report or save or it % CHECK_EVERY == 0:
                watch.check()
            if evaluate:
                val_err = error_rate(model, x_val, y_val, device, channels_last, eval_batch)
                point = {"iteration": it, "train_loss": watch.mean(), "val_error": val_err,
                         "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0}
                curve.append(point)
                if run is not None:
                    run.log_metrics({k: v for k, v in point.items() if k != "iteration"}, step=it)
            if report:
                done = it - start_it
                rate = done / max(time.time() - t0 - elapsed, 1e-9)
                eta = (settings.iterations - it) / max(rate, 1e-9)
                last = f"{curve[-1]['val_error']:.2f}%" if curve else "not yet measured"
                log(f"[{time.strftime('%H:%M:%S')}] iteration {it}/{settings.iterations}  loss {watch.last_value():.4f}  val error {last}  "
                    f"{rate:.1f} it/s  eta {eta / 60:.1f} min")
                next_log = time.time() + LOG_EVERY_S
            if save:
                running, seen = watch.running()
                _save({"settings": settings.to_dict(), "seed": seed, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                       "batches": batches.state_dict(), "torch_rng": torch.get_rng_state(), "iteration": it,
                       "curve": curve, "run_id": run.run_id if run else None, "elapsed": time.time() - t0,
                       "first_loss": watch.first, "running": running, "seen": seen}, ckpt_path)
        seconds = time.time() - t0
        test_err = error_rate(model, _source(data["x_test"]), torch.from_numpy(data["y_test"]), device,
                              channels_last, eval_batch)
        log(f"[{time.strftime('%H:%M:%S')}] test error {test_err:.2f}%  ({seconds / 60:.1f} min)")
        _save({"state_dict": model.state_dict(), "describe": describe or {}}, out_dir / "model.pt")
        write_json(out_dir / "curve.json", curve)
        metrics = {"test_error": test_err, "val_error": curve[-1]["val_error"] if curve else None,
                   "late_fall": late_fall(curve, settings.iterations), "iterations": settings.iterations,
                   "seconds": seconds, "seed": seed, "device": str(device),
                   "sampler_impl": ops.resolve_impl("auto", device), "run_id": run.run_id if run else None,
                   **(describe or {})}
        if zoomed:
            metrics["start_zoom"] = settings.start_zoom  # the transforms tables say where the zoom began
        if run is not None:
            run.log_metrics({"test_error": test_err}, step=settings.iterations)
        for path in artifacts(model, out_dir) if artifacts else []:
            if run is not None:
                run.log_artifact(path)
        if run is not None:
            run.log_model(model, as_input(_source(data["x_test"])[:4], torch.device("cpu"), False), out_dir / "model.pt")
        status = "FINISHED"
        ckpt_path.unlink(missing_ok=True)  # the run is complete; model.pt holds the weights
        return metrics
    finally:
        if run is not None:
            run.end(status)
