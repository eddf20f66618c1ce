"""Which way does eq. (8) push the co-localisation crops? (docs/CHOICES.md, "Co-localisation").

Places every image's crop window a fraction f of the way from the canvas centre (f = 0) to its
digit (f = 1), then averages the gradient of eq. (8) with respect to each window's (tx, ty) over
many of the optimiser's own steps (each a random pairing m(n) != n and random patches). `--window`
sets the window's side relative to the canvas: 28/84 (the default) is A.2's digit-sized crop, 1 the
whole canvas where the pipeline's shrinking window starts.
For each f it prints how well the descent direction points at the digit: the mean cosine, and
the share of images whose descent has a component towards their digit. Uses the pipeline's
outputs (MNIST and a trained Table 1 CNN), so run it after `snakemake`.

    .venv/bin/python scripts/coloc_probe.py --digits 2 8
    .venv/bin/python scripts/coloc_probe.py --window 1 --encoder results/runs/table1/P/CNN/seed1/model.pt --encoder-dataset P
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from stn import ops
from stn.data import mnist as mnist_data
from stn.experiments import colocalisation as co
from stn.experiments.classification import build_model
from stn.io import read_json
from stn.paper import registry
from stn.transforms import Attention


def descent_alignment(x: torch.Tensor, boxes: torch.Tensor, encoder: co.Encoder, fraction: float,
                      draws: int, gen: torch.Generator, s: float = co.CROP / co.CANVAS) -> tuple[float, float, float]:
    """(mean distance to the digits in px, mean cosine, % pointing towards the digit) at one f,
    for windows of side s (relative to the canvas)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / co.CANVAS - 1  # digit centres in normalised coordinates
    t = centre * fraction
    if s < 1:
        t = t.clamp(-(1 - s), 1 - s)
    t = t.requires_grad_(True)
    e = encoder(ops.sample(x, Attention(s).grid(t, (co.CROP, co.CROP))))
    grad = torch.zeros_like(t)
    for _ in range(draws):
        with torch.no_grad():
            e_rand = encoder(co.random_crops(x, gen))
        loss = co.triplet_loss(e, e[co.derangement(len(x), gen)], e_rand, encoder.weight_of())
        grad += torch.autograd.grad(loss, t, retain_graph=True)[0]
    towards = centre - t.detach()
    cos = F.cosine_similarity(-grad, towards, dim=1)
    return (float(towards.norm(dim=1).mean() * co.CANVAS / 2), float(cos.mean()), float((cos > 0).float().mean() * 100))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mnist", type=Path, default=Path("results/data/mnist.npz"))
    ap.add_argument("--encoder", type=Path, default=Path("results/runs/table1/R/CNN/seed1/model.pt"))
    ap.add_argument("--params", type=Path, default=Path("results/tables/table1_params.json"))
    ap.add_argument("--encoder-dataset", choices=list(registry.experiment("table1").datasets), default="R",
                    help="the Table 1 data set the encoder was trained on")
    ap.add_argument("--variant", choices=sorted(co.CLUTTER), default="T")
    ap.add_argument("--digits", type=int, nargs="+", default=[2])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--window", type=float, default=co.CROP / co.CANVAS,
                    help="the window's side relative to the canvas (28/84: digit-sized; 1: the whole canvas)")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--draws", type=int, default=50, help="optimiser steps averaged per gradient")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    for path in (a.mnist, a.encoder, a.params):
        if not path.exists():
            raise SystemExit(f"{path} is missing: run the pipeline (snakemake) first, or pass its location")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cnn = build_model(a.encoder_dataset, "CNN", read_json(a.params)).model
    cnn.load_state_dict(torch.load(a.encoder, map_location="cpu", weights_only=False)["state_dict"])
    encoder = co.Encoder([co.crop_encoder(cnn, registry.DATASETS[a.encoder_dataset].size)], [1.0])
    mnist = mnist_data.load(a.mnist)
    print("digit  f     distance px  mean cos  % towards digit")
    for digit in a.digits:
        data = co.make_images(mnist, digit, a.variant, a.images, a.seed)
        x = torch.from_numpy(data["images"]).float().div(255).unsqueeze(1)
        boxes = torch.from_numpy(data["boxes"]).float()
        gen = torch.Generator().manual_seed(a.seed)
        for f in a.fractions:
            dist, cos, share = descent_alignment(x, boxes, encoder, f, a.draws, gen, a.window)
            print(f"{digit:5d}  {f:4.2f}  {dist:11.1f}  {cos:+8.2f}  {share:15.0f}", flush=True)


if __name__ == "__main__":
    main()
