"""The spatial transformer module (paper Sect. 3.4): localisation net -> grid generator -> sampler."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ops import transform_sample
from .settings import INITS
from .transforms import Transform, make_transform

__all__ = ["SpatialTransformer", "AvgPool", "avg_pool", "Standardise", "initialise", "param_groups"]


class SpatialTransformer(nn.Module):
    """Warps its input by a transformation regressed from the input itself.

    `localisation` is any module producing `loc_features` features per sample; a final linear
    regression layer, initialised to the identity transform (zero weights, identity bias, as the
    paper does), maps them to θ. With `num_transformers` = k > 1 the same regressor predicts k
    transforms, each applied to the whole input; their outputs are concatenated along channels
    (N, k·C, *out_size) in transformer order (split with `.chunk(k, dim=1)`).

    `forward(x, loc_input=None)` returns (output, θ); θ has shape (N, P), or (N, k, P) for k > 1,
    so it can be fed forward. `loc_input` lets the localisation net see a different tensor than
    the one sampled from (e.g. a down-scaled copy of a large image).
    """

    def __init__(
        self,
        localisation: nn.Module,
        loc_features: int,
        transform: Transform | str,
        out_size: Sequence[int],
        num_transformers: int = 1,
        mode: str = "bilinear",
        align_corners: bool = False,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.localisation = localisation
        self.transform = make_transform(transform) if isinstance(transform, str) else transform
        self.out_size = tuple(int(s) for s in out_size)
        if len(self.out_size) != self.transform.ndim:
            raise ValueError(f"out_size {self.out_size} does not match a {self.transform.ndim}-D transform")
        self.num_transformers = int(num_transformers)
        self.mode, self.align_corners, self.impl = mode, align_corners, impl
        self.regressor = nn.Linear(loc_features, self.num_transformers * self.transform.num_params)
        self.start_at(1.0)

    def start_at(self, scale: float = 1.0) -> None:
        """Reset the regressor to predict x ↦ scale·x for every input: zero weights and the scaled
        identity as bias (1: the paper's identity; below 1: zoomed in on the centre, see Transform.scaling)."""
        with torch.no_grad():
            self.regressor.weight.zero_()
            self.regressor.bias.copy_(self.transform.scaling(scale, self.num_transformers).reshape(-1))

    def localisation_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters that predict θ (localisation net and regressor), and a learnt basis if any."""
        yield from self.localisation.parameters()
        yield from self.regressor.parameters()
        yield from self.transform.parameters()

    def forward(self, x: Tensor, loc_input: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n, k = x.shape[0], self.num_transformers
        features = self.localisation(x if loc_input is None else loc_input).flatten(1)
        if torch.is_autocast_enabled(x.device.type):
            # under bf16 autocast, θ and the sampling stay fp32 (feature maps that autocast lowered, for a
            # transformer deeper in, come back): a bf16 θ would move a 60 px canvas in quarter-pixel steps,
            # and the regressor's gradients are small at the identity
            with torch.autocast(x.device.type, enabled=False):
                x = x.float()
                out, theta = self._regress_and_warp(x, features.float())
        else:
            out, theta = self._regress_and_warp(x, features)
        out = out.reshape(n, k * x.shape[1], *self.out_size)
        theta = theta.view(n, self.transform.num_params) if k == 1 else theta.view(n, k, -1)
        return out, theta

    def _regress_and_warp(self, x: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """(x warped by the θ regressed from `features`, θ (N·k, P)); each of the k transforms warps all of x."""
        n, k = x.shape[0], self.num_transformers
        theta = self.regressor(features).view(n * k, self.transform.num_params)
        source = x if k == 1 else x.unsqueeze(1).expand(n, k, *x.shape[1:]).reshape(n * k, *x.shape[1:])
        return self.warp(source, theta), theta

    def warp(self, x: Tensor, theta: Tensor) -> Tensor:
        """Warp x (N, C, ...) by θ (N, P): the grid generator and sampler without the localisation net
        (fused into one kernel for affine transforms, see stn.ops.transform_sample)."""
        return transform_sample(x, self.transform, theta.to(x.dtype), self.out_size, self.mode, self.align_corners,
                                self.impl)


def _physical(x: Tensor) -> tuple[Tensor, list[int]] | None:
    """x as the contiguous tensor its memory holds (N, C, *S) or, channels-last, (N, *S, C), and the
    positions of its spatial dimensions there; None for any other layout."""
    d = x.dim() - 2
    last = torch.channels_last if d == 2 else torch.channels_last_3d
    # channels-last first, so that a one-channel channels-last tensor (also contiguous) stays channels-last
    if x.stride(1) == 1 and x.is_contiguous(memory_format=last):
        return x.movedim(1, -1), list(range(1, d + 1))
    if x.is_contiguous():
        return x, list(range(2, d + 2))
    return None


def _pool_physical(t: Tensor, dims: list[int], k: int) -> Tensor:
    """Sum each k-block of t along `dims`, one dimension at a time: every pass adds k slices of rows that
    are contiguous (or strided by k along the last dimension)."""
    for j in dims:
        shape = list(t.shape)
        r = t.reshape(math.prod(shape[:j]) * (shape[j] // k), k, math.prod(shape[j + 1:]))
        acc = r[:, 0] + r[:, 1] if k > 1 else r[:, 0].clone()
        for i in range(2, k):
            acc += r[:, i]
        shape[j] //= k
        t = acc.view(shape)
    return t


def _unpool_physical(g: Tensor, dims: list[int], k: int) -> Tensor:
    """Each element of g copied over its k-block along `dims` (the adjoint of _pool_physical's sum), one
    dimension at a time from the innermost: whole rows are repeated by concatenation, which is several
    times faster on the CPU than materialising one expanded view of every dimension at once."""
    for j in sorted(dims, reverse=True):
        shape = list(g.shape)
        r = g.reshape(math.prod(shape[: j + 1]), 1, math.prod(shape[j + 1:]))
        r = torch.cat([r] * k, 1) if r.shape[2] > 1 else r.expand(-1, k, 1)
        shape[j] *= k
        g = r.reshape(shape)
    return g


class _AvgPool(torch.autograd.Function):
    """Pooling of x in the layout avg_pool found (`dims`, `channels_last`: what _physical returned for x)."""

    @staticmethod
    def forward(ctx, x: Tensor, k: int, dims: list[int], channels_last: bool) -> Tensor:
        ctx.k, ctx.dims, ctx.channels_last = k, dims, channels_last
        t = x.movedim(1, -1) if channels_last else x
        out = _pool_physical(t, dims, k).mul_(1.0 / k ** len(dims))
        return out.movedim(-1, 1) if channels_last else out

    @staticmethod
    def backward(ctx, grad: Tensor):
        g = grad.movedim(1, -1) if ctx.channels_last else grad
        g = _unpool_physical(g.contiguous() * (1.0 / ctx.k ** len(ctx.dims)), ctx.dims, ctx.k)
        return (g.movedim(-1, 1) if ctx.channels_last else g), None, None, None


def avg_pool(x: Tensor, k: int) -> Tensor:
    """Average pooling of x (N, C, H, W) or (N, C, D, H, W) over k×k (k×k×k) blocks with stride k: the same
    function as F.avg_pool2d / avg_pool3d(x, k), for every spatial size a multiple of k and x contiguous or
    channels-last (the output keeps x's layout); anything else goes to F.avg_pool2d / 3d.

    Torch's CPU pooling kernels visit each output element's window; this adds whole rows instead, on the CPU
    2-8x faster forward and 2-5x forward+backward (`python -m stn.bench pool`).
    Example: avg_pool(torch.rand(8, 1, 42, 42), 2) -> (8, 1, 21, 21).
    """
    if x.dim() not in (4, 5):
        raise ValueError(f"avg_pool: x must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"avg_pool: k must be a positive integer, got {k}")
    layout = _physical(x)
    if any(s % k for s in x.shape[2:]) or layout is None or x.numel() == 0:
        return (F.avg_pool2d if x.dim() == 4 else F.avg_pool3d)(x, k)
    t, dims = layout
    return _AvgPool.apply(x, k, dims, t is not x)


class AvgPool(nn.Module):
    """`avg_pool(x, k)` as a module: nn.AvgPool2d(k) and nn.AvgPool3d(k) in one, without parameters."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = int(k)

    def forward(self, x: Tensor) -> Tensor:
        return avg_pool(x, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}"


def param_groups(model: nn.Module, lr: float, loc_lr_mult: float = 1.0) -> list[dict]:
    """Optimiser parameter groups: the localisation nets of every SpatialTransformer in `model`
    get lr × loc_lr_mult (the paper uses 0.1 for SVHN and 1e-4 for CUB), everything else lr."""
    loc_ids: set[int] = set()
    loc: list[nn.Parameter] = []
    for module in model.modules():
        if isinstance(module, SpatialTransformer):
            for p in module.localisation_parameters():
                if id(p) not in loc_ids:
                    loc_ids.add(id(p))
                    loc.append(p)
    rest = [p for p in model.parameters() if id(p) not in loc_ids]
    groups = [{"params": rest, "lr": lr, "name": "main"}, {"params": loc, "lr": lr * loc_lr_mult, "name": "localisation"}]
    return [g for g in groups if g["params"]]


class Standardise(nn.Module):
    """(x − mean) / std with the training set's pixel statistics, kept as buffers so that a saved
    model carries them. Identity until `set_(mean, std)` (or a loaded state dict) fills them in."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def set_(self, mean: float, std: float) -> "Standardise":
        if not std > 0:
            raise ValueError(f"standardisation needs a positive std, got {std}")
        self.mean.fill_(mean)
        self.std.fill_(std)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def initialise(model: nn.Module, init: str) -> nn.Module:
    """`init` = "default" leaves PyTorch's initialisation; "he" draws every conv and linear weight
    He-normal (fan-in, ReLU gain) with zero biases. The transformers' regressors keep their identity
    start either way. The paper does not say which it used (docs/CHOICES.md)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, not {init!r}")
    if init == "he":
        regressors = {id(m.regressor) for m in model.modules() if isinstance(m, SpatialTransformer)}
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)) and id(m) not in regressors:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model
