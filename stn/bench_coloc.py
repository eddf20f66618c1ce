"""`python -m stn.bench coloc`: what a Table 5 class costs, per optimisation step and per class, with fresh random
patches (the baseline, A.2's) against a bank of patches encoded once (`optimise.random_bank`) and against e()'s
costly CNNs joining late (`optimise.encoder_start`); and, where e() has a CNN on a larger canvas (TC's), that CNN
reading the whole zero-padded canvas (the baseline) against `PaddedCrop`, which computes only where the crop reaches.

For each variant of the config, e() is built as its runs build it (table5.encoders: Table 1's CNNs at the widths
`stn params` gives them, random weights: the time does not depend on them) over random canvases of the set's size.
Per CNN subset in use it times the optimiser's whole step (localise, e() of the crops and of the random patches,
eq. 8, backward, update) with fresh patches and with a bank, the two back to back in each of `--steps` rounds
(median), and once per variant the bank's one-off encoding; then the seconds a class takes under the config's schedule and bank
(or `--bank`, `--start`), and the ratio to fresh patches with every CNN from step 0.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from .bench import call_times


def _encoder(config: dict, variant: str, canvas: bool = False):
    """e() of `variant` as its runs build it; with `canvas`, each larger data set's CNN reads the whole zero-padded
    canvas (the baseline of `co.PaddedCrop`, which computes only where the crop reaches)."""
    from torch import nn

    from .experiments import colocalisation as co
    from .experiments.classification import build_model, param_table
    from .paper import registry

    weights = config["table5"]["encoders"][variant]
    section = config["table1"]
    table = param_table(list(weights), list(section["models"]), section["param_target"], section.get("net"))
    cnns = [co.crop_encoder(build_model(d, "CNN", table, seed=0).model, registry.DATASETS[d].size) for d in weights]
    if canvas:
        cnns = [nn.Sequential(nn.ZeroPad2d(c.offset(co.CROP)), *c.cnn) if isinstance(c, co.PaddedCrop) else c for c in cnns]
    return co.Encoder(cnns, list(weights.values()), list(weights), co.encoder_precision(config["table5"]["optimise"], variant))


def _canvases(settings: dict) -> torch.Tensor:
    """Random canvases standing in for a class's images (the time does not depend on their content)."""
    from .experiments import colocalisation as co

    torch.manual_seed(0)
    return torch.rand(settings["images"], 1, co.CANVAS, co.CANVAS)


def bank_seconds(encoder, settings: dict, bank_size: int) -> float:
    """Seconds that encoding a bank of `bank_size` random patches per image takes (once per class)."""
    from .experiments import colocalisation as co

    x, gen = _canvases(settings), torch.Generator().manual_seed(0)
    return call_times(lambda: co.random_bank(x, encoder, bank_size, gen), torch.device("cpu"), 1, warmup=0)[1][0]


def step_calls(encoder, settings: dict, only: tuple[int, ...], side: int = 28):
    """(fresh, bank): one optimiser step with the CNNs `only`, drawing fresh patches or one stored patch per image,
    its window sampled onto `side`² pixels (28: a digit-sized window; larger: `resolution: native` early on)."""
    from .experiments import colocalisation as co
    from .train import make_optimizer

    x = _canvases(settings)
    st = co.localiser(settings["centre"] != "none")
    opt = make_optimizer(settings["optimizer"], st.parameters(), settings["lr"], settings["momentum"])
    gen = torch.Generator().manual_seed(0)
    bank = co.random_bank(x, encoder, 1, gen)

    def step(patches):
        crops, _ = co.localise(st, x, side / co.CANVAS, side)
        e_rand = co.random_encodings(x, encoder, only, patches, gen)
        e_crop = encoder(crops, only)
        loss = co.triplet_loss(e_crop, e_crop[co.derangement(len(x), gen)], e_rand, settings["margin"])
        opt.zero_grad()
        loss.backward()
        opt.step()

    return (lambda: step(None)), (lambda: step(bank))


def back_to_back(calls, rounds: int) -> list[float]:
    """Median seconds of each call, after one warm-up each, the calls timed back to back in each of `rounds` rounds
    (in reverse order every other round)."""
    for fn in calls:
        call_times(fn, torch.device("cpu"), 0)  # warm-up
    times: list[list[float]] = [[] for _ in calls]
    for i in range(rounds):
        order = range(len(calls)) if i % 2 == 0 else reversed(range(len(calls)))
        for k in order:
            times[k].append(call_times(calls[k], torch.device("cpu"), 1, warmup=0)[1][0])
    return [statistics.median(t) for t in times]


def step_seconds(encoder, settings: dict, only: tuple[int, ...], rounds: int) -> tuple[float, float]:
    """(fresh, bank) median seconds of one optimiser step with the CNNs `only` (a step's cost does not depend on
    the bank's size: it draws one stored patch per image)."""
    fresh, bank = back_to_back(step_calls(encoder, settings, only), rounds)
    return fresh, bank


