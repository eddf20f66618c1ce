"""How much of a Table 5 class's result is its image set, and how much the optimiser's draws? (docs/CHOICES.md,
"Co-localisation": the seeds table).

A Table 5 run's seed picks both its 100 images (`make_images`) and the optimiser's random draws (the
localiser's initial weights, the pairings m(n) and the random patches of eq. 8). This runs one class with
the images of one seed and the optimiser of another, for every pair asked for, exactly as the pipeline's
run does (the spec's `optimise` settings, the variant's e() from the pipeline's encoder runs), and prints the
percent localised: image seed = optimiser seed reproduces the pipeline's run of that seed. Uses the
pipeline's outputs, so run it after `snakemake`; one thread per run, ~2-3 min a TC run on the default config.
`--steps` runs longer or shorter than the spec, and `--at` adds the percent localised at earlier steps (every step up
to the last is the same computation whatever the budget, so one long run reads as several shorter ones). The last
column is eq. 8's mean loss over the run's last `--loss-steps` steps, which needs no true boxes: within an image set,
the draws that localise worst have had the highest (docs/CHOICES.md, "Co-localisation").

    .venv/bin/python scripts/coloc_seeds.py --variant TC --digit 1 --image-seeds 0 2 --optimiser-seeds 0 1 2
    .venv/bin/python scripts/coloc_seeds.py --digit 1 --optimiser-seeds 0 1 2 3 --steps 440 --at 320 400
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stn.data import mnist as mnist_data
from stn.experiments import colocalisation as co
from stn.io import read_json
from stn.paper import registry
from stn.settings import ENCODER_RUN


def pipeline_inputs(results: Path, variant: str) -> tuple[dict, co.Encoder, dict]:
    """What the pipeline's runs of `variant` read: the spec's `optimise` settings, e() from the encoder runs, MNIST."""
    spec = read_json(results / "specs" / "table5.json")
    weights = spec["section"]["encoders"][variant]
    models = {d: registry.aux_dir(results, "table5", ENCODER_RUN.format(dataset=d)) / "model.pt" for d in weights}
    encoder = co.load_encoder(weights, models, co.encoder_precision(spec["settings"], variant))
    return spec["settings"], encoder, mnist_data.load(results / "data" / "mnist.npz")


def localised(settings: dict, encoder: co.Encoder, mnist: dict, variant: str, digit: int, image_seed: int,
              optimiser_seed: int, at: tuple[int, ...], loss_steps: int) -> tuple[list[float], float]:
    """Percent of class `digit`'s images of `image_seed` localised by an optimisation drawn with `optimiser_seed`: at
    each step of `at` (multiples of settings["record_every"]), then at the end; and eq. 8's mean loss over the last
    `loss_steps` steps (a multiple of settings["record_every"])."""
    data = co.make_images(mnist, digit, variant, settings["images"], image_seed)
    result = co.optimise(data["images"], data["boxes"], encoder, settings, optimiser_seed, log=lambda s: None)
    frames = result["trajectory"]
    recorded = {frame["step"]: frame["localised"] for frame in frames}
    # each frame's loss is the mean over the steps since the frame before: weight it by their number
    last = [(frame["loss"], frame["step"] - before["step"]) for before, frame in zip(frames, frames[1:])
            if frame["step"] > settings["steps"] - loss_steps]
    final_loss = sum(loss * n for loss, n in last) / sum(n for _, n in last)
    return [recorded[step] for step in at] + [result["localised"]], final_loss


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--variant", choices=sorted(co.CLUTTER), default="TC")
    ap.add_argument("--digit", type=int, default=1)
    ap.add_argument("--image-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--optimiser-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, help="optimisation steps per run (default: the spec's)")
    ap.add_argument("--at", type=int, nargs="+", default=[], help="also print the percent localised at these steps")
    ap.add_argument("--loss-steps", type=int, help="the last column: eq. 8's mean loss over this many last steps "
                                                   "(default: 40, or the whole run where it is shorter)")
    a = ap.parse_args(argv)
    for path in (a.results / "specs" / "table5.json", a.results / "data" / "mnist.npz"):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run the pipeline first (snakemake --cores all)")
    torch.set_num_threads(a.threads)
    settings, encoder, mnist = pipeline_inputs(a.results, a.variant)
    settings = {**settings, "steps": a.steps or settings["steps"]}
    every = settings["record_every"]
    wrong = [s for s in a.at if s % every or not 0 <= s <= settings["steps"]]
    if wrong:
        raise SystemExit(f"--at {wrong}: the runs record every {every} steps up to {settings['steps']}")
    a.loss_steps = a.loss_steps or min(40, settings["steps"] // every * every)
    if a.loss_steps % every or not 0 < a.loss_steps <= settings["steps"]:
        raise SystemExit(f"--loss-steps {a.loss_steps}: must be a positive multiple of the runs' record_every "
                         f"({every}) up to their {settings['steps']} steps")
    print(" ".join(["variant digit image_seed optimiser_seed", *(f"at_{s}" for s in a.at), "localised_%",
                    f"loss_last_{a.loss_steps}"]))
    for image_seed in a.image_seeds:
        for optimiser_seed in a.optimiser_seeds:
            rates, loss = localised(settings, encoder, mnist, a.variant, a.digit, image_seed, optimiser_seed,
                                    tuple(a.at), a.loss_steps)
            print(f"{a.variant} {a.digit} {image_seed} {optimiser_seed} " + " ".join(f"{r:.0f}" for r in rates)
                  + f" {loss:.3f}", flush=True)


if __name__ == "__main__":
    main()
