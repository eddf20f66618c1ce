"""The spatial transformer module (paper Sect. 3.4): localisation net -> grid generator -> sampler."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from .ops import transform_sample
from .settings import INITS
from .transforms import Transform, make_transform

__all__ = ["SpatialTransformer", "Standardise", "initialise", "param_groups"]


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
        p = self.transform.num_params
        self.regressor = nn.Linear(loc_features, self.num_transformers * p)
        with torch.no_grad():
            self.regressor.weight.zero_()
            self.regressor.bias.copy_(self.transform.identity(self.num_transformers).reshape(-1))

    def localisation_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters that predict θ (localisation net and regressor), and a learnt basis if any."""
        yield from self.localisation.parameters()
        yield from self.regressor.parameters()
        yield from self.transform.parameters()

    def forward(self, x: Tensor, loc_input: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n, k = x.shape[0], self.num_transformers
        features = self.localisation(x if loc_input is None else loc_input).flatten(1)
        theta = self.regressor(features).view(n * k, self.transform.num_params)
        source = x if k == 1 else x.unsqueeze(1).expand(n, k, *x.shape[1:]).reshape(n * k, *x.shape[1:])
        out = self.warp(source, theta)
        out = out.reshape(n, k * x.shape[1], *self.out_size)
        theta = theta.view(n, self.transform.num_params) if k == 1 else theta.view(n, k, -1)
        return out, theta

    def warp(self, x: Tensor, theta: Tensor) -> Tensor:
        """Warp x (N, C, ...) by θ (N, P): the grid generator and sampler without the localisation net
        (fused into one kernel for affine transforms, see stn.ops.transform_sample)."""
        return transform_sample(x, self.transform, theta.to(x.dtype), self.out_size, self.mode, self.align_corners,
                                self.impl)


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
