"""A synthetic stand-in for SVHN (Table 2), made from MNIST: house-number-like digit sequences.

Each sample is 1-5 MNIST digits of one split (as many as SVHN's numbers have: mostly 2, LENGTHS), left to right, each scaled U(0.85, 1.15), rotated
U(-10°, 10°), jittered vertically by U(-3, 3) px and spaced 16-22 px apart (in 28-px digit units);
labels in reading order, class 10 for an empty position. Two sets, as SVHN's:
- 64px: the digits' union box expanded by 30% in x and y, resized to 64×64 (aspect not kept, as in
  SVHN's preprocessing);
- 128px: as SVHN's "inflated" crops (stn/data/svhn.py: a square of twice the 64px region's side around
  its centre), the same 64px picture shrunk to a square of side U(52, 76) px (64 on average, half the
  canvas) near the middle of a 128×128 canvas (its centre jittered by up to ±6.4 px in x and y), with
  ten 8×8 patches of other digits as clutter around it.
Rendered with the library's own affine grid and sampler, one warp per digit position. It is a
stand-in: its numbers say nothing about SVHN and are never printed as if comparable.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .. import ops
from ..transforms import Affine
from .distort import BATCH, DIGIT, _to_uint8, split_mnist

MAX_DIGITS = 5
BLANK = 10
HALF_INK = 10.0  # half the side of the box an MNIST digit's ink occupies, in pixels
CLUTTER, PATCH = 10, 8
SIDE_128 = (52.0, 76.0)  # px: the range of the number's square in the 128px canvas
JITTER_128 = 0.1  # the square's centre moves by up to this fraction of the half-canvas from the middle
# How often a sequence has 1, 2, 3, 4, 5 digits: SVHN's training set (5,137 / 18,130 / 8,691 / 1,434 / 9
# images, ../shared/DATA.md), with 5 digits raised to 1% so that the fifth classifier sees some.
LENGTHS = torch.tensor([5137, 18130, 8691, 1434, 334], dtype=torch.float64)
PARAM_NAMES = ["length", "box_x0", "box_y0", "box_x1", "box_y1"]  # box: the 128px set's number, in pixels


def _layout(n: int, gen: torch.Generator):
    """Per sample: length, and per position digit centre (x, y), scale and angle (in 28-px digit units)."""
    u = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    length = torch.multinomial(LENGTHS, n, replacement=True, generator=gen) + 1
    scale = 0.85 + 0.3 * u(n, MAX_DIGITS)
    angle = (u(n, MAX_DIGITS) * 2 - 1) * math.radians(10)
    step = 16 + 6 * u(n, MAX_DIGITS)
    x = torch.cumsum(step * scale, 1) - step[:, :1] * scale[:, :1]
    y = (u(n, MAX_DIGITS) * 2 - 1) * 3
    return length, torch.stack([x, y], -1), scale, angle


def _union(length, centre, scale, expand: float = 0.3):
    """The expanded union of the present digits' ink boxes: (x0, y0, x1, y1), each (N,)."""
    present = torch.arange(MAX_DIGITS)[None] < length[:, None]
    half = HALF_INK * scale
    big = torch.tensor(1e9, dtype=torch.float64)
    x0 = torch.where(present, centre[..., 0] - half, big).amin(1)
    x1 = torch.where(present, centre[..., 0] + half, -big).amax(1)
    y0 = torch.where(present, centre[..., 1] - half, big).amin(1)
    y1 = torch.where(present, centre[..., 1] + half, -big).amax(1)
    dx, dy = (x1 - x0) * expand / 2, (y1 - y0) * expand / 2
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


def _theta(box, centre, scale, angle, region_centre, region_half):
    """θ (N, 6) of one position: output canvas -> that digit's [-1, 1] coordinates, where the canvas
    region (centre, half side, normalised) shows the box."""
    x0, y0, x1, y1 = box
    d = torch.stack([(x1 - x0) / 2, (y1 - y0) / 2], 1)  # box half extents, px
    e = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2], 1)
    c, s = torch.cos(angle), torch.sin(angle)
    rot_t = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)  # Rᵀ
    k = (DIGIT / 2 * scale)[:, None, None]
    a = rot_t * (d / region_half[:, None])[:, None, :] / k
    t = (rot_t @ (e - d * region_centre / region_half[:, None] - centre)[..., None]) / k
    return torch.cat([a, t], 2).reshape(-1, 6).float()


