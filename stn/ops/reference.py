"""Pure-PyTorch sampler written from the paper's equations (3)-(7) and (9).

Gather-based and deterministic; never calls grid_sample, so it is an independent check of the
compiled kernels. Autograd differentiates the kernel weights: floor() has zero gradient, which
leaves exactly the sub-gradient of eq. (7); round() does the same for the nearest kernel (eq. 4).
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor


def unnormalize(coord: Tensor, size: int, align_corners: bool) -> Tensor:
    """Normalised coordinate -> pixel units, in grid_sample's operation order."""
    if align_corners:
        return (coord + 1) / 2 * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _pixel_coords(grid: Tensor, sizes: list[int], align_corners: bool) -> list[Tensor]:
    """Per-axis pixel coordinates; non-finite or far-away points are moved to -2, where every tap is outside.

    Clamping to [-2, size + 1] is exact: past it no kernel tap touches the map, so value and
    gradient are zero either way, and the integer casts below cannot overflow.
    """
    finite = torch.isfinite(grid).all(dim=-1)
    coords = []
    for axis, size in enumerate(sizes):
        c = unnormalize(grid[..., axis], size, align_corners)
        c = torch.where(finite, c, torch.full_like(c, -2.0))
        coords.append(c.clamp(-2.0, size + 1.0))
    return coords


def sample_reference(input: Tensor, grid: Tensor, mode: str = "bilinear", align_corners: bool = False) -> Tensor:
    n, c = input.shape[:2]
    spatial = list(input.shape[2:])  # (D,) H, W
    ndim = len(spatial)
    out_spatial = grid.shape[1:-1]
    points = math.prod(out_spatial)
    sizes = spatial[::-1]  # grid order: x -> W, y -> H, z -> D
    strides = [math.prod(sizes[:a]) for a in range(ndim)]
    flat = input.reshape(n, c, math.prod(spatial))
    coords = _pixel_coords(grid.reshape(n, points, ndim), sizes, align_corners)

    def gather(index: Tensor, inside: Tensor) -> Tensor:
        index = torch.where(inside, index, torch.zeros_like(index))
        values = torch.gather(flat, 2, index.unsqueeze(1).expand(n, c, points))
        return values * inside.unsqueeze(1).to(values.dtype)

    if mode == "nearest":
        index = torch.zeros(n, points, dtype=torch.long, device=input.device)
        inside = torch.ones(n, points, dtype=torch.bool, device=input.device)
        for axis, coord in enumerate(coords):
            i = torch.round(coord).long()  # half to even, as grid_sample
            inside &= (i >= 0) & (i < sizes[axis])
            index += i * strides[axis]
        out = gather(index, inside)
    elif mode == "bilinear":
        base = [torch.floor(coord) for coord in coords]
        frac = [coord - b for coord, b in zip(coords, base)]
        base = [b.long() for b in base]
        out = 0
        for corner in itertools.product((0, 1), repeat=ndim):
            index = torch.zeros_like(base[0])
            inside = torch.ones_like(base[0], dtype=torch.bool)
            weight = 1
            for axis, bit in enumerate(corner):
                i = base[axis] + bit
                inside &= (i >= 0) & (i < sizes[axis])
                index = index + i * strides[axis]
                weight = weight * (frac[axis] if bit else 1 - frac[axis])
            out = out + gather(index, inside) * weight.unsqueeze(1)
    else:
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    return out.reshape(n, c, *out_spatial)
