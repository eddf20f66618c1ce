"""`python -m stn.bench sampler`: time every sampler implementation against F.affine_grid + F.grid_sample.
(The other subcommands, in SUBCOMMANDS: `train`, training steps per second and the protocol's device-hours;
`share`, the runs per hour of k training jobs sharing one device against one;
`pool`, average pooling against torch's; `grid`, the projective and TPS grid generators against autograd's;
`coloc`, a Table 5 class's optimisation step with fresh random patches against a bank of them.)

Each method runs the whole transformer step that a model pays for (grid generation from θ and
sampling; forward, and forward+backward with gradients for input and θ), so ratios are
directly what a training step sees. Ratios are speed-ups over the baseline measured in the
same run (> 1 is faster), each from the fastest of `--repeats` calls: on a shared machine noise
only ever adds time (another process takes the core, the page cache is evicted), so the minimum
is the estimate of what the code costs that one load spike cannot move; the median is printed
beside it to show how noisy the run was. The baseline's and a method's fastest calls are still made
seconds apart, and a machine whose load drifts moves their ratio (session 20: the baseline's own time
moved by up to two thirds between runs), so the `paired` column times the two back to back, round after
round, and reports the median of the rounds' ratios. Peak memory is what the step allocates on top of its inputs: from
the CUDA caching allocator on GPUs and from the profiler's allocation trace on the CPU.

'% copy' is the fraction of the device's memory bandwidth a fwd+bwd call reaches: the fewest bytes
such a call must move (read the input, write the output; read the output's gradient and the input
again, write the input's gradient) over its time, against a large tensor copy measured in the
same run. Near 100% a method cannot get much faster on that device; far below, it wastes traffic
or time between launches.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU memory trace would otherwise log to stderr

from . import ops
from .train import keep_freed_memory
from .transforms import Affine, Affine3D


@dataclass(frozen=True)
class Case:
    n: int
    c: int
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]

    @property
    def label(self) -> str:
        x = "x".join
        return f"{self.n}x{self.c}x{x(map(str, self.in_size))}->{x(map(str, self.out_size))}"

    @property
    def transform(self) -> Affine | Affine3D:
        """The affine grid generator every method of this case samples with."""
        return Affine3D() if len(self.out_size) == 3 else Affine()

    def fwdbwd_bytes(self, element_size: int) -> int:
        """The fewest bytes a forward+backward moves: 3 passes over the input, 2 over the output."""
        numel = lambda size: self.n * self.c * math.prod(size)  # noqa: E731
        return element_size * (3 * numel(self.in_size) + 2 * numel(self.out_size))


CASES = [
    Case(256, 1, (42, 42), (42, 42)),
    Case(256, 1, (60, 60), (30, 30)),
    Case(128, 32, (32, 32), (32, 32)),
    Case(64, 3, (448, 448), (224, 224)),
    Case(16, 1, (60, 60, 60), (60, 60, 60)),
]

Method = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _baseline(case: Case) -> Method:
    def run(x, theta):
        ndim = len(case.out_size)
        grid = F.affine_grid(theta.view(case.n, ndim, ndim + 1), [case.n, case.c, *case.out_size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    return run


def _unfused(case: Case, impl: str) -> Method:
    transform = case.transform

    def run(x, theta):
        return ops.sample(x, transform.grid(theta, case.out_size), "bilinear", False, impl)

    return run


def _fused(case: Case, impl: str) -> Method:
    transform = case.transform

    def run(x, theta):
        return ops.transform_sample(x, transform, theta, case.out_size, "bilinear", False, impl)

    return run


def _sampler_only(case: Case, impl: str | None) -> Method:
    """Sampling from a fixed, precomputed grid; impl None is torch's grid_sample."""
    grids: dict = {}

    def run(x, theta):
        key = (theta.device, theta.dtype)
        if key not in grids:  # built once, outside the timed region's gradient
            grids[key] = case.transform.grid(theta.detach(), case.out_size).requires_grad_(theta.requires_grad)
        grid = grids[key]
        if impl is None:
            return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return ops.sample(x, grid, "bilinear", False, impl)

    return run


def methods_for(case: Case, device: torch.device, part: str) -> dict[str, Method]:
    """Baseline first, then every implementation that can run on `device`.

    part="step": grid generation + sampling (baseline F.affine_grid + F.grid_sample), unfused and fused;
    part="sampler": sampling only from a precomputed grid (baseline F.grid_sample).
    """
    impls = [impl for impl, reason in ops.available_impls(device).items() if reason is None]
    if part == "sampler":
        methods = {"torch grid_sample": _sampler_only(case, None)}
        methods.update({f"stn {impl}": _sampler_only(case, impl) for impl in impls})
    else:
        methods = {"torch affine_grid+grid_sample": _baseline(case)}
        methods.update({f"stn {impl}": _unfused(case, impl) for impl in impls})
        methods.update({f"stn fused {impl}": _fused(case, impl) for impl in impls if impl != "reference"})
    return methods