def _render(digits: torch.Tensor, length, centre, scale, angle, region_centre, region_half, size: int) -> torch.Tensor:
    box = _union(length, centre, scale)
    out = torch.zeros(digits.shape[0], 1, size, size)
    for k in range(MAX_DIGITS):
        theta = _theta(box, centre[:, k], scale[:, k], angle[:, k], region_centre, region_half)
        img = ops.sample(digits[:, k : k + 1], Affine().grid(theta, (size, size)), "bilinear")
        present = (k < length).float()[:, None, None, None]
        out = torch.maximum(out, img * present)
    return out


def sequences(x: np.ndarray, y: np.ndarray, count: int, gen: torch.Generator) -> dict[str, np.ndarray]:
    """`count` sequences drawn from the digits (x, y) of one split: both sets, labels and parameters."""
    out = {64: [], 128: []}
    labels, params = [], []
    for start in range(0, count, BATCH):
        n = min(BATCH, count - start)
        idx = torch.randint(0, x.shape[0], (n, MAX_DIGITS), generator=gen)
        digits = torch.from_numpy(x[idx.numpy()]).float().div(255)  # (n, 5, 28, 28)
        length, centre, scale, angle = _layout(n, gen)
        whole = torch.zeros(n, 2, dtype=torch.float64)
        out[64].append(_to_uint8(_render(digits, length, centre, scale, angle, whole, torch.ones(n, dtype=torch.float64), 64)))
        side = SIDE_128[0] + (SIDE_128[1] - SIDE_128[0]) * torch.rand(n, generator=gen, dtype=torch.float64)
        half = side / 128
        place = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1) * JITTER_128
        canvas = _to_uint8(_render(digits, length, centre, scale, angle, place, half, 128))
        _clutter(canvas, x, gen)
        out[128].append(canvas)
        lab = np.full((n, MAX_DIGITS), BLANK, dtype=np.int64)
        ys = y[idx.numpy()].astype(np.int64)
        present = np.arange(MAX_DIGITS)[None] < length.numpy()[:, None]
        lab[present] = ys[present]
        labels.append(lab)
        box = torch.stack([(place[:, 0] - half + 1) * 64, (place[:, 1] - half + 1) * 64,
                           (place[:, 0] + half + 1) * 64, (place[:, 1] + half + 1) * 64], 1)
        params.append(torch.cat([length[:, None].double(), box], 1).numpy().astype(np.float32))
    return {"x64": np.concatenate(out[64]), "x128": np.concatenate(out[128]), "y": np.concatenate(labels),
            "params": np.concatenate(params)}


def _clutter(canvas: np.ndarray, others: np.ndarray, gen: torch.Generator) -> None:
    """Ten 8×8 patches cut from random digits, placed at random in each canvas (combined by maximum)."""
    n, size = canvas.shape[0], canvas.shape[-1]
    src = torch.randint(0, others.shape[0], (n, CLUTTER), generator=gen).numpy()
    crop = torch.randint(DIGIT // 4, DIGIT - DIGIT // 4 - PATCH + 1, (n, CLUTTER, 2), generator=gen).numpy()
    place = torch.randint(0, size - PATCH + 1, (n, CLUTTER, 2), generator=gen).numpy()
    for i in range(n):
        for j in range(CLUTTER):
            (cx, cy), (px, py) = crop[i, j], place[i, j]
            region = canvas[i, py : py + PATCH, px : px + PATCH]
            np.maximum(region, others[src[i, j], cy : cy + PATCH, cx : cx + PATCH], out=region)


def generate(mnist: dict[str, np.ndarray], seed: int, counts: dict[str, int],
             progress: Callable[[str], None] = print) -> dict[int, dict[str, np.ndarray]]:
    """Both stand-in sets, each with x_/y_/params_ arrays for train, val and test (MNIST's own split
    of digits: training digits, the 10k held-out validation digits, test digits)."""
    out: dict[int, dict[str, np.ndarray]] = {64: {"param_names": np.array(PARAM_NAMES)},
                                             128: {"param_names": np.array(PARAM_NAMES)}}
    for index, (split, (x, y)) in enumerate(split_mnist(mnist).items()):
        gen = torch.Generator().manual_seed(seed * 1000 + 500 + index)
        s = sequences(x, y, counts[split], gen)
        progress(f"sequences/{split}: {counts[split]}")
        for size in (64, 128):
            out[size].update({f"x_{split}": s[f"x{size}"], f"y_{split}": s["y"], f"params_{split}": s["params"]})
    return out
