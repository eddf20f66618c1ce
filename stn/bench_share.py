"""`python -m stn.bench share`: how many training jobs should share one device. For each k in `--jobs`,
k processes train the same model at once on the device (as k Snakemake jobs given one GPU would: see
`--resources gpu=N` in the README), each on its own random batch, for `--seconds` after `--warmup`
untimed steps and a barrier that starts them together. The total steps per second over all k is
what runs per hour scale with (every run of a table trains a fixed number of steps); `x one job` is
that total against k = 1 in the same benchmark.

A training step at the paper's batch sizes keeps a GPU busy for a few tens of microseconds against
hundreds on the host, so one job leaves most of the device idle; k jobs fill it until the device (or
the host's cores) saturate. Without NVIDIA's MPS, as Snakemake's jobs run, the GPU time-slices between
the processes' contexts: what sharing buys is one job's kernels running while the others' hosts work.
`--streams R` trains R runs in each job instead, each on its own CUDA stream and stepped in turn, so that
one process's runs can also overlap their kernels (several seeds or models of one cell in one process);
on a CPU they simply alternate.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing as mp
import queue
import statistics
import time

import torch

BARRIER_TIMEOUT_S = 600  # a worker that cannot build its model in this long has failed


def _worker(spec: dict, barrier, results) -> None:
    """One training process: build spec['streams'] runs (each on its own CUDA stream), warm them up, wait for the
    other processes, then step every run in turn for spec['seconds']."""
    try:
        from .bench import sync_device
        from .bench_train import job_model, table_config, training_step, untimed_steps
        from .train import keep_freed_memory

        torch.set_num_threads(spec["threads"])
        keep_freed_memory()
        device = torch.device(spec["device"])
        config = table_config(spec["config"], [spec["table"]])
        runs = []  # (stream context, step) of each run
        for _ in range(spec["streams"]):
            on = functools.partial(torch.cuda.stream, torch.cuda.Stream(device)) if device.type == "cuda" \
                else contextlib.nullcontext
            built, settings = job_model(config, spec["table"], spec["dataset"], spec["model"])
            with on():
                step = training_step(built.model, spec["dataset"], settings, spec["mode"], device, spec["precision"])
                for _ in range(untimed_steps(spec["mode"], spec["warmup"])):
                    step()
            runs.append((on, step))
        sync_device(device)
        barrier.wait(BARRIER_TIMEOUT_S)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < spec["seconds"]:
            for on, step in runs:
                with on():
                    step()
            steps += 1
        sync_device(device)
        results.put((steps, time.perf_counter() - start))
    except BaseException as exc:  # the parent reports it; the others must not wait at the barrier for ever
        results.put(f"{type(exc).__name__}: {exc}")
        barrier.abort()


def shared_rate(spec: dict, jobs: int) -> list[float]:
    """Steps per second of each run of `jobs` processes training `spec`'s model on one device at once, each
    process spec['streams'] runs (jobs × streams rates)."""
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results = ctx.Barrier(jobs), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(spec, barrier, results), daemon=True) for _ in range(jobs)]
    for p in procs:
        p.start()
    out: list = []  # one item from each job: (steps, seconds), or its error
    try:
        deadline = time.monotonic() + BARRIER_TIMEOUT_S + spec["seconds"] + 60
        while len(out) < jobs:
            try:
                out.append(results.get(timeout=1.0))
            except queue.Empty:
                if dead := [p.exitcode for p in procs if p.exitcode not in (None, 0)]:  # killed before it could say
                    raise SystemExit(f"share: a job of {spec['model']} died (exit code {dead[0]})") from None
                if time.monotonic() > deadline:
                    raise SystemExit(f"share: {jobs} jobs of {spec['model']} did not finish in time") from None
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    if errors := [o for o in out if isinstance(o, str)]:  # the cause first, not a partner's broken barrier
        cause = next((e for e in errors if not e.startswith("BrokenBarrierError")), errors[0])
        raise SystemExit(f"share: a job of {spec['model']} failed: {cause}")
    return [steps / seconds for steps, seconds in out for _ in range(spec["streams"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stn.bench share", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/paper.yaml", help="the config whose runs to train")
    parser.add_argument("--table", default="table1", help="a classification table (table1, table4)")
    parser.add_argument("--dataset", default="RTS", help="one of the table's data sets")
    parser.add_argument("--models", default="CNN,ST-CNN-Aff", help="comma-separated models of the table")
    parser.add_argument("--mode", default="none", help="compile setting of every job (none = eager; default, reduce-overhead: torch.compile; "
                        "graph: whole-step CUDA graphs)")
    parser.add_argument("--precision", default="fp32", help="fp32 or bf16")
    parser.add_argument("--jobs", default="1,2,4", help="comma-separated numbers of jobs sharing the device (1 is always run)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--streams", type=int, default=1, help="runs each job trains at once, each on its own CUDA "
                        "stream (one process's runs overlapping their kernels); one job of one run is still the base")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds of every job")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of every job first")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of every job")
    args = parser.parse_args(argv)
    from .bench_train import table_config
    from .paper import registry
    from .settings import COMPILE_MODES, PRECISIONS
    from .train import resolve_device

    try:
        jobs = [int(k) for k in args.jobs.split(",")]
    except ValueError:
        jobs = []
    if not jobs or min(jobs) < 1:
        parser.error(f"--jobs takes positive integers separated by commas, got {args.jobs!r}")
    jobs = sorted({1, *jobs})  # one job is the baseline
    if args.seconds <= 0 or args.warmup < 1 or args.threads < 1 or args.streams < 1:
        parser.error("--seconds must be positive, --warmup, --threads and --streams at least 1")
    if args.mode not in COMPILE_MODES or args.precision not in PRECISIONS:
        parser.error(f"--mode must be one of {list(COMPILE_MODES)} and --precision one of {list(PRECISIONS)}")
    if args.table not in registry.EXPERIMENTS or registry.experiment(args.table).module != "classification":
        parser.error(f"--table {args.table}: only the classification tables (table1, table4) can be trained here")
    config = table_config(args.config, [args.table])
    grid = registry.experiment(args.table).grid(config[args.table], config)
    models = args.models.split(",")
    if bad := [m for m in models if not grid.has(args.dataset, m)]:
        parser.error(f"{bad} on {args.dataset} not trained by {args.table} in {args.config} "
                     f"(data sets {grid.datasets}, models {grid.models})")
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    each = "one model each" if args.streams == 1 else f"{args.streams} runs of one model each, on as many CUDA streams"
    print(f"== {where}: k jobs training {each} at once, {args.threads} thread(s) each, {args.seconds:g} s "
          f"after {args.warmup} untimed steps; {args.table} {args.dataset}, compile {args.mode}, {args.precision}; "
          "x one job = total steps/s of all runs against one job of one run (the runs per hour the device gives)")
    header = (f"{'model':<14} {'jobs':>4} {'runs':>4} {'steps/s, each (median)':>22} {'steps/s, total':>14} "
              f"{'x one job':>9}")
    print(header + "\n" + "-" * len(header), flush=True)
    for model in models:
        spec = {"config": args.config, "table": args.table, "dataset": args.dataset, "model": model,
                "mode": args.mode, "precision": args.precision, "device": str(device), "seconds": args.seconds,
                "warmup": args.warmup, "threads": args.threads}
        base = None
        best = (0.0, "")
        # one job of one run first (the base), then every k with --streams runs each
        for k, streams in dict.fromkeys([(1, 1), *((k, args.streams) for k in jobs)]):
            rates = shared_rate({**spec, "streams": streams}, k)
            total = sum(rates)
            base = base or total
            shape = f"{k} {'job' if k == 1 else 'jobs'}" + (f" of {streams} runs" if streams > 1 else "")
            best = max(best, (total, shape))
            print(f"{model:<14} {k:>4} {len(rates):>4} {statistics.median(rates):>22.1f} {total:>14.1f} "
                  f"{total / base:>9.2f}", flush=True)
        print(f"{model}: most runs per hour with {best[1]} per device ({best[0] / base:.2f}x one job)", flush=True)
    return 0
