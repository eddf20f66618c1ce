"""`python -m stn.bench pool`: stn.modules.avg_pool against torch's F.avg_pool2d / avg_pool3d, and
stn.ops.relu_max_pool2d (ReLU and 2×2 max pooling in one op) against F.max_pool2d(F.relu(x), 2), and
stn.ops.fold (col2im into float32, the end of an ST-CNN's conv1 input gradient) against F.fold(columns.float()).

Every case is a pooling the models run (their batch sizes: 64 in the default config, 256 in the paper's; the
max-pooling cases in the dtype and layout of the default run's steps): forward, and forward+backward with the
input's gradient. Each time is the fastest of `--repeats` calls; the ratio is torch's time over ours, measured in
the same run (> 1: ours is faster).
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from . import ops
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


# (what pools it, input shape, channels-last, dtype): the conv blocks of the default run's CNNs
MAX_CASES = [
    ("TC CNN conv1, bf16", (64, 39, 52, 52), True, torch.bfloat16),
    ("RTS CNN conv1, bf16", (64, 39, 34, 34), True, torch.bfloat16),
    ("R/P/E ST-CNN conv1, bf16", (64, 46, 20, 20), True, torch.bfloat16),
    ("R/E CNN conv1, bf16", (64, 48, 20, 20), True, torch.bfloat16),
    ("ST-CNN loc net, TC, bf16", (64, 20, 26, 26), True, torch.bfloat16),
    ("SEQ128 conv1, bf16", (32, 8, 128, 128), True, torch.bfloat16),
    ("PARTS96 backbone, bf16", (32, 16, 96, 96), False, torch.bfloat16),
    ("Table 5 e(), TC CNN window, bf16", (100, 39, 36, 36), False, torch.bfloat16),
]


# (what folds, columns (N, C·k², L), output side, kernel, padding): InputGradConv2d's chunks in the default run (bf16)
FOLD_CASES = [
    ("R/P/E ST-CNN conv1", (32, 81, 20 * 20), 28, 9, 0),
    ("RTS ST-CNN conv1 (pooled, padded)", (29, 81, 21 * 21), 21, 9, 4),
    ("TC ST-CNN conv1 (pooled)", (32, 81, 22 * 22), 30, 9, 0),
]


def _input(shape: tuple[int, ...], channels_last: bool, make) -> tuple[torch.Tensor, str]:
    """A case's input, `make(shape)`, in its layout, and the input column's label."""
    x = make(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, "x".join(map(str, shape)) + (" CL" if channels_last else "")


def _row(name: str, layout: str, x, theirs, ours, device, repeats: int) -> list[float]:
    """Print one case's times (fwd and fwd+bwd, torch's and ours) and return its two ratios."""
    leaf = x.detach().requires_grad_()
    grad = torch.ones_like(theirs(x))
    row = [fastest(lambda: f(x), device, repeats) for f in (theirs, ours)]
    row += [fastest(lambda: torch.autograd.grad(f(leaf), leaf, grad), device, repeats) for f in (theirs, ours)]
    print(f"{name:<34} {layout:<22} {row[0] * 1e3:>10.3f} {row[1] * 1e3:>8.3f} {row[0] / row[1]:>6.2f} "
          f"{row[2] * 1e3:>14.3f} {row[3] * 1e3:>8.3f} {row[2] / row[3]:>6.2f}", flush=True)
    return [row[0] / row[1], row[2] / row[3]]


def main(argv: list[str] | None = None) -> int:
    args, device, where = ratio_setup("python -m stn.bench pool", __doc__, argv)
    header = f"{'case':<34} {'input':<22} {'fwd torch':>10} {'ours':>8} {'x':>6} {'fwd+bwd torch':>14} {'ours':>8} {'x':>6}"
    print(f"== {where}: average pooling (k in the input column), ms = fastest of {args.repeats} calls; "
          f"x = torch's ms / ours (> 1: faster)")
    print(header + "\n" + "-" * len(header), flush=True)
    ratios = []
    for name, shape, k, channels_last in CASES:
        x, layout = _input(shape, channels_last, lambda s: torch.rand(s, device=device))
        torch_pool = F.avg_pool2d if x.dim() == 4 else F.avg_pool3d
        ratios += _row(name, f"{layout} k{k}", x, lambda t: torch_pool(t, k), lambda t: avg_pool(t, k), device, args.repeats)
    if MAX_CASES:
        print(f"== ReLU + 2×2 max pooling: F.max_pool2d(F.relu(x), 2) against stn.ops.relu_max_pool2d")
        print(header + "\n" + "-" * len(header), flush=True)
    for name, shape, channels_last, dtype in MAX_CASES:
        x, layout = _input(shape, channels_last, lambda s: torch.randn(s, device=device).to(dtype))
        ratios += _row(name, layout, x, lambda t: F.max_pool2d(F.relu(t), 2), ops.relu_max_pool2d, device, args.repeats)
    if FOLD_CASES:
        print("== col2im into float32 of bf16 columns: F.fold(columns.float()) against stn.ops.fold (no backward)")
        print(f"{'case':<34} {'columns':<22} {'torch':>10} {'ours':>8} {'x':>6}", flush=True)
    for name, shape, side, k, pad in FOLD_CASES:
        cols = torch.randn(shape, device=device).to(torch.bfloat16)
        row = [fastest(lambda: f(cols), device, args.repeats) for f in (
            lambda c: F.fold(c.float(), (side, side), k, padding=pad), lambda c: ops.fold(c, (side, side), (k, k), (pad, pad)))]
        print(f"{name:<34} {'x'.join(map(str, shape)):<22} {row[0] * 1e3:>10.3f} {row[1] * 1e3:>8.3f} "
              f"{row[0] / row[1]:>6.2f}", flush=True)
        ratios.append(row[0] / row[1])
    print(f"geometric mean speed-up {statistics.geometric_mean(ratios):.2f}x over {len(ratios)} measurements")
    return 0