def side_seconds(encoder, settings: dict, side: int, rounds: int) -> tuple[float, float]:
    """(28 px, `side` px) median seconds of one optimiser step with fresh patches and every CNN of e(), its windows
    sampled onto 28² and onto `side`² pixels (`resolution: native`: the anneal's first steps)."""
    from .experiments import colocalisation as co

    everything = tuple(range(len(encoder.cnns)))
    small, large = back_to_back([step_calls(encoder, settings, everything, n)[0] for n in (co.CROP, side)], rounds)
    return small, large


def window_seconds(canvas, windowed, settings: dict, rounds: int) -> tuple[float, float]:
    """(canvas, windowed) median seconds of one optimiser step with fresh patches and every CNN of e(), for e()
    reading the zero-padded canvas and for e() computed only where the crops reach."""
    everything = tuple(range(len(windowed.cnns)))
    first, second = back_to_back([step_calls(e, settings, everything)[0] for e in (canvas, windowed)], rounds)
    return first, second


def main(argv: list[str] | None = None) -> int:
    from .config import read_config
    from .experiments import colocalisation as co

    parser = argparse.ArgumentParser(prog="python -m stn.bench coloc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--variants", default=None, help="comma-separated Table 5 variants (default: the config's)")
    parser.add_argument("--bank", type=int, default=None, help="patches per image in the bank (default: the config's "
                                                                 "optimise.random_bank, else 16)")
    parser.add_argument("--start", nargs="*", default=None, metavar="DATASET=STEP",
                        help="optimise.encoder_start in place of the config's (none: every CNN from step 0)")
    parser.add_argument("--steps", type=int, default=10, help="timed rounds per CNN subset (their median is used)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a pipeline job uses 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = read_config(args.config)  # as written: only table1 and table5 are read
    settings = dict(config["table5"]["optimise"])
    bank_size = args.bank or settings.get("random_bank") or 16
    starts = settings.get("encoder_start") or {}
    if args.start is not None:
        starts = {k: int(v) for k, v in (item.split("=", 1) for item in args.start)}
    variants = args.variants.split(",") if args.variants else list(config["table5"]["variants"])
    steps = settings["steps"]
    print(f"== CPU, {torch.get_num_threads()} threads: one Table 5 class, {settings['images']} images, {steps} steps; "
          f"ms = median of {args.steps} rounds timing fresh patches and a bank back to back; a bank of {bank_size} "
          f"patches per image; encoder_start {starts or 'none'}; e() in "
          + ", ".join(f"{co.encoder_precision(settings, v)} on {v}" for v in variants))
    header = f"{'variant':<8} {'CNNs in use':<14} {'steps':>6} {'fresh ms':>9} {'bank ms':>8} {'x':>5}"
    print(header + "\n" + "-" * len(header), flush=True)
    for variant in variants:
        encoder = _encoder(config, variant)
        in_use = co.encoder_schedule(encoder, starts)
        phases: dict[tuple[int, ...], int] = {}
        for step in range(steps):
            phases[in_use(step)] = phases.get(in_use(step), 0) + 1
        everything = tuple(range(len(encoder.cnns)))
        measured = {}
        for only in dict.fromkeys([everything, *phases]):
            measured[only] = step_seconds(encoder, settings, only, args.steps)
            fresh, bank = measured[only]
            names = "+".join(encoder.names[i] for i in only)
            print(f"{variant:<8} {names:<14} {phases.get(only, 0):>6} {fresh * 1e3:>9.0f} {bank * 1e3:>8.0f} "
                  f"{fresh / bank:>5.2f}", flush=True)
        built = bank_seconds(encoder, settings, bank_size)
        baseline = steps * measured[everything][0]
        fresh_sched = sum(n * measured[only][0] for only, n in phases.items())
        bank_sched = built + sum(n * measured[only][1] for only, n in phases.items())
        print(f"{variant:<8} per class: fresh patches, every CNN from step 0 (baseline) {baseline:.0f} s; this schedule "
              f"{fresh_sched:.0f} s ({baseline / fresh_sched:.2f}x); with the bank ({built:.1f} s to build) "
              f"{bank_sched:.0f} s ({baseline / bank_sched:.2f}x)", flush=True)
        if co.crop_resolution(settings) == "native" and encoder.largest() > co.CROP:
            side = encoder.largest()
            at28, large = side_seconds(encoder, settings, side, args.steps)
            print(f"{variant:<8} resolution native: a step with {side} px crops (the anneal's first steps) {large * 1e3:.0f} "
                  f"ms, with {co.CROP} px crops (from the end of the anneal) {at28 * 1e3:.0f} ms: {large / at28:.2f}x",
                  flush=True)
        if any(isinstance(c, co.PaddedCrop) for c in encoder.cnns):
            canvas, windowed = window_seconds(_encoder(config, variant, canvas=True), encoder, settings, args.steps)
            print(f"{variant:<8} e() on the zero-padded canvas (baseline) {canvas * 1e3:.0f} ms a step (fresh patches), "
                  f"computed only where the crops reach (co.PaddedCrop, what runs) {windowed * 1e3:.0f} ms: "
                  f"{canvas / windowed:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
