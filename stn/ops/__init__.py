"""Differentiable samplers (paper Sect. 3.3) behind one function, `sample`.

Implementations: "reference" (pure PyTorch, from the equations), "cpp" (compiled CPU kernel)
and "cuda" (compiled GPU kernel). "auto" takes CUDA for CUDA tensors and C++ on the CPU and falls
back to the reference, with one warning naming the reason, when the extension is unavailable.
The environment variable STN_SAMPLER forces an implementation wherever impl="auto".

`transform_sample(input, transform, theta, out_size)` is what a spatial transformer calls: for
affine and attention transforms (2-D) and 3-D affine ones, bilinear, with a compiled
implementation, it runs the fused kernel (`affine_sample`), which computes each sampling point
from θ on the fly and reduces the backward straight into dθ, never building the grid; otherwise
it is the grid generator followed by `sample`, which is also the fused kernel's reference.

Out-of-range taps read zero (zero padding). A sample point with a non-finite coordinate gives
zero output and zero gradients on every implementation.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from . import extension, registration
from .reference import sample_reference

__all__ = ["sample", "transform_sample", "affine_sample", "relu_max_pool2d", "fold", "resolve_impl", "available_impls", "IMPLS", "MODES"]

IMPLS = ("reference", "cpp", "cuda")
MODES = {"bilinear": 0, "nearest": 1}
ENV_VAR = "STN_SAMPLER"
FUSED_CPU_DTYPES = (torch.float32, torch.float64)
POOL_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
FOLD_CPU_DTYPES = POOL_CPU_DTYPES
_warned: set[str] = set()


def _unavailable(impl: str, device: torch.device) -> str | None:
    """Why `impl` cannot run on `device`, or None when it can."""
    if impl == "reference":
        return None
    if impl == "cuda" and device.type != "cuda":
        return f"the cuda sampler needs CUDA tensors, got a tensor on {device}"
    if impl == "cpp" and device.type != "cpu":
        return f"the cpp sampler needs CPU tensors, got a tensor on {device}"
    st = extension.state()
    if not st.loaded:
        return st.reason
    if impl == "cuda" and not st.has_cuda:
        return st.reason
    return None


def available_impls(device: torch.device | str = "cpu") -> dict[str, str | None]:
    """Each implementation mapped to None (usable on `device`) or the reason it is not."""
    device = torch.device(device)
    return {impl: _unavailable(impl, device) for impl in IMPLS}


def resolve_impl(impl: str, device: torch.device) -> str:
    """The implementation that `impl` (possibly "auto") means for tensors on `device`."""
    forced_by_env = False
    if impl == "auto" and os.environ.get(ENV_VAR):
        impl, forced_by_env = os.environ[ENV_VAR], True
    if impl == "auto":
        preferred = "cuda" if device.type == "cuda" else "cpp"
        reason = _unavailable(preferred, device)
        if reason is None:
            return preferred
        if reason not in _warned:
            _warned.add(reason)
            warnings.warn(f"stn: using the reference sampler because {reason}", RuntimeWarning, stacklevel=3)
        return "reference"
    if impl not in IMPLS:
        source = f"{ENV_VAR}={impl!r}" if forced_by_env else f"impl={impl!r}"
        raise ValueError(f"unknown sampler {source}; choose 'auto' or one of {IMPLS}")
    reason = _unavailable(impl, device)
    if reason is not None:
        source = f"{ENV_VAR}={impl}" if forced_by_env else f"impl={impl!r}"
        raise RuntimeError(f"stn: sampler {source} is unavailable: {reason}")
    return impl


def check_sample_args(input: Tensor, grid: Tensor, mode: str) -> None:
    if input.dim() not in (4, 5):
        raise ValueError(f"stn.sample: input must be 4-D (N,C,H,W) or 5-D (N,C,D,H,W), got shape {tuple(input.shape)}")
    d = input.dim() - 2
    if grid.dim() != d + 2 or grid.shape[-1] != d:
        raise ValueError(
            f"stn.sample: a {input.dim()}-D input needs a grid of shape (N, {'D, ' if d == 3 else ''}H', W', {d}), "
            f"got {tuple(grid.shape)}"
        )
    if grid.shape[0] != input.shape[0]:
        raise ValueError(f"stn.sample: batch sizes differ: input {input.shape[0]}, grid {grid.shape[0]}")
    if mode not in MODES:
        raise ValueError(f"stn.sample: mode must be one of {sorted(MODES)}, got {mode!r}")
    if input.dtype != grid.dtype:
        raise TypeError(f"stn.sample: input is {input.dtype} but grid is {grid.dtype}")
    if input.device != grid.device:
        raise ValueError(f"stn.sample: input is on {input.device} but grid is on {grid.device}")


def sample(input: Tensor, grid: Tensor, mode: str = "bilinear", align_corners: bool = False, impl: str = "auto") -> Tensor:
    """Sample `input` (N,C,H,W) or (N,C,D,H,W) at `grid` (N,H',W',2) or (N,D',H',W',3), zero padding.

    Bilinear (trilinear in 3-D) is differentiable in input (eq. 6) and grid (eq. 7); nearest
    (eq. 4) passes gradients to the input only and has a zero grid gradient.
    """
    check_sample_args(input, grid, mode)
    chosen = resolve_impl(impl, input.device)
    if chosen == "reference":
        return sample_reference(input, grid, mode, align_corners)
    return registration.differentiable("sample")(input, grid, MODES[mode], align_corners)


def affine_sample(input: Tensor, matrix: Tensor, out_size, align_corners: bool = False, impl: str = "auto") -> Tensor:
    """Bilinear (trilinear) sampling of `input` at the affine map `matrix` (N, D, D+1) of the regular
    output grid of size `out_size`, without materialising the grid. Differentiable in input and matrix.

    impl="reference" runs the unfused path (the grid generator, then the reference sampler).
    """
    out_size = [int(s) for s in out_size]
    d = input.dim() - 2
    if input.dim() not in (4, 5) or matrix.shape != (input.shape[0], d, d + 1) or len(out_size) != d:
        raise ValueError(
            f"stn.affine_sample: a {input.dim()}-D input of batch {input.shape[0]} needs a matrix of shape "
            f"({input.shape[0]}, {d}, {d + 1}) and {d} output sizes; got matrix {tuple(matrix.shape)}, out_size {out_size}"
        )
    return _affine_sample(input, matrix, out_size, align_corners, resolve_impl(impl, input.device))


def _affine_sample(input: Tensor, matrix: Tensor, out_size: list[int], align_corners: bool, chosen: str) -> Tensor:
    if chosen == "reference":
        from ..transforms import Affine, Affine3D

        d = input.dim() - 2
        grid = (Affine3D() if d == 3 else Affine()).grid(matrix.reshape(input.shape[0], -1), out_size, align_corners)
        return sample_reference(input, grid.to(input.dtype), "bilinear", align_corners)
    return registration.differentiable("affine_sample")(input, matrix.to(input.dtype), out_size, align_corners)


def transform_sample(input: Tensor, transform, theta: Tensor, out_size, mode: str = "bilinear",
                     align_corners: bool = False, impl: str = "auto") -> Tensor:
    """Warp `input` by `transform` (a stn.transforms.Transform) with parameters θ (N, num_params).

    Uses the fused kernel where the transform is affine (`transform.affine_matrix(θ)` is not
    None), the mode is bilinear and a compiled implementation runs (on the CPU: for float32 and
    float64); otherwise the grid generator, then `sample`.
    """
    chosen = resolve_impl(impl, input.device)
    fusable = mode == "bilinear" and (chosen == "cuda" or (chosen == "cpp" and input.dtype in FUSED_CPU_DTYPES))
    matrix = transform.affine_matrix(theta) if fusable else None
    if matrix is None:
        return sample(input, transform.grid(theta, out_size, align_corners), mode, align_corners, chosen)
    if len(out_size) != input.dim() - 2 or transform.ndim != input.dim() - 2:
        raise ValueError(f"{type(transform).__name__} is {transform.ndim}-D; input has shape {tuple(input.shape)} "
                         f"and out_size {tuple(out_size)}")
    # The matrix has the shape the op needs by construction; the op itself checks the batch sizes.
    return _affine_sample(input, matrix, [int(s) for s in out_size], align_corners, chosen)


def relu_max_pool2d(input: Tensor, impl: str = "auto") -> Tensor:
    """ReLU, then 2×2 max pooling with stride 2 (no padding, an odd last row or column dropped): (N, C, H, W) ->
    (N, C, H // 2, W // 2), values and gradients bit for bit those of `F.max_pool2d(F.relu(input), 2)`.

    The compiled CPU kernel ("cpp", for float32, float64 and bfloat16) does it in one pass each way
    (csrc/cpu/relu_max_pool.cpp); elsewhere (CUDA, other dtypes, impl="reference") it is that pair of ATen calls.

        y = relu_max_pool2d(torch.randn(64, 39, 52, 52))  # (64, 39, 26, 26)
    """
    if input.dim() != 4 or input.shape[-1] < 2 or input.shape[-2] < 2:
        raise ValueError(f"stn.relu_max_pool2d: input must be (N, C, H, W) with H, W >= 2, got {tuple(input.shape)}")
    if resolve_impl(impl, input.device) != "cpp" or input.dtype not in POOL_CPU_DTYPES:
        return F.max_pool2d(F.relu(input), 2)
    return registration.ReLUMaxPool2dFunction.apply(input)


def fold(columns: Tensor, output_size, kernel_size, padding=(0, 0), impl: str = "auto") -> Tensor:
    """col2im (stride 1, no dilation) into float32 or wider: columns (N, C·kh·kw, L) -> (N, C, *output_size), bit for
    bit `F.fold(columns.to(float32 or wider), output_size, kernel_size, padding=padding)`, its reference.

    The compiled CPU kernel ("cpp", for bfloat16, float32 and float64 columns) converts as it reads and gathers each
    output row in one pass (csrc/cpu/fold.cpp); elsewhere it is that pair of ATen calls. Not differentiable: it is
    the last step of a convolution's input gradient (stn.models.conv).

        dx = fold(torch.randn(64, 81, 20 * 20).bfloat16(), (28, 28), (9, 9))  # (64, 1, 28, 28), float32
    """
    output_size, kernel_size, padding = (tuple(int(v) for v in a) for a in (output_size, kernel_size, padding))
    if columns.dim() != 3 or len(output_size) != 2 or len(kernel_size) != 2 or len(padding) != 2:
        raise ValueError(f"stn.fold: columns must be (N, C*kh*kw, L) with 2 output sizes, kernel sizes and paddings; "
                         f"got columns {tuple(columns.shape)}, output_size {output_size}, kernel_size {kernel_size}, "
                         f"padding {padding}")
    if resolve_impl(impl, columns.device) != "cpp" or columns.dtype not in FOLD_CPU_DTYPES:
        acc = torch.promote_types(columns.dtype, torch.float32)
        return F.fold(columns.to(acc), output_size, kernel_size, padding=padding)
    return torch.ops.stn.fold(columns, list(output_size), list(kernel_size), list(padding))