def _inputs(case: Case, device, requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(case.n, case.c, *case.in_size, generator=g).to(device)
    ndim = len(case.out_size)
    eye = torch.eye(ndim, ndim + 1)
    theta = (eye + 0.1 * torch.randn(case.n, ndim, ndim + 1, generator=g)).reshape(case.n, -1).to(device)
    return x.requires_grad_(requires_grad), theta.requires_grad_(requires_grad)


def _step(method: Method, x, theta, backward: bool):
    out = method(x, theta)
    if backward:
        leaves = [t for t in (x, theta) if t.requires_grad]
        torch.autograd.grad(out, leaves, torch.ones_like(out), allow_unused=True)
    return out


def sync_device(device) -> None:
    """Wait for `device` to finish its queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_times(fn: Callable[[], object], device, repeats: int, warmup: int = 2) -> tuple[float, list[float]]:
    """(seconds the `warmup` untimed calls of `fn` took, seconds of each of `repeats` timed calls); the device
    is synchronised after each, so a call's time includes its kernels. Every benchmark here times with it."""
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync_device(device)
    warm = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync_device(device)
        times.append(time.perf_counter() - start)
    return warm, times


def time_method(method: Method, case: Case, device, backward: bool, repeats: int) -> tuple[float, float]:
    """(fastest, median) seconds per call."""
    x, theta = _inputs(case, device, backward)
    _, times = call_times(lambda: _step(method, x, theta, backward), device, repeats)
    return min(times), statistics.median(times)


def paired_speedup(base: Method, method: Method, case: Case, device, repeats: int) -> float:
    """The median, over `repeats` rounds, of the baseline's fwd+bwd time over the method's, the two called back
    to back in each round (in alternating order). A load spike that slows a whole round cancels in its ratio,
    where the fastest-of-N ratio compares calls made seconds apart and moves with the machine's load."""
    x, theta = _inputs(case, device, True)
    calls = (lambda: _step(base, x, theta, True), lambda: _step(method, x, theta, True))
    for fn in calls:
        call_times(fn, device, 0)  # warm-up only
    ratios = []
    for i in range(repeats):
        times = {}
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            times[k] = call_times(calls[k], device, 1, warmup=0)[1][0]
        ratios.append(times[0] / times[1])
    return statistics.median(ratios)


def fastest(fn: Callable[[], object], device, repeats: int) -> float:
    """The fastest of `repeats` calls of fn, in seconds (the estimate noise cannot move: see the docstring)."""
    return min(call_times(fn, device, repeats)[1])


def ratio_setup(prog: str, description: str, argv: list[str] | None) -> tuple[argparse.Namespace, torch.device, str]:
    """The shared front of the ours-against-torch benchmarks (`pool`, `grid`): --device, --repeats and --threads
    parsed and applied; returns the arguments, the device and its name for the header."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return args, device, where


@contextlib.contextmanager
def _quiet_fd2():
    """File descriptor 2 pointed at /dev/null: the CPU profiler's C++ side writes 'USDT ... profiler_start/stop'
    lines straight to it (KINETO_LOG_LEVEL does not reach them), two per measured row."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(method: Method, case: Case, device) -> float:
    """Peak bytes allocated by one forward+backward beyond its inputs, in MiB."""
    x, theta = _inputs(case, device, True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        _step(method, x, theta, True)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(method, x, theta, True)
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


def copy_bandwidth(device: torch.device, mib: int = 512, repeats: int = 10) -> float:
    """Bytes per second (read + written) of the fastest of `repeats` copies of a `mib`-MiB tensor."""
    src = torch.rand(mib * 2**18, device=device)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(repeats + 1):
        sync_device(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync_device(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best


def measure_rows(device: torch.device, repeats: int, cases: list[Case], part: str, bandwidth: float):
    """Yields one row per (case, method) as soon as it is measured."""
    for case in cases:
        base_f = base_fb = base = None
        for name, method in methods_for(case, device, part).items():
            fwd, _ = time_method(method, case, device, False, repeats)
            fb, fb_median = time_method(method, case, device, True, repeats)
            paired = 1.0 if base is None else paired_speedup(base, method, case, device, repeats)
            base, base_f, base_fb = base or method, base_f or fwd, base_fb or fb
            yield {
                "case": case.label,
                "method": name,
                "fwd_ms": fwd * 1e3,
                "fwd_speedup": base_f / fwd,
                "fwdbwd_ms": fb * 1e3,
                "fwdbwd_speedup": base_fb / fb,
                "fwdbwd_median_ms": fb_median * 1e3,
                "fwdbwd_paired": paired,
                "copy_percent": 100 * case.fwdbwd_bytes(torch.float32.itemsize) / fb / bandwidth,
                "peak_mib": peak_memory(method, case, device),
            }


HEADER = (f"{'case':<28} {'method':<30} {'fwd ms':>9} {'x base':>7} {'fwd+bwd ms':>11} {'x base':>7} "
          f"{'(median)':>9} {'paired':>7} {'% copy':>7} {'peak MiB':>9} {'left':>7}")


def format_row(r: dict, left_s: float | None = None) -> str:
    """One table line; `left_s` (the estimated seconds the whole benchmark still needs) as its last column."""
    left = "" if left_s is None else (f"~{left_s:.0f}s" if left_s < 100 else f"~{left_s / 60:.1f}m")
    return (f"{r['case']:<28} {r['method']:<30} {r['fwd_ms']:>9.2f} {r['fwd_speedup']:>7.2f} "
            f"{r['fwdbwd_ms']:>11.2f} {r['fwdbwd_speedup']:>7.2f} {r['fwdbwd_median_ms']:>9.2f} {r['fwdbwd_paired']:>7.2f} "
            f"{r['copy_percent']:>7.1f} {r['peak_mib']:>9.1f} {left:>7}").rstrip()


SUBCOMMANDS = {"train": "bench_train", "share": "bench_share", "pool": "bench_pool", "grid": "bench_grid",
               "coloc": "bench_coloc"}  # name -> module with main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in SUBCOMMANDS:
        from .config import ConfigError

        try:
            return importlib.import_module(f".{SUBCOMMANDS[argv[0]]}", __package__).main(argv[1:])
        except ConfigError as exc:  # a missing or invalid --config: one line naming it, as `stn` gives
            print(f"python -m stn.bench {argv[0]}: error: {exc}", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="python -m stn.bench", description=__doc__)
    parser.add_argument("what", choices=["sampler", *SUBCOMMANDS],
                        help=f"what to benchmark (the others: see `{' --help`, `'.join(SUBCOMMANDS)} --help`)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--part", choices=["step", "sampler", "both"], default="both")
    parser.add_argument("--cases", type=str, default=None, help="comma-separated case indices (0-based) to run")
    parser.add_argument("--n", type=int, default=None, help="batch size replacing each case's own")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    heap = "freed memory kept by malloc" if keep_freed_memory() else "malloc left as it is (no glibc)"
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            raise SystemExit("--device cuda: no CUDA device is available")
    if args.cases is not None and not all(i.isdigit() and int(i) < len(CASES) for i in args.cases.split(",")):
        parser.error(f"--cases takes indices 0-{len(CASES) - 1} separated by commas, got {args.cases!r}")
    if args.n is not None and args.n < 1:
        parser.error(f"--n must be a positive batch size, got {args.n}")
    cases = CASES if args.cases is None else [CASES[int(i)] for i in args.cases.split(",")]
    if args.n is not None:
        cases = [replace(case, n=args.n) for case in cases]
    parts = ["step", "sampler"] if args.part == "both" else [args.part]
    total = sum(len(methods_for(case, device, part)) for device in devices for part in parts for case in cases)
    done, start = 0, time.perf_counter()
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        bandwidth = copy_bandwidth(device)
        for part in parts:
            what = "grid generation + sampling" if part == "step" else "sampling from a precomputed grid"
            print(f"\n== {name}: {what}; ms = fastest of {args.repeats} calls, 'x base' = speed-up over the "
                  "first row of each case (>1 is faster), (median) = the median fwd+bwd ms, paired = the median "
                  f"fwd+bwd speed-up over {args.repeats} rounds that call the first row and this one back to back "
                  "(the ratio a drifting load moves least), "
                  f"% copy = fwd+bwd bandwidth against a copy's {bandwidth / 1e9:.0f} GB/s, "
                  f"left = the whole benchmark's estimated time still to run; {heap}")
            print(HEADER + "\n" + "-" * len(HEADER), flush=True)
            for row in measure_rows(device, args.repeats, cases, part, bandwidth):
                done += 1
                print(format_row(row, (time.perf_counter() - start) / done * (total - done)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
