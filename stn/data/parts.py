"""A synthetic stand-in for CUB-200-2011 (Table 3), made from MNIST: classes told apart by two small parts.

Each sample is a large canvas (LARGE px, the stand-in's "448") holding two small MNIST digits, the
*parts*, one in the left half and one in the right half at uniform places, each scaled to a side of
U(PART_MIN, PART_MAX) px and rotated U(-15°, 15°), among CLUTTER fragments of other digits drawn at
the same scale. The class is the ordered pair (left digit, right digit) of digits 0..DIGITS-1, so
DIGITS² classes: as a bird's species can hang on which colour is on the head and which on the wing,
a model must know which digit is where, not only which digits are present. The small set (the
stand-in's "224") is the same canvas downscaled 2× (2×2 averages), where the parts are 6-9 px and
hard to read: resolution matters, as on CUB.

The parts' boxes (x0, y0, x1, y1 in large-canvas pixels, left part first) are stored beside the images
(`boxes_<split>`, (N, 2, 4)), so that a figure and a metric can ask whether each part fell inside a
different attention crop. Rendered with the library's own affine grid and sampler. It is a stand-in:
its numbers say nothing about birds and are never printed as if comparable.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import ops
from ..transforms import Affine
from .distort import BATCH, _to_uint8, split_mnist

LARGE = 96  # the large canvas; the small set is LARGE // 2
DIGITS = 5  # parts are digits 0..DIGITS-1; classes are the DIGITS² ordered pairs
PART_MIN, PART_MAX = 14.0, 18.0  # side of a part's 28-px MNIST square, px of the large canvas
INK = 20 / 28  # the part of an MNIST square its ink occupies (MNIST centres a 20-px box)
CLUTTER = 8  # fragments of other digits per canvas
FRAGMENT = 0.5  # a fragment's window side, as a fraction of the digit's square
MAX_ANGLE = 15.0
BAND = 0.5  # the parts' centres lie in the middle BAND of the canvas height
CLASSES = DIGITS * DIGITS


def _theta(centre: torch.Tensor, side: torch.Tensor, angle: torch.Tensor, size: int) -> torch.Tensor:
    """θ (N, 6): canvas [-1, 1] coordinates -> the digit's [-1, 1] coordinates, for a digit whose 28-px
    square has side `side` px, centre `centre` (N, 2) px and rotation `angle` on a `size` px canvas."""
    c, s = torch.cos(angle), torch.sin(angle)
    k = size / side  # canvas units per digit unit
    # digit coords = Rᵀ (k u + (size - 2 centre) / side)
    off = (size - 2 * centre) / side[:, None]
    a = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2) * k[:, None, None]
    t = torch.stack([c * off[:, 0] + s * off[:, 1], -s * off[:, 0] + c * off[:, 1]], -1)
    return torch.cat([a, t[..., None]], 2).reshape(-1, 6).float()


def _draw(digits: torch.Tensor, centre, side, angle, size: int) -> torch.Tensor:
    """Each digit (N, 1, 28, 28) in [0, 1] drawn on its own `size` canvas: (N, 1, size, size)."""
    return ops.sample(digits, Affine().grid(_theta(centre, side, angle, size), (size, size)), "bilinear")


def canvases(x: np.ndarray, y: np.ndarray, count: int, gen: torch.Generator) -> dict[str, np.ndarray]:
    """`count` canvases whose parts and clutter come from the digits (x, y) of one split."""
    pools = [np.flatnonzero(y == d) for d in range(DIGITS)]
    large, small, labels, boxes = [], [], [], []
    u = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    for start in range(0, count, BATCH):
        n = min(BATCH, count - start)
        pair = torch.randint(0, DIGITS, (n, 2), generator=gen)
        idx = np.stack([[pools[int(d)][int(r * len(pools[int(d)]))] for d, r in zip(row, rs)]
                        for row, rs in zip(pair.tolist(), u(n, 2).tolist())])
        canvas = torch.zeros(n, 1, LARGE, LARGE)
        box = torch.zeros(n, 2, 4, dtype=torch.float64)
        for k in range(2):  # k = 0: the left part, 1: the right part
            side = PART_MIN + (PART_MAX - PART_MIN) * u(n)
            ink = side * INK / 2  # half the ink box
            lo = ink + k * LARGE / 2
            cx = lo + u(n) * (LARGE / 2 - 2 * ink)
            cy = LARGE * (1 - BAND) / 2 + u(n) * LARGE * BAND
            angle = (u(n) * 2 - 1) * math.radians(MAX_ANGLE)
            digits = torch.from_numpy(x[idx[:, k]]).float().div(255).unsqueeze(1)
            canvas = torch.maximum(canvas, _draw(digits, torch.stack([cx, cy], 1), side, angle, LARGE))
            box[:, k] = torch.stack([cx - ink, cy - ink, cx + ink, cy + ink], 1)
        for _ in range(CLUTTER):
            side = PART_MIN + (PART_MAX - PART_MIN) * u(n)
            centre = u(n, 2) * LARGE
            angle = (u(n) * 2 - 1) * math.radians(MAX_ANGLE)
            others = torch.from_numpy(x[torch.randint(0, x.shape[0], (n,), generator=gen).numpy()]).float().div(255)
            drawn = _draw(others.unsqueeze(1), centre, side, angle, LARGE)
            # keep a window of FRAGMENT × the square's side around a random point of the digit's ink box
            half = side * FRAGMENT / 2
            at = centre + (u(n, 2) * 2 - 1) * (side * INK / 2)[:, None]
            grid = torch.arange(LARGE, dtype=torch.float64) + 0.5
            inside_x = (grid[None] - at[:, :1]).abs() <= half[:, None]
            inside_y = (grid[None] - at[:, 1:]).abs() <= half[:, None]
            mask = (inside_y[:, :, None] & inside_x[:, None, :]).float()[:, None]
            canvas = torch.maximum(canvas, drawn * mask)
        large.append(_to_uint8(canvas))
        small.append(_to_uint8(F.avg_pool2d(canvas, 2)))
        labels.append((pair[:, 0] * DIGITS + pair[:, 1]).numpy())
        boxes.append(box.numpy().astype(np.float32))
    return {"large": np.concatenate(large), "small": np.concatenate(small), "y": np.concatenate(labels).astype(np.int64),
            "boxes": np.concatenate(boxes)}


def generate(mnist: dict[str, np.ndarray], seed: int, counts: dict[str, int],
             progress: Callable[[str], None] = print) -> dict[str, dict[str, np.ndarray]]:
    """Both stand-in sets ("small" and "large"), each with x_/y_/boxes_ arrays for train, val and test
    (parts and clutter from MNIST's own split of digits). Boxes are in large-canvas pixels in both."""
    out: dict[str, dict[str, np.ndarray]] = {"small": {}, "large": {}}
    for index, (split, (x, y)) in enumerate(split_mnist(mnist).items()):
        gen = torch.Generator().manual_seed(seed * 1000 + 700 + index)
        made = canvases(x, y, counts[split], gen)
        progress(f"parts/{split}: {counts[split]}")
        for key in ("small", "large"):
            out[key].update({f"x_{split}": made[key], f"y_{split}": made["y"], f"boxes_{split}": made["boxes"]})
    return out
