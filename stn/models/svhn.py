"""The multi-digit sequence models of Table 2 (Sect. 4.2, appendix A.5).

CNN: conv[w1,5,1,2]-max2-conv[w2]-conv[w3]-max2-conv[w4]-conv[w5]-max2-conv[w6]-conv[w7]-max2-conv[w8]
-fc[F]-fc[F]-fc[F] (all 5×5 convs with padding 2, ReLU after every weight layer), then five parallel
fc[11] softmaxes, one per position of the sequence (class 10 = no digit). Dropout 0.5 after every
layer but conv1 and the localisation nets. The paper's widths are w = 48, 64, 128, 160, 192, 192, 192,
192 and F = 3,072; configs may scale them.

ST-CNN Single: one affine transformer on the input, its localisation net
conv[c,5,1,2]-max2-conv[c,5,1,2]-fc[32]-fc[32] (c = 32 in the paper).
ST-CNN Multi: an affine transformer before each of the first four conv layers, each with an
fc[32]-fc[32] localisation net on the map it warps; the later three warp feature maps (through the
fused affine sampler). Every transformer keeps its map's size and starts at the identity.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..modules import SpatialTransformer, initialise
from .conv import InputGradConv2d, relu_max_pool

PAPER_WIDTHS = (48, 64, 128, 160, 192, 192, 192, 192)
PAPER_FC = 3072
POOL_AFTER = (0, 2, 4, 6)  # conv indices followed by 2× max pooling
POSITIONS, CLASSES = 5, 11
MODELS = ("CNN", "ST-CNN-Single", "ST-CNN-Multi")
MULTI_STS = 4


def _fc_loc(channels: int, size: int, hidden: int = 32) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True)), hidden


def _conv_loc(channels: int, size: int, filters: int, hidden: int = 32) -> tuple[nn.Module, int]:
    return nn.Sequential(
        nn.Conv2d(channels, filters, 5, padding=2), *relu_max_pool(),
        nn.Conv2d(filters, filters, 5, padding=2), nn.ReLU(inplace=True), nn.Flatten(),
        nn.Linear(filters * (size // 2) ** 2, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True)), hidden


class SequenceNet(nn.Module):
    """The CNN with transformers before some of its conv layers; returns logits (N, 5, 11)."""

    def __init__(self, channels: int, size: int, widths: tuple[int, ...] = PAPER_WIDTHS, fc: int = PAPER_FC,
                 transformers: str = "none", loc_filters: int = 32, dropout: float = 0.5) -> None:
        super().__init__()
        if len(widths) != 8:
            raise ValueError(f"the sequence CNN has 8 conv layers; got {len(widths)} widths")
        if transformers not in ("none", "single", "multi"):
            raise ValueError(f"transformers must be none, single or multi, not {transformers!r}")
        self.convs, self.sts = nn.ModuleList(), nn.ModuleDict()
        c, s = channels, size
        for i, w in enumerate(widths):
            if (transformers == "single" and i == 0) or (transformers == "multi" and i < MULTI_STS):
                loc, feats = _conv_loc(c, s, loc_filters) if transformers == "single" else _fc_loc(c, s)
                self.sts[str(i)] = SpatialTransformer(loc, feats, "affine", out_size=(s, s))
            # conv1 behind the input's transformer also returns d input (to dθ): with one input channel, the fold's
            # matmul + col2im (InputGradConv2d; a SEQ128 ST-CNN-Multi step 250 -> 222 ms), not oneDNN's kernel
            layer = [(InputGradConv2d if i == 0 else nn.Conv2d)(c, w, 5, padding=2)]
            if i in POOL_AFTER:
                layer += relu_max_pool()
                s //= 2
            else:
                layer.append(nn.ReLU(inplace=True))
            if i > 0:
                layer.append(nn.Dropout(dropout))
            self.convs.append(nn.Sequential(*layer))
            c = w
        if s < 1:
            raise ValueError(f"a {size}×{size} input is too small for four 2× poolings")
        head = [nn.Flatten()]
        features = c * s * s
        for _ in range(3):
            head += [nn.Linear(features, fc), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            features = fc
        self.head = nn.Sequential(*head)
        self.classifiers = nn.Linear(fc, POSITIONS * CLASSES)  # five fc[11], stored as one layer

    def input_transformers(self) -> list[SpatialTransformer]:
        """The transformer on the input image, if any (`start_zoom` zooms it; the later ones warp feature maps)."""
        return [self.sts["0"]] if "0" in self.sts else []

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The first transformer's output on the input and its θ (N, 6)."""
        st = self.sts[min(self.sts, key=int)]
        return st(x)

    def forward(self, x: Tensor) -> Tensor:
        for i, conv in enumerate(self.convs):
            if str(i) in self.sts:
                x, _ = self.sts[str(i)](x)
            x = conv(x)
        return self.classifiers(self.head(x)).view(-1, POSITIONS, CLASSES)


def build(name: str, channels: int, size: int, width: float = 1.0, fc: int = PAPER_FC, loc_filters: int = 32,
          dropout: float = 0.5, init: str = "default") -> SequenceNet:
    """One of MODELS with the paper's conv widths times `width` (at least 4 filters each).
    `init`: "default" (PyTorch's) or "he" (He-normal weights, zero biases) for every conv and linear
    layer outside the transformers' regressors, which start at the identity either way."""
    kinds = dict(zip(MODELS, ("none", "single", "multi")))
    if name not in kinds:
        raise ValueError(f"unknown Table 2 model {name!r}; choose one of {list(MODELS)}")
    widths = tuple(max(4, round(w * width)) for w in PAPER_WIDTHS)
    return initialise(SequenceNet(channels, size, widths, fc, kinds[name], loc_filters, dropout), init)
