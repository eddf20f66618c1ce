"""The fine-grained models of Table 3 (Sect. 4.3, appendix A.6): a CNN and N parallel attention transformers.

CNN: a backbone (torchvision's `googlenet`, or a small conv net where the CPU budget demands it) whose
pooled features go through dropout to one linear softmax layer.

k×ST-CNN (Fig. 6): one shared localisation net (the backbone without its last pooling, conv1×1 to
`loc_channels`, fc[`loc_fc`], then the transformer's regressor fc[2k]) predicts the centre (x, y) of k
attention windows whose scale is fixed at 0.5 (transforms.Attention(0.5)); each window is sampled to
`crop`×`crop` and described by its own backbone stream; the k pooled descriptors are concatenated,
dropout, one softmax layer. Where the input is larger than `crop` (the paper's 448 px), the
localisation net sees a fixed 2× downscale (2×2 averages), so it always works at `crop` px.
The windows start tiling the image: for k = 2 the left and right halves' centres (x = ∓0.5, y = 0),
for k = 4 the four quadrants' centres.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..modules import SpatialTransformer, avg_pool
from ..transforms import Attention
from .conv import InputGradConv2d, relu_max_pool

MODELS = ("CNN", "2xST-CNN", "4xST-CNN")
BACKBONES = ("small", "googlenet")
SCALE = 0.5  # appendix A.6: the attention window is half the image's side
GOOGLENET_FEATURES = 1024
SMALL_STAGES = 4  # conv3×3-BN-ReLU stages of the small backbone, widths w, 2w, 4w, 8w, max2 after all but the last


def transformers(model: str) -> int:
    """The number of parallel transformers of a Table 3 model name (0 for the CNN)."""
    if model not in MODELS:
        raise ValueError(f"unknown Table 3 model {model!r}; choose one of {list(MODELS)}")
    return 0 if model == "CNN" else int(model.split("x")[0])


def tiling(k: int) -> Tensor:
    """The window centres (k, 2) that tile the image at the start: halves for 2, quadrants for 4."""
    if k == 1:
        return torch.zeros(1, 2)
    if k == 2:
        return torch.tensor([[-0.5, 0.0], [0.5, 0.0]])
    if k == 4:
        return torch.tensor([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]])
    raise ValueError(f"no tiling of {k} windows of half the image's side; use 1, 2 or 4 transformers")


class SmallBackbone(nn.Module):
    """SMALL_STAGES × conv3×3-BN-ReLU, widths w, 2w, 4w, 8w, with 2× max pooling after all but the last:
    `features` maps (N, C, S, S) to (N, 8w, S/8, S/8) (6×6 at 48 px, as googlenet's 7×7 at 224); the
    forward pools it to (N, 8w)."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        layers, c = [], channels
        for i in range(SMALL_STAGES):
            w = width * 2 ** i
            # the first convolution behind a transformer also returns d input (to dθ): for one input channel the
            # fold's matmul + col2im (InputGradConv2d), not oneDNN's backward-data kernel
            conv = InputGradConv2d if i == 0 and c == 1 else nn.Conv2d
            layers += [conv(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)]
            layers += relu_max_pool() if i < SMALL_STAGES - 1 else [nn.ReLU(inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.out_features = c

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean((2, 3))


class GoogLeNetBackbone(nn.Module):
    """torchvision's googlenet (Inception v1 with batch norm after every conv) without its classifier:
    `features` maps (N, 3, 224, 224) to (N, 1024, 7, 7); the forward pools it to (N, 1024).
    Inputs are ImageNet-normalised images; `state` is a state dict of torchvision's ImageNet weights."""

    def __init__(self, channels: int = 3, state: dict | None = None) -> None:
        super().__init__()
        from torchvision.models import googlenet

        if channels != 3:
            raise ValueError(f"the googlenet backbone takes RGB images (3 channels), not {channels}")
        net = googlenet(weights=None, aux_logits=False, init_weights=state is None, transform_input=False)
        if state is not None:
            missing, _ = net.load_state_dict({k: v for k, v in state.items() if not k.startswith("aux")},
                                                      strict=False)
            if missing:
                raise ValueError(f"the googlenet weights lack {len(missing)} tensors, e.g. {missing[:3]}; "
                                 f"give torchvision's googlenet ImageNet weights (googlenet-1378be20.pth)")
        self.features = nn.Sequential(*[getattr(net, n) for n in (
            "conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
            "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
            "inception5a", "inception5b")])
        self.out_features = GOOGLENET_FEATURES

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean((2, 3))


def make_backbone(name: str, channels: int, width: int, weights: dict | None = None) -> nn.Module:
    if name == "small":
        return SmallBackbone(channels, width)
    if name == "googlenet":
        return GoogLeNetBackbone(channels, weights)
    raise ValueError(f"unknown backbone {name!r}; choose one of {list(BACKBONES)}")


class Localisation(nn.Module):
    """Appendix A.6's localisation net: a backbone's feature map, conv1×1 to `channels`, fc[`hidden`]."""

    def __init__(self, backbone: nn.Module, crop: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            probe = backbone.features(torch.zeros(1, next(backbone.parameters()).shape[1], crop, crop))
        self.reduce = nn.Sequential(nn.Conv2d(probe.shape[1], channels, 1), nn.ReLU(inplace=True))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(channels * probe.shape[2] * probe.shape[3], hidden),
                                nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.reduce(self.backbone.features(x)))


class PartsNet(nn.Module):
    """A Table 3 model on `size`-px inputs: the CNN (k = 0) or k parallel attention transformers whose
    `crop`-px windows each feed their own backbone stream. Returns logits (N, classes)."""

    def __init__(self, k: int, channels: int, size: int, crop: int, classes: int, backbone: str = "small",
                 width: int = 16, loc_channels: int = 128, loc_fc: int = 128, dropout: float = 0.7,
                 weights: dict | None = None) -> None:
        super().__init__()
        if size not in (crop, 2 * crop):
            raise ValueError(f"input size {size} must be the crop size {crop} or twice it (the paper's 224 and 448)")
        self.k, self.size, self.crop = k, size, crop
        make = lambda: make_backbone(backbone, channels, width, weights)  # noqa: E731
        self.streams = nn.ModuleList([make() for _ in range(max(k, 1))])
        self.sts = nn.ModuleDict()
        if k:
            loc = Localisation(make(), crop, loc_channels, loc_fc)
            st = SpatialTransformer(loc, loc_fc, Attention(SCALE), out_size=(crop, crop), num_transformers=k)
            with torch.no_grad():
                st.regressor.bias.copy_(tiling(k).reshape(-1))
            self.sts["0"] = st
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.streams[0].out_features * max(k, 1), classes)

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The k crops (N, k·C, crop, crop) and their window centres θ (N, k, 2); for the CNN the input
        and an empty θ."""
        if not self.k:
            return x, x.new_zeros(x.shape[0], 0, 2)
        st = self.sts["0"]
        loc_input = avg_pool(x, 2) if self.size == 2 * self.crop else x
        out, theta = st(x, loc_input)
        return out, theta.view(x.shape[0], self.k, 2)

    def forward(self, x: Tensor) -> Tensor:
        if not self.k:
            return self.classifier(self.dropout(self.streams[0](x)))
        crops, _ = self.transform(x)
        parts = crops.chunk(self.k, dim=1)
        feats = torch.cat([stream(p) for stream, p in zip(self.streams, parts)], 1)
        return self.classifier(self.dropout(feats))


def window_boxes(theta: Tensor, size: int) -> Tensor:
    """The attention windows θ (N, k, 2) as boxes (N, k, 4) = (x0, y0, x1, y1) in pixels of a `size`-px input."""
    half = SCALE * size / 2
    centre = (theta + 1) * size / 2
    return torch.cat([centre - half, centre + half], -1)


def googlenet_weights_path(setting: str) -> Path | None:
    """The file that table3.cub.weights names: a path, or torch's hub cache for "hub" and "auto" (None where the
    cache has none: "auto" then trains from scratch; "hub" is an error); None for "none". Nothing is downloaded."""
    from ..paper.registry import googlenet_hub_path

    if setting == "none":
        return None
    if setting not in ("hub", "auto"):
        return Path(setting)
    cached = googlenet_hub_path()
    if cached.exists():
        return cached
    if setting == "hub":
        raise FileNotFoundError(f"table3.cub.weights is hub but torch's hub cache has no {cached.name}")
    return None


def load_googlenet_weights(path: str | Path) -> dict:
    """torchvision's ImageNet googlenet weights from `path`, loaded without running code from it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"googlenet weights {path} do not exist; set table3.cub.weights to torchvision's "
                                f"googlenet-1378be20.pth, or to auto or none to train the backbone from scratch")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a readable PyTorch weights file ({exc})") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state
