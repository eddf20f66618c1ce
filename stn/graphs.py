"""compile: graph: a whole training step recorded once as a CUDA graph, then replayed every step.

An eager step on a GPU costs the host far more than the device: at batch 256 a transformer's fused forward
and backward take ~22 µs of GPU time against ~200 µs of host time, and the optimiser step and the batch gather
add their own launches. `GraphedStep` runs a few eager warm-up steps (lazy initialisation, the optimiser's
state), then records one step (the batch gather where the training set lives on the GPU, forward, backward
and the optimiser step) and from then on replays it. The host's work per step is a copy of the batch's
inputs into the recording's own tensors, a fill for a learning rate that changed, and one replay.

The recording reads the learning rates from one-element device tensors (a rate baked in as a number would
never drop). The schedule keeps its Python floats, which the checkpoints, curves and progress lines show;
a changed float is copied into its tensor before the next replay. The recorder is a parameter so that the
host-side logic (warm-up, inputs, rates, the fallback) is tested on a CPU with a stand-in that re-runs
the step for each replay; `CudaRecorder` is the real one.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

WARMUP = 3  # eager steps before the recording: lazy initialisation and the optimiser's state (momentum buffers)


class CudaRecorder:
    """Warm-up steps on a side stream and the recording through `torch.cuda.graph`, as PyTorch's CUDA-graph
    notes ask for whole-network capture."""

    def __init__(self) -> None:
        self.stream = torch.cuda.Stream()

    def warm(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            out = fn()
        torch.cuda.current_stream().wait_stream(self.stream)
        return out

    def record(self, fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        """(replay, the recording's output tensor, which each replay overwrites). Nothing runs while recording."""
        graph = torch.cuda.CUDAGraph()
        # the default capture mode, "global": an unsafe CUDA call from any thread while recording is an error
        # (and so an eager run), never a recording that silently misses work
        with torch.cuda.graph(graph):
            out = fn()
        return graph.replay, out


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for a one-line log of a failure that is handled."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}"


def recorder_for(device: torch.device) -> CudaRecorder | None:
    """The recorder for `device`, or None where there are no CUDA graphs."""
    return CudaRecorder() if device.type == "cuda" else None


class GraphedStep:
    """`step(*inputs) -> loss`: `body(*inputs)` (forward, backward and the optimiser step of `opt`, returning the
    loss) run eagerly for `warmup` calls, then recorded once and replayed. Inputs keep their shapes from call to
    call (the training loop's batches are always full). Where recording fails (an op that is not capture-safe)
    it says so once through `log` and every later step runs eagerly, the same steps that compile: none trains.

    Example (on a GPU):
        >>> step = GraphedStep(lambda x, y: train_step(x, y), opt, CudaRecorder(), print)
        >>> loss = step(x, y)   # a tensor; reading it waits for the device
    """

    def __init__(self, body: Callable[..., torch.Tensor], opt: torch.optim.Optimizer, recorder,
                 log: Callable[[str], None], warmup: int = WARMUP) -> None:
        self.body, self.opt, self.recorder, self.log, self.warmup = body, opt, recorder, log, warmup
        self.warmed, self.broken = 0, False
        self.replay: Callable[[], None] | None = None
        self.inputs: list[torch.Tensor] = []
        self.rates: list[torch.Tensor] = []  # one device tensor per parameter group
        self.values: list[float] = []  # the floats the rate tensors hold
        self.loss: torch.Tensor | None = None  # the recording's output

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.replay is None and not self.broken:
            if self.warmed < self.warmup:
                self.warmed += 1
                return self.recorder.warm(lambda: self.body(*inputs))
            try:
                self._record(inputs)
            except Exception as exc:  # noqa: BLE001 (any failure to record leaves eager steps, which raise real errors)
                self.broken, self.replay = True, None
                self.log(f"compile: graph could not record the training step ({one_line(exc)}); training eagerly")
        if self.replay is None:
            return self.body(*inputs)
        for mine, given in zip(self.inputs, inputs):
            mine.copy_(given, non_blocking=True)
        for i, group in enumerate(self.opt.param_groups):
            if group["lr"] != self.values[i]:
                self.rates[i].fill_(group["lr"])
                self.values[i] = group["lr"]
        self.replay()
        return self.loss.clone()  # the next replay overwrites the recording's own

    def _record(self, inputs: Sequence[torch.Tensor]) -> None:
        groups = self.opt.param_groups
        self.inputs = [x.clone() for x in inputs]
        self.values = [group["lr"] for group in groups]
        self.rates = [torch.tensor(float(group["lr"]), dtype=torch.float32, device=group["params"][0].device)
                      for group in groups]

        def recorded() -> torch.Tensor:
            with self._tensor_rates():
                return self.body(*self.inputs)

        self.replay, self.loss = self.recorder.record(recorded)

    @contextlib.contextmanager
    def _tensor_rates(self):
        """The parameter groups read their rates from the device tensors (and Adam's groups on a GPU are marked
        capturable, which its step checks while recording); the floats come back afterwards, whatever happens."""
        saved = [(group["lr"], group.get("capturable")) for group in self.opt.param_groups]
        try:
            for group, rate in zip(self.opt.param_groups, self.rates):
                group["lr"] = rate
                if "capturable" in group and rate.device.type == "cuda":
                    group["capturable"] = True
            yield
        finally:
            for group, (lr, capturable) in zip(self.opt.param_groups, saved):
                group["lr"] = lr
                if capturable is not None:
                    group["capturable"] = capturable
