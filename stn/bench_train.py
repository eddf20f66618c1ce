"""`python -m stn.bench train`: training steps per second of each classification model, eager, compiled, or
(on a GPU) replayed as one CUDA graph per step, in fp32 and bf16 (autocast), at its table's batch size on this
device, and the device-hours the config's protocol needs. Each row's last column is its speed against the
baseline, the first mode in fp32 (eager fp32 by default), measured in the same run.

Each (table, data set, model) is built as its runs build it (the parameter-matched widths of
`stn params`), then trained on random images of its data set's shape with its resolved settings
(the table's train settings and overrides: batch size, optimiser, channels-last) for `--warmup`
untimed steps (the first compiled step compiles; compile graph takes at least its eager warm-up and the
recording) and `--steps` timed ones, in one loop that waits for the device only at its end, as a training
run's does (the mean step of that loop is the row's). The estimate is the sum over the table's runs (data
sets × models × seeds) of iterations / steps per second: training steps only, not evaluation, data loading
or start-up. With `--config config/paper.yaml` (the default) that is the paper's protocol.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from typing import Callable

import torch

from . import graphs
from .bench import call_times, sync_device
from .train import keep_freed_memory

MODES = {"cpu": ("none", "default"), "cuda": ("none", "graph")}  # the default --modes on each device
BENCH_BATCHES = 4  # the random training set's size, in batches


def training_step(model: torch.nn.Module, dataset: str, settings, mode: str, device: torch.device,
                  precision: str = "fp32") -> Callable[[], torch.Tensor]:
    """One training step of `model` (batch gather, forward, backward, optimiser step) under `settings`, compile
    `mode` and `precision` (fp32 or bf16), as a call: a run's own step (stn.train.TrainStep), on a set of
    BENCH_BATCHES batches of random images of `dataset`'s shape that lives on the device, as a run's does."""
    from .modules import param_groups
    from .paper import registry
    from .train import Batches, TrainStep, batch_fetch, make_optimizer, wants_channels_last

    spec = registry.DATASETS[dataset]
    settings = dataclasses.replace(settings, compile=mode, precision=precision)
    model = model.to(device).train()
    channels_last = wants_channels_last(model, settings.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(settings.optimizer, param_groups(model, settings.lr, settings.loc_lr_mult), settings.lr,
                         settings.momentum, settings.weight_decay)
    n = BENCH_BATCHES * settings.batch_size
    g = torch.Generator().manual_seed(0)
    x_set = torch.randint(0, 256, (n, *((spec.channels,) if spec.channels > 1 else ()), spec.size, spec.size),
                          generator=g, dtype=torch.uint8).to(device)
    y_set = torch.randint(0, spec.classes, (n,), generator=g).to(device)
    batches = Batches(n, settings.batch_size, 0, device)
    step = TrainStep(model, opt, batch_fetch(x_set, y_set, device, channels_last), settings, device, resident=True,
                     log=lambda line: print(line, flush=True))
    return lambda: step(batches.next())


def untimed_steps(mode: str, warmup: int) -> int:
    """Steps to run before timing: `warmup`, and under compile graph at least its eager warm-up and the recording."""
    return max(warmup, graphs.WARMUP + 1) if mode == "graph" else warmup


def step_times(model: torch.nn.Module, dataset: str, settings, mode: str, device: torch.device, steps: int,
               warmup: int, precision: str = "fp32") -> tuple[float, float]:
    """(seconds the warm-up steps took, mean seconds of a step) of `training_step`'s step, timed as a loop of
    `steps` steps that waits for the device only at its end, as a training run's loop does (stn.train.LossWatch):
    on a GPU the host queues the next step while the device runs this one."""
    step = training_step(model, dataset, settings, mode, device, precision)
    warm, _ = call_times(step, device, 0, untimed_steps(mode, warmup))
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync_device(device)
    return warm, (time.perf_counter() - start) / steps


def table_config(path: str, tables: list[str]) -> dict:
    """The config's YAML as written: only the costed tables' sections are used, and they are checked where
    their settings are resolved; the whole-config checks (that SVHN or CUB is on disk) do not apply here."""
    from .config import read_config

    config = read_config(path)
    if missing := [t for t in tables if t not in config]:
        raise SystemExit(f"{path} has no section {', '.join(missing)}")
    return config


def job_model(config: dict, table: str, dataset: str, model: str, params: dict | None = None):
    """(the built model, its TrainSettings) of `table`'s first-seed run of `model` on `dataset` in `config`,
    built as the runs build it (the parameter-matched widths of `stn params`; pass `params`, the table's
    `classification.param_table`, to reuse it across models)."""
    from .experiments import classification
    from .paper import registry
    from .settings import TrainSettings, resolve_job

    section = config[table]
    grid = registry.experiment(table).grid(section, config)
    if params is None:
        params = classification.param_table([dataset], list(grid.models), section["param_target"], section.get("net"))
    settings = TrainSettings.from_dict(resolve_job(config, table, dataset, model, grid.seeds[0])["settings"])
    return classification.build_model(dataset, model, params, seed=0), settings


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """torch.backends.cudnn.benchmark set to `on` inside, and back to what it was after."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stn.bench train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/paper.yaml", help="the config whose protocol to cost")
    parser.add_argument("--tables", default="table1", help="comma-separated classification tables (table1, table4)")
    parser.add_argument("--datasets", default=None, help="comma-separated data sets (default: the table's)")
    parser.add_argument("--models", default=None, help="comma-separated models (default: the table's)")
    parser.add_argument("--modes", default=None,
                        help="comma-separated compile settings (none = eager; default and reduce-overhead: "
                             "torch.compile; graph: the whole step as one CUDA graph) (default: none and default on "
                             "the CPU, none and graph on a GPU)")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma-separated step arithmetics, fp32 and/or bf16 (default: both)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model and mode (one loop; its mean step is used)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiled one compiles)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its convolution algorithms for each shape first (torch.backends.cudnn."
                        "benchmark; training runs leave it off): whether the GPU-bound CNN steps gain from it")
    args = parser.parse_args(argv)
    from .experiments import classification
    from .paper import registry
    from .settings import COMPILE_MODES, PRECISIONS
    from .train import resolve_device

    if args.steps < 1 or args.warmup < 1:
        parser.error("--steps and --warmup must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    modes = args.modes.split(",") if args.modes else list(MODES[device.type])
    if bad := [m for m in modes if m not in COMPILE_MODES]:
        parser.error(f"--modes: {bad} not among {list(COMPILE_MODES)}")
    precisions = args.precisions.split(",")
    if bad := [p for p in precisions if p not in PRECISIONS]:
        parser.error(f"--precisions: {bad} not among {list(PRECISIONS)}")
    # fp32 is timed even when not asked for: it is the baseline of the ratios
    variants = [(mode, precision) for mode in modes for precision in dict.fromkeys(["fp32", *precisions])]
    tables = args.tables.split(",")
    if bad := [t for t in tables if t not in registry.EXPERIMENTS or registry.experiment(t).module != "classification"]:
        parser.error(f"--tables: {bad}: this benchmark builds the classification tables (table1, table4); "
                     "the other experiments' models are not costed yet")
    config = table_config(args.config, tables)
    keep_freed_memory()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"== {where}, {args.config}: mean step of a loop of {args.steps} training steps after {args.warmup} untimed ones "
          f"(random images of each data set's shape; the first compiled step compiles, so its warm-up is long); "
          f"x base: speed against {modes[0]} fp32 in this run{'; cuDNN autotuning on' if args.cudnn_benchmark else ''}")
    header = (f"{'table':<7} {'data set':<8} {'model':<14} {'params':>8} {'batch':>5} {'mode':<16} {'prec':<5} "
              f"{'warm-up s':>9} {'ms/step':>9} {'steps/s':>8} {'hours, its runs':>15} {'x base':>7}")
    print(header + "\n" + "-" * len(header), flush=True)
    for name in tables:
        section = config[name]
        grid = registry.experiment(name).grid(section, config)
        datasets = args.datasets.split(",") if args.datasets else grid.datasets
        models = args.models.split(",") if args.models else grid.models
        if bad := [d for d in datasets if d not in grid.datasets] + [m for m in models if m not in grid.models]:
            parser.error(f"{bad} not trained by {name} in {args.config} (data sets {grid.datasets}, models {grid.models})")
        params = classification.param_table(datasets, list(grid.models), section["param_target"], section.get("net"))
        hours = dict.fromkeys(variants, 0.0)
        runs = steps_total = 0
        for dataset in datasets:
            for model in models:
                if not grid.has(dataset, model):
                    continue
                base = None
                for mode, precision in variants:
                    built, settings = job_model(config, name, dataset, model, params)  # a fresh model each time
                    with cudnn_benchmark(args.cudnn_benchmark):
                        warm, step = step_times(built.model, dataset, settings, mode, device, args.steps, args.warmup,
                                                precision)
                    base = base or step
                    cost = len(grid.seeds) * settings.iterations * step / 3600
                    hours[mode, precision] += cost
                    print(f"{name:<7} {dataset:<8} {model:<14} {built.params:>8} {settings.batch_size:>5} {mode:<16} "
                          f"{precision:<5} {warm:>9.1f} {step * 1e3:>9.2f} {1 / step:>8.1f} {cost:>15.2f} "
                          f"{base / step:>7.2f}", flush=True)
                runs += len(grid.seeds)
                steps_total += len(grid.seeds) * settings.iterations
        for mode, precision in variants:
            h = hours[mode, precision]
            ratio = f" ({hours[variants[0]] / h:.2f}x base)" if h else " (nothing measured)"
            print(f"{name}: {runs} runs, {steps_total:,} training steps: {h:.2f} device-hours with compile {mode} in "
                  f"{precision} on {where}{ratio}")
    return 0
