"""Distorted MNIST (appendix A.4), generated with the library's own grid generators and sampler.

Every data set is a pure function of (MNIST, name, seed): each split draws from its own seeded
generator, and the per-sample generating parameters and θ are stored beside the images.
Splits: train = the first 50,000 of MNIST's 60,000 training digits, val = the last 10,000 (the
classic validation split, held out of training), test = the 10,000 test digits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .. import ops
from ..paper import registry
from ..transforms import Affine, Projective, ThinPlateSpline

DIGIT = 28
BATCH = 2048
SPLITS = ("train", "val", "test")
VALIDATION = 10_000


@dataclass
class Generated:
    images: np.ndarray  # (N, S, S) uint8
    params: np.ndarray  # (N, K) float32, columns named by the generator
    theta: np.ndarray  # (N, P) float32, θ of the library transform that made the image


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return x.mul(255).round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()


def _warp(digits: torch.Tensor, transform, theta: torch.Tensor, size: int) -> np.ndarray:
    grid = transform.grid(theta, (size, size))
    return _to_uint8(ops.sample(digits, grid, "bilinear"))


def _rotation(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (N, 2, 2)


def rotated(digits, gen, others=None):
    """R: rotation U(-90°, 90°), 28×28."""
    n = digits.shape[0]
    angle = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(90)
    theta = torch.cat([_rotation(angle), torch.zeros(n, 2, 1, dtype=torch.float64)], 2).reshape(n, 6).float()
    return Generated(_warp(digits, Affine(), theta, DIGIT), torch.rad2deg(angle)[:, None].numpy(), theta.numpy())


rotated.param_names = ["angle_deg"]
rotated.size = DIGIT


def rotated_translated_scaled(digits, gen, others=None, size=42):
    """RTS: rotation U(-45°, 45°), scale U(0.7, 1.2), uniform placement in a 42×42 canvas."""
    n = digits.shape[0]
    angle = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(45)
    scale = 0.7 + 0.5 * torch.rand(n, generator=gen, dtype=torch.float64)
    extent = scale * DIGIT / size  # half-width of the scaled digit, in canvas units
    shift = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1) * (1 - extent)[:, None]
    a = _rotation(angle) / extent[:, None, None]  # canvas -> digit coordinates
    t = -(a @ shift[:, :, None])
    theta = torch.cat([a, t], 2).reshape(n, 6).float()
    params = torch.stack([torch.rad2deg(angle), scale, shift[:, 0], shift[:, 1]], 1)
    return Generated(_warp(digits, Affine(), theta, size), params.numpy(), theta.numpy())


rotated_translated_scaled.param_names = ["angle_deg", "scale", "shift_x", "shift_y"]
rotated_translated_scaled.size = 42

CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)


PROJECTIVE_READINGS = ("radial", "independent")


def projective(digits, gen, others=None, corners="radial"):
    """P: scale U(0.75, 1.0), each corner stretched by N(0, 5 px), projective warp, 28×28.

    A.4's "stretching each corner by an amount sampled from N(0, 5 px)" has two readings:
    `radial` (default) moves each corner by one amount along its direction from the centre;
    `independent` moves each corner by N(0, 5 px) in x and in y, which folds or flattens far
    more digits (docs/CHOICES.md has the measurements, `projective_stats` computes them)."""
    if corners not in PROJECTIVE_READINGS:
        raise ValueError(f"corners must be one of {PROJECTIVE_READINGS}, not {corners!r}")
    n = digits.shape[0]
    scale = 0.75 + 0.25 * torch.rand(n, generator=gen, dtype=torch.float64)
    if corners == "radial":
        amount = torch.randn(n, 4, 1, generator=gen, dtype=torch.float64) * (5 * 2 / DIGIT)
        moves = amount * CORNERS[None] / math.sqrt(2)
    else:
        moves = torch.randn(n, 4, 2, generator=gen, dtype=torch.float64) * (5 * 2 / DIGIT)
    targets = CORNERS[None] * scale[:, None, None] + moves  # where the digit's corners land
    theta = Projective.fit(targets, CORNERS.expand(n, 4, 2)).float()
    params = torch.cat([scale[:, None], moves.reshape(n, 8)], 1)
    return Generated(_warp(digits, Projective(), theta, DIGIT), params.numpy(), theta.numpy())


def projective_stats(theta: torch.Tensor, grid: int = 29) -> dict[str, float]:
    """How hard a set of P warps is, from P's stored θ (N, 8) (output canvas → digit). On the digit's
    own square, the homogeneous coordinate w of the inverse map (digit → canvas) says: `folded`, w
    changes sign (the horizon cuts the digit, part of it lands on the other side of the canvas);
    `extreme`, not folded but |w| differs more than 5× across the digit (one end shrinks to a line)."""
    to_digit = Projective().matrix(theta.double())
    to_canvas = torch.linalg.inv(to_digit)
    lin = torch.linspace(-1, 1, grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(lin, lin, indexing="ij")
    pts = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(grid * grid, dtype=torch.float64)], 0)
    w = (to_canvas[:, 2:3, :] @ pts).squeeze(1)  # (N, grid²)
    folded = (w.min(1).values * w.max(1).values) <= 0
    ratio = w.abs().max(1).values / w.abs().min(1).values.clamp_min(1e-12)
    return {"folded": float(folded.double().mean()), "extreme": float(((ratio > 5) & ~folded).double().mean()),
            "count": int(to_digit.shape[0])}


projective.param_names = ["scale"] + [f"corner{i}_{a}" for i in range(4) for a in "xy"]
projective.size = DIGIT


def elastic(digits, gen, others=None):
    """E: scale U(0.75, 1.0), then 16 TPS control points on a regular grid moved by N(0, 1.5 px), 28×28."""
    n = digits.shape[0]
    tps = ThinPlateSpline(4)
    scale = 0.75 + 0.25 * torch.rand(n, generator=gen, dtype=torch.float64)
    moves = torch.randn(n, 16, 2, generator=gen, dtype=torch.float64) * (1.5 * 2 / DIGIT)
    sources = tps.control_points[None] / scale[:, None, None] + moves
    theta = sources.reshape(n, 32).float()
    params = torch.cat([scale[:, None], moves.reshape(n, 32)], 1)
    return Generated(_warp(digits, tps, theta, DIGIT), params.numpy(), theta.numpy())


elastic.param_names = ["scale"] + [f"cp{i}_{a}" for i in range(16) for a in "xy"]
elastic.size = DIGIT


def translated_cluttered(digits, gen, others, size=60, clutter=6, patch=6):
    """TC: the digit at a uniform random location in a 60×60 canvas plus six 6×6 patches cut from
    random other digits of the same split at random locations (combined by maximum). With other
    sizes and counts it also makes the co-localisation canvases (84×84, 0 or 16 patches; A.2)."""
    n = digits.shape[0]
    pos = torch.randint(0, size - DIGIT + 1, (n, 2), generator=gen)
    k = size / DIGIT
    tx = (size - 2 * pos.double()) / DIGIT - 1  # maps canvas pixel j onto digit pixel j - pos exactly
    zero = torch.zeros(n, dtype=torch.float64)
    theta = torch.stack([zero + k, zero, tx[:, 0], zero, zero + k, tx[:, 1]], 1).float()
    canvas = _warp(digits, Affine(), theta, size)
    src = torch.randint(0, others.shape[0], (n, clutter), generator=gen)
    crop = torch.randint(0, DIGIT - patch + 1, (n, clutter, 2), generator=gen)
    place = torch.randint(0, size - patch + 1, (n, clutter, 2), generator=gen)
    for i in range(n):
        for j in range(clutter):
            cx, cy = crop[i, j].tolist()
            px, py = place[i, j].tolist()
            piece = others[src[i, j], cy : cy + patch, cx : cx + patch]
            region = canvas[i, py : py + patch, px : px + patch]
            np.maximum(region, piece, out=region)
    box = torch.cat([pos, pos + DIGIT], 1).double()  # x0, y0, x1, y1 in pixels
    params = torch.cat([box, place.reshape(n, -1).double(), src.double()], 1)
    return Generated(canvas, params.numpy(), theta.numpy())


translated_cluttered.param_names = ["box_x0", "box_y0", "box_x1", "box_y1"] + [
    f"clutter{j}_{a}" for j in range(6) for a in "xy"] + [f"clutter{j}_source" for j in range(6)]
translated_cluttered.size = 60

def addition_pairs(x: np.ndarray, y: np.ndarray, gen: torch.Generator, size: int = 42) -> dict[str, np.ndarray]:
    """MNIST addition (appendix A.1): two channels, each an independently RTS-distorted digit; the
    label is their sum (19 classes). The second digit of sample i is a random digit of the same split."""
    partner = torch.randint(0, x.shape[0], (x.shape[0],), generator=gen).numpy()
    channels, params, thetas = [], [], []
    for digits in (x, x[partner]):
        parts = [rotated_translated_scaled(torch.from_numpy(digits[s : s + BATCH]).float().div(255).unsqueeze(1), gen, size=size)
                 for s in range(0, x.shape[0], BATCH)]
        channels.append(np.concatenate([p.images for p in parts]))
        params.append(np.concatenate([p.params for p in parts]))
        thetas.append(np.concatenate([p.theta for p in parts]))
    return {
        "x": np.stack(channels, 1),
        "y": (y.astype(np.int64) + y[partner].astype(np.int64)),
        "params": np.concatenate(params + [partner[:, None].astype(np.float64), y[partner][:, None].astype(np.float64)], 1),
        "theta": np.concatenate(thetas, 1),
    }


ADDITION_PARAM_NAMES = [f"{c}_{n}" for c in ("first", "second") for n in rotated_translated_scaled.param_names] + [
    "partner_index", "partner_label"]
addition_pairs.param_names = ADDITION_PARAM_NAMES
addition_pairs.whole_split = True  # draws from the whole split at once (pairs), not batch by batch


class RepairedAddition:
    """The addition training split with its digits paired afresh, `pairings` times over.

    Pairing k keeps every sample's first channel and takes the second from sample partner[k, i]
    (pairing 0 is the stored one), so a run can see pairings × N different sums: with the 50,000
    stored pairs alone, a model that trains for several epochs memorises them instead of learning
    to add. Labels are precomputed; images are assembled per batch from the stored channels.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, params: np.ndarray, pairings: int, seed: int) -> None:
        if pairings < 1:
            raise ValueError(f"pairings must be at least 1, got {pairings}")
        self.x = torch.from_numpy(x)
        n = self.x.shape[0]
        second = torch.from_numpy(params[:, ADDITION_PARAM_NAMES.index("partner_label")]).round().long()
        first = torch.from_numpy(y) - second
        gen = torch.Generator().manual_seed(seed)
        self.partner = torch.stack([torch.arange(n)] + [torch.randperm(n, generator=gen) for _ in range(pairings - 1)])
        self.labels = (first[None, :] + second[self.partner]).reshape(-1).numpy()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx)
        i = idx % self.x.shape[0]
        j = self.partner.reshape(-1)[idx]
        return torch.stack([self.x[i, 0], self.x[j, 1]], -3)


