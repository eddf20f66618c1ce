"""The distorted-MNIST models of appendix A.4 and their parameter matching.

FCN: two hidden fully connected layers + classifier. CNN: conv 9×9 → max-pool 2 → conv 7×7 →
max-pool 2 → classifier. ST-FCN / ST-CNN: a spatial transformer at the start of the network
(localisation: three 32-unit FC layers, or conv 5×5 ×20 → max-pool 2 → conv 5×5 ×20 → FC 20,
both on a 2× downsampled input), optionally followed by 2× average pooling (TC and RTS).
Widths are chosen so that every model of an experiment has about the same number of learnable
parameters (see `match_widths`); docs/CHOICES.md records where the paper had to be interpreted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..modules import AvgPool, SpatialTransformer, Standardise, initialise
from ..transforms import make_transform
from .conv import InputGradConv2d, relu_max_pool

FCN_WIDTHS = (128, 256)  # the paper's range of units per layer
CNN_WIDTHS = (32, 64)  # the paper's range of filters per layer
WIDEN = 4  # how far past the paper's range matching may go where the range cannot reach the target
TOLERANCE = 0.05

TRANSFORMS = {"Aff": ("affine", {}), "Proj": ("projective", {}), "TPS": ("tps", {"grid_size": 4})}


@dataclass(frozen=True)
class InputSpec:
    channels: int
    size: int
    classes: int
    pool_after_st: bool  # 2× average pooling after the transformer (TC and RTS)


@dataclass(frozen=True)
class ModelSpec:
    """A model name such as "CNN", "ST-FCN-Aff" or "2xST-FCN-TPS" parsed into its parts."""

    base: str  # FCN or CNN
    transform: str | None = None  # Aff, Proj, TPS
    transformers: int = 0

    @classmethod
    def parse(cls, name: str) -> "ModelSpec":
        parts = name.split("-")
        if parts in (["FCN"], ["CNN"]):
            return cls(parts[0])
        if len(parts) == 3 and parts[0] in ("ST", "2xST") and parts[1] in ("FCN", "CNN") and parts[2] in TRANSFORMS:
            return cls(parts[1], parts[2], 2 if parts[0] == "2xST" else 1)
        raise ValueError(
            f"unknown model {name!r}: use FCN, CNN, ST-FCN-<T>, ST-CNN-<T> or 2xST-FCN-<T> with <T> one of {list(TRANSFORMS)}"
        )


def _cnn_spatial(size: int, k1: int = 9, k2: int = 7) -> tuple[int, int, int] | None:
    """(padding1, padding2, output side) of the CNN on a size×size input; valid convs when they fit,
    'same' padding where the map is too small for them (the 21×21 maps of pooled RTS)."""
    s = size - (k1 - 1)
    if s >= 2:
        s //= 2
        s2 = s - (k2 - 1)
        if s2 >= 2:
            return 0, 0, s2 // 2
    s = (size // 2) // 2
    return (k1 - 1) // 2, (k2 - 1) // 2, s if s >= 1 else None


def fcn(in_features: int, hidden: int, classes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, classes),
    )


def fcn_params(in_features: int, hidden: int, classes: int) -> int:
    return in_features * hidden + hidden + hidden * hidden + hidden + hidden * classes + classes


def cnn(channels: int, size: int, c1: int, c2: int, classes: int) -> nn.Sequential:
    p1, p2, out = _cnn_spatial(size)
    return nn.Sequential(
        InputGradConv2d(channels, c1, 9, padding=p1),
        *relu_max_pool(),
        nn.Conv2d(c1, c2, 7, padding=p2),
        *relu_max_pool(),
        nn.Flatten(),
        nn.Linear(c2 * out * out, classes),
    )


def cnn_params(channels: int, size: int, c1: int, c2: int, classes: int) -> int:
    out = _cnn_spatial(size)[2]
    return 81 * channels * c1 + c1 + 49 * c1 * c2 + c2 + c2 * out * out * classes + classes


def loc_fcn(channels: int, size: int) -> tuple[nn.Module, int]:
    half = size // 2
    layers: list[nn.Module] = [AvgPool(2), nn.Flatten(), nn.Linear(channels * half * half, 32), nn.ReLU(inplace=True)]
    layers += [nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Linear(32, 32), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers), 32


def loc_cnn(channels: int, size: int) -> tuple[nn.Module, int]:
    s = ((size // 2 - 4) // 2) - 4
    if s < 1:
        raise ValueError(f"a {size}x{size} input is too small for the ST-CNN localisation network")
    net = nn.Sequential(
        AvgPool(2),
        nn.Conv2d(channels, 20, 5),
        *relu_max_pool(),
        nn.Conv2d(20, 20, 5),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(20 * s * s, 20),
        nn.ReLU(inplace=True),
    )
    return net, 20


class STClassifier(nn.Module):
    """Spatial transformer(s) at the start of a classification network.

    k > 1 transformers run in parallel with their own localisation nets (the 2×ST-FCN of
    appendix A.1), each seeing the whole input; their outputs are concatenated along channels.
    """

    def __init__(self, sts: list[SpatialTransformer], pool: bool, classifier: nn.Module) -> None:
        super().__init__()
        self.sts = nn.ModuleList(sts)
        self.pool = AvgPool(2) if pool else nn.Identity()
        self.classifier = classifier

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The transformers' output (N, k·C, H, W) and θ, (N, P) for one transformer or (N, k, P)."""
        outs, thetas = zip(*(st(x) for st in self.sts))
        if len(self.sts) == 1:
            return outs[0], thetas[0]
        return torch.cat(outs, 1), torch.stack(thetas, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.transform(x)
        return self.classifier(self.pool(out))


@dataclass(frozen=True)
class Net:
    """How a model starts and what its layers see (the paper says neither; docs/CHOICES.md)."""

    init: str = "default"  # "default" (PyTorch's) or "he" (stn.modules.initialise)
    standardise: bool = False  # the classifier and the localisation nets see (x − mean) / std of the training set

    @classmethod
    def from_dict(cls, d: dict | None) -> "Net":
        return cls(**(d or {}))


def has_standardisation(model: nn.Module) -> bool:
    return any(isinstance(m, Standardise) for m in model.modules())


def set_standardisation(model: nn.Module, mean: float, std: float) -> int:
    """Fill every Standardise layer of `model` with the training set's pixel statistics; returns how many."""
    layers = [m for m in model.modules() if isinstance(m, Standardise)]
    for m in layers:
        m.set_(mean, std)
    return len(layers)


@dataclass
class Built:
    model: nn.Module
    params: int
    widths: dict = field(default_factory=dict)
    in_paper_range: bool = True


def _sts(spec: ModelSpec, inp: InputSpec, standardise: bool = False) -> list[SpatialTransformer]:
    name, kwargs = TRANSFORMS[spec.transform]
    sts = []
    for _ in range(spec.transformers):
        loc, features = (loc_fcn if spec.base == "FCN" else loc_cnn)(inp.channels, inp.size)
        if standardise:
            loc = nn.Sequential(Standardise(), *loc)
        sts.append(SpatialTransformer(loc, features, make_transform(name, **kwargs), (inp.size, inp.size)))
    return sts


def _classifier_input(spec: ModelSpec, inp: InputSpec) -> tuple[int, int]:
    """(channels, side) that the classification network sees."""
    if not spec.transformers:
        return inp.channels, inp.size
    side = inp.size // 2 if inp.pool_after_st else inp.size
    return inp.channels * spec.transformers, side


def _overhead(spec: ModelSpec, inp: InputSpec) -> int:
    if not spec.transformers:
        return 0
    return sum(p.numel() for st in _sts(spec, inp) for p in st.parameters())


def _candidates(spec: ModelSpec, inp: InputSpec, widen: int) -> list[tuple[dict, int, bool]]:
    """Every width choice with its total parameter count and whether it is in the paper's range."""
    ch, side = _classifier_input(spec, inp)
    extra = _overhead(spec, inp)
    out = []
    if spec.base == "FCN":
        lo, hi = FCN_WIDTHS
        for h in range(max(8, lo // widen), hi * widen + 1):
            out.append(({"hidden": h}, extra + fcn_params(ch * side * side, h, inp.classes), lo <= h <= hi))
    else:
        lo, hi = CNN_WIDTHS
        for c1 in range(max(4, lo // widen), hi * widen + 1):
            for c2 in (c1, c1 + 1):
                n = extra + cnn_params(ch, side, c1, c2, inp.classes)
                out.append(({"c1": c1, "c2": c2}, n, lo <= c1 <= hi and lo <= c2 <= hi))
    return out


def feasible_target(models: list[str], inp: InputSpec, cap: int) -> int:
    """The count every model can reach inside the paper's width ranges, capped at `cap`: the
    smallest of the models' in-range maxima. Models whose in-range minimum lies above it widen
    their range downwards (recorded as out of range)."""
    maxima = []
    for name in models:
        counts = [n for _, n, ok in _candidates(ModelSpec.parse(name), inp, 1) if ok]
        maxima.append(max(counts))
    return min(cap, min(maxima))


def build(name: str, inp: InputSpec, target: int, net: Net = Net()) -> Built:
    """Model `name` with widths whose parameter count is closest to `target`, preferring the
    paper's ranges; fails if no width within WIDEN× of the range gets within ±5%. `net` chooses the
    initialisation and whether the layers after the sampler (and the localisation nets) see
    standardised inputs; the transformers always sample the image as it is."""
    spec = ModelSpec.parse(name)
    cands = _candidates(spec, inp, WIDEN)
    in_range = [c for c in cands if c[2] and abs(c[1] - target) <= TOLERANCE * target]
    pool = in_range or cands
    widths, count, ok = min(pool, key=lambda c: (abs(c[1] - target), not c[2]))
    if abs(count - target) > TOLERANCE * target:
        raise ValueError(f"{name}: no width gives {target} ± 5% parameters on a {inp.size}x{inp.size} input (closest {count})")
    ch, side = _classifier_input(spec, inp)
    if spec.base == "FCN":
        head = fcn(ch * side * side, widths["hidden"], inp.classes)
    else:
        head = cnn(ch, side, widths["c1"], widths["c2"], inp.classes)
    if net.standardise:
        head = nn.Sequential(Standardise(), *head)
    model = head if not spec.transformers else STClassifier(_sts(spec, inp, net.standardise), inp.pool_after_st, head)
    initialise(model, net.init)
    actual = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert actual == count, (name, actual, count)  # the analytic counts above must describe the built model
    return Built(model, actual, widths, ok)


def build_experiment(models: list[str], inp: InputSpec, cap: int) -> tuple[int, dict[str, Built]]:
    target = feasible_target(models, inp, cap)
    return target, {m: build(m, inp, target) for m in models}
