"""Does eq. (8) prefer the digits to what the co-localisation ended on? (docs/CHOICES.md, "Co-localisation").

For every finished Table 5 run (variant, class) under RESULTS it evaluates eq. (8), averaged over
`--draws` random pairings and random patches, with the crops at three places: the true digit boxes,
the boxes the optimisation ended on (trajectory.json) and the canvas centre. It also prints the
spread of the crops' encodings (mean squared distance to their mean): near 0 every crop encodes
alike, e.g. all of them on blank background. A class whose true-box loss is barely below its
learnt one offers eq. (8) little to descend towards. Run it after `snakemake`:

    .venv/bin/python scripts/coloc_minima.py
    .venv/bin/python scripts/coloc_minima.py --results results --variants TC --draws 50
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from stn import ops
from stn.experiments import colocalisation as co
from stn.io import read_json
from stn.paper import registry
from stn.settings import ENCODER_RUN
from stn.transforms import Attention


def crops_at(x: torch.Tensor, boxes) -> torch.Tensor:
    """Digit-sized crops (N, 1, 28, 28) centred on the pixel boxes (N, 4)."""
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32))
    centre = (b[:, :2] + b[:, 2:]) / co.CANVAS - 1
    theta = torch.cat([torch.full((len(b), 1), co.CROP / co.CANVAS), centre], 1)
    return ops.sample(x, Attention().grid(theta, (co.CROP, co.CROP)))


def eq8(encoder, x: torch.Tensor, crops: torch.Tensor, margin: float, draws: int, seed: int = 0) -> tuple[float, float]:
    """(eq. 8 averaged over `draws` pairings and random patches, spread of the crops' encodings)."""
    gen = torch.Generator().manual_seed(seed)
    e = encoder(crops)
    losses = [co.triplet_loss(e, e[co.derangement(len(x), gen)], encoder(co.random_crops(x, gen)), margin * encoder.weight_of())
              for _ in range(draws)]
    return float(torch.stack(losses).mean()), float((e - e.mean(0)).pow(2).sum(1).mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path("results"))
    ap.add_argument("--variants", nargs="+", default=sorted(co.CLUTTER))
    ap.add_argument("--draws", type=int, default=20, help="pairings and random patches averaged per loss")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = read_json(a.results / registry.SPEC_FILE.format(experiment="table5"))
    margin = spec["section"]["optimise"]["margin"]
    encoders = {}  # e() per variant, as its runs used it
    for variant, weights in spec["section"]["encoders"].items():
        encoders[variant] = co.load_encoder(weights, {d: registry.aux_dir(a.results, "table5", ENCODER_RUN.format(dataset=d))
                                                      / "model.pt" for d in weights},
                                            co.encoder_precision(spec["section"]["optimise"], variant))
    print(f"{'set':<4} {'class':>5} {'localised':>9} {'eq8 true':>9} {'learnt':>7} {'centre':>7} "
          f"{'spread true':>11} {'learnt':>7}")
    with torch.no_grad():
        g = spec["grid"]
        for variant, digit, seed in ((v, d, s) for v in g["datasets"] if v in a.variants for d in g["models"]
                                     for s in g["seeds"]):
            run = registry.run_dir(a.results, "table5", variant, digit, seed)
            if not (run / "trajectory.json").exists():
                continue
            x = torch.from_numpy(np.load(run / "images.npz")["images"]).float().div(255).unsqueeze(1)
            tr = json.loads((run / "trajectory.json").read_text())
            centre = [[co.CANVAS / 2 - co.CROP / 2, co.CANVAS / 2 - co.CROP / 2,
                       co.CANVAS / 2 + co.CROP / 2, co.CANVAS / 2 + co.CROP / 2]] * len(x)
            (lt, st), (lp, sp), (lc, _) = (eq8(encoders[variant], x, crops_at(x, b), margin, a.draws)
                                           for b in (tr["true_boxes"], tr["predicted_boxes"], centre))
            print(f"{variant:<4} {digit:>5} {tr['localised']:>8.0f}% {lt:>9.3f} {lp:>7.3f} {lc:>7.3f} "
                  f"{st:>11.3f} {sp:>7.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