def split_mnist(mnist: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    train_x, train_y = mnist["train_images"], mnist["train_labels"]
    cut = train_x.shape[0] - VALIDATION
    return {
        "train": (train_x[:cut], train_y[:cut]),
        "val": (train_x[cut:], train_y[cut:]),
        "test": (mnist["test_images"], mnist["test_labels"]),
    }


def generate(name: str, mnist: dict[str, np.ndarray], seed: int, limits: dict[str, int | None] | None = None,
             progress: Callable[[str], None] = print, options: dict | None = None) -> dict[str, np.ndarray]:
    """All splits of data set `name` as arrays x_<split>, y_<split>, params_<split>, theta_<split>; the
    registry (stn/paper/registry.py) names the function of this module that draws it and the config's
    `data` keys it takes (`options`, e.g. {"projective_corners": "radial"} for P)."""
    spec = registry.DATASETS.get(name)
    if spec is None or spec.builder != "distort":
        raise ValueError(f"unknown data set {name!r}; choose one of {registry.datasets('distort')}")
    known = dict(spec.options)
    unknown = set(options or {}) - set(known)
    if unknown:
        raise ValueError(f"data set {name} takes no option {sorted(unknown)}; it takes {sorted(known) or 'none'}")
    fn = globals()[spec.generator]
    kwargs = {known[k]: v for k, v in (options or {}).items()}
    out: dict[str, np.ndarray] = {"param_names": np.array(fn.param_names)}
    for index, (split, (x, y)) in enumerate(split_mnist(mnist).items()):
        limit = (limits or {}).get(split)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        gen = torch.Generator().manual_seed(seed * 1000 + index)
        if getattr(fn, "whole_split", False):
            pairs = fn(x, y, gen, **kwargs)
            progress(f"{name}/{split}: {x.shape[0]}/{x.shape[0]}")
            for key in ("x", "y", "params", "theta"):
                out[f"{key}_{split}"] = pairs[key].astype(np.float32) if key in ("params", "theta") else pairs[key]
            continue
        parts = []
        for start in range(0, x.shape[0], BATCH):
            digits = torch.from_numpy(x[start : start + BATCH]).float().div(255).unsqueeze(1)
            parts.append(fn(digits, gen, others=x, **kwargs))
            progress(f"{name}/{split}: {min(start + BATCH, x.shape[0])}/{x.shape[0]}")
        out[f"x_{split}"] = np.concatenate([p.images for p in parts])
        out[f"y_{split}"] = y.astype(np.int64)
        out[f"params_{split}"] = np.concatenate([p.params for p in parts]).astype(np.float32)
        out[f"theta_{split}"] = np.concatenate([p.theta for p in parts]).astype(np.float32)
    return out
