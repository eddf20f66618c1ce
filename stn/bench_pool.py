"""`python -m stn.bench pool`: stn.modules.avg_pool against torch's F.avg_pool2d / avg_pool3d.

Every case is a pooling the models run (their batch sizes: 64 in the default config, 256 in the paper's):
forward, and forward+backward with the input's gradient. Each time is the fastest of `--repeats` calls;
the ratio is torch's time over ours, measured in the same run (> 1: ours is faster).
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from .bench import fastest, ratio_setup
from .modules import avg_pool

# (what pools it, input shape, k, channels-last)
CASES = [
    ("ST-FCN loc net, R/P/E", (64, 1, 28, 28), 2, False),
    ("ST after-pool, RTS", (64, 1, 42, 42), 2, False),
    ("ST after-pool, RTS, paper batch", (256, 1, 42, 42), 2, False),
    ("ST loc net, TC", (64, 1, 60, 60), 2, False),
    ("2xST-FCN after-pool, ADD", (64, 4, 42, 42), 2, False),
    ("ADD, channels-last", (64, 2, 42, 42), 2, True),
    ("3-D loc net", (16, 1, 60, 60, 60), 4, False),
    ("3-D baseline", (16, 1, 60, 60, 60), 2, False),
]


def main(argv: list[str] | None = None) -> int:
    args, device, where = ratio_setup("python -m stn.bench pool", __doc__, argv)
    print(f"== {where}: average pooling, ms = fastest of {args.repeats} calls; x = torch's ms / ours (> 1: faster)")
    header = f"{'case':<34} {'input':<22} {'k':>2} {'fwd torch':>10} {'ours':>8} {'x':>6} {'fwd+bwd torch':>14} {'ours':>8} {'x':>6}"
    print(header + "\n" + "-" * len(header), flush=True)
    ratios = []
    for name, shape, k, channels_last in CASES:
        x = torch.rand(shape, device=device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        torch_pool = F.avg_pool2d if x.dim() == 4 else F.avg_pool3d
        leaf = x.detach().requires_grad_()
        grad = torch.ones_like(torch_pool(x, k))
        row = []
        for pool in (torch_pool, avg_pool):
            row.append(fastest(lambda: pool(x, k), device, args.repeats))
        for pool in (torch_pool, avg_pool):
            row.append(fastest(lambda: torch.autograd.grad(pool(leaf, k), leaf, grad), device, args.repeats))
        ratios += [row[0] / row[1], row[2] / row[3]]
        layout = "x".join(map(str, shape)) + (" CL" if channels_last else "")
        print(f"{name:<34} {layout:<22} {k:>2} {row[0] * 1e3:>10.3f} {row[1] * 1e3:>8.3f} {row[0] / row[1]:>6.2f} "
              f"{row[2] * 1e3:>14.3f} {row[3] * 1e3:>8.3f} {row[2] / row[3]:>6.2f}", flush=True)
    print(f"geometric mean speed-up {statistics.geometric_mean(ratios):.2f}x over {len(ratios)} measurements")
    return 0
