"""`python -m stn.bench grid`: the grid generators that the fused sampler does not cover (projective, TPS)
against the same maths through autograd's own ops (`stn.transforms.basis_points_reference`).

Every case is a grid a model generates (batch 64 in the default config, 256 in the paper's): forward, and
forward+backward to θ. Each time is the fastest of `--repeats` calls; the ratio is the reference's time over
ours, measured in the same run (> 1: ours is faster).
"""
from __future__ import annotations

import statistics

import torch

from .bench import fastest, ratio_setup
from .transforms import Projective, ThinPlateSpline, Transform, basis_points_reference

# (which models generate it, transform, batch, output side)
CASES = [
    ("ST-*-Proj, R/P/E", Projective(), 64, 28),
    ("ST-FCN-Proj, RTS/ADD", Projective(), 64, 42),
    ("ST-*-Proj, TC", Projective(), 64, 60),
    ("ST-FCN-Proj, RTS, paper batch", Projective(), 256, 42),
    ("ST-*-TPS, R/P/E", ThinPlateSpline(4), 64, 28),
    ("ST-FCN-TPS, RTS/ADD", ThinPlateSpline(4), 64, 42),
    ("ST-*-TPS, TC", ThinPlateSpline(4), 64, 60),
]


def _generators(t: Transform, size: int, device):
    basis = t._cached_basis((size, size), False, device, torch.float32)
    ours = lambda th: t.grid(th, (size, size))  # noqa: E731
    reference = lambda th: basis_points_reference(t.matrix(th), basis, t.divide_eps)  # noqa: E731
    return reference, ours


def main(argv: list[str] | None = None) -> int:
    args, device, where = ratio_setup("python -m stn.bench grid", __doc__, argv)
    print(f"== {where}: grid generation, ms = fastest of {args.repeats} calls; "
          "x = the autograd reference's ms / ours (> 1: faster)")
    header = f"{'case':<32} {'grid':<16} {'fwd ref':>8} {'ours':>8} {'x':>6} {'fwd+bwd ref':>12} {'ours':>8} {'x':>6}"
    print(header + "\n" + "-" * len(header), flush=True)
    ratios = []
    for name, t, n, size in CASES:
        t = t.to(device)
        theta = (t.identity(n, device=device) + 0.05 * torch.randn(n, t.num_params, device=device)).requires_grad_()
        grad = torch.randn(n, size * size, 2, device=device)
        fns = _generators(t, size, device)
        row = [fastest(lambda: f(theta.detach()), device, args.repeats) for f in fns]
        row += [fastest(lambda: torch.autograd.grad(f(theta).reshape(grad.shape), theta, grad), device, args.repeats)
                for f in fns]
        ratios += [row[0] / row[1], row[2] / row[3]]
        print(f"{name:<32} {type(t).__name__[:10] + f' {size}²':<16} {row[0] * 1e3:>8.3f} {row[1] * 1e3:>8.3f} "
              f"{row[0] / row[1]:>6.2f} {row[2] * 1e3:>12.3f} {row[3] * 1e3:>8.3f} {row[2] / row[3]:>6.2f}", flush=True)
    print(f"geometric mean speed-up {statistics.geometric_mean(ratios):.2f}x over {len(ratios)} measurements")
    return 0
