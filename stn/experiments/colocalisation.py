"""Co-localisation (appendix A.2, Table 5, Fig. 4).

For one digit class, 100 images of a 28×28 digit at a uniform random place in an 84×84 canvas
(T), with sixteen 6×6 distractor crops in TC. An attention transformer crops each image; nothing
but the triplet hinge loss of eq. (8) trains it: the encodings e() of two images' crops should be
closer than an image's crop and a random crop of the same image. e() is made of Table 1 CNNs the
pipeline trained, frozen (`Encoder`, per variant `table5.encoders`): each CNN's features are its two
hidden layers and its logits, and on TC the TC CNN's stand beside the P CNN's.

Five departures make eq. 8 find the digits (docs/CHOICES.md has the measurements): the window
starts as the whole canvas and shrinks to the digit's size over the first steps instead of
regressing s; the crops' mean position is held at the canvas centre until then and afterwards
follows the crops' mean ink centroid (`centre: ink`); the window is sampled at the image's own
pixel pitch, so that TC's CNN reads digits at the size it was trained on (`resolution: native`);
the optimiser is Adam; and the margin is 4, since the features' blocks are L2-normalised.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from . import load_weights, run_records, tracker, write_metrics
from .. import ops
from ..data import distort
from ..io import read_json, save_npz, write_json, write_text
from ..models.conv import InputGradConv2d, conv_valid
from ..modules import SpatialTransformer, Standardise
from ..paper import registry
from ..settings import ENCODER_RUN, PRECISIONS
from ..train import autocast, make_optimizer
from ..transforms import Attention

CANVAS = 84
CROP = 28
CLUTTER = {"T": 0, "TC": 16}


def make_images(mnist: dict[str, np.ndarray], digit: int, variant: str, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` canvases of class `digit` (MNIST test digits, so none was seen by the encoder)."""
    x, y = mnist["test_images"], mnist["test_labels"]
    gen = torch.Generator().manual_seed(seed * 100 + digit * 2 + (variant == "TC"))
    pool = np.flatnonzero(y == digit)
    chosen = pool[torch.randperm(len(pool), generator=gen)[:count].numpy()]
    digits = torch.from_numpy(x[chosen]).float().div(255).unsqueeze(1)
    g = distort.translated_cluttered(digits, gen, others=x, size=CANVAS, clutter=CLUTTER[variant])
    return {"images": g.images, "boxes": g.params[:, :4].astype(np.float32), "params": g.params.astype(np.float32),
            "mnist_index": chosen}


# Where the crops' mean position is held (`optimise.centre`), with the words the caption gives each.
CENTRE_WORDS = {"ink": " and the crops' mean is held at the canvas centre, then follows their ink",
                "canvas": " and the crops' mean is held at the canvas centre", "none": ""}
CENTRES = tuple(CENTRE_WORDS)
# How the window is sampled (`optimise.resolution`), with the words the caption gives each.
RESOLUTION_WORDS = {"digit": "", "native": ", each window sampled at the image's own pixel pitch"}
RESOLUTIONS = tuple(RESOLUTION_WORDS)
RECENTRE_RATE = 0.5  # the fraction of the crops' mean ink offset that `centre: ink` moves the pin each step


class BatchCentred(nn.Module):
    """Wraps the regressor so the set's mean (tx, ty) stays at `centre` (normalised canvas units, (1, 2)),
    which starts at the canvas centre.

    The digits are placed uniformly, so their mean position is near the centre; pinning the crops'
    mean there removes the shared shift that otherwise carries every crop into one blank corner
    (docs/CHOICES.md). Each optimisation step sees the whole image set as one batch.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.register_buffer("centre", torch.zeros(1, 2))

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(x)
        return y - y.mean(0, keepdim=True) + self.centre


def ink_offset(crops: Tensor) -> Tensor:
    """The crops' (N, 1, h, w) ink centroids relative to their centres, averaged over the set: (x, y) in
    crop-normalised units (±1 at the crop's edges). A blank crop counts as centred."""
    w = crops[:, 0]
    ys = (torch.arange(w.shape[1], dtype=w.dtype) * 2 + 1) / w.shape[1] - 1
    xs = (torch.arange(w.shape[2], dtype=w.dtype) * 2 + 1) / w.shape[2] - 1
    mass = w.sum((1, 2)).clamp(min=1e-6)
    return torch.stack([((w.sum(1) * xs).sum(1) / mass).mean(), ((w.sum(2) * ys).sum(1) / mass).mean()])


def recentre(st: SpatialTransformer, crops: Tensor, scale: float) -> None:
    """Move the pin of the crops' mean (BatchCentred.centre) by RECENTRE_RATE of their mean ink offset.

    A finite set's digits are not centred on average (100 uniform places: ±1.6 px per axis, and 4 px for
    TC's class 5 in the default run), and with the pin at the canvas centre every crop keeps that offset:
    eq. 8 cannot see a shift that all crops share. MNIST centres each digit's mass in its box, so the
    crops' mean ink centroid, once they hold their digits, points at the set's mean digit centre."""
    offset = ink_offset(crops.detach()) * scale  # crop units -> canvas units
    st.regressor.centre = st.regressor.centre + RECENTRE_RATE * offset.view(1, 2).to(st.regressor.centre)


def localiser(centred: bool) -> SpatialTransformer:
    """A.2's localisation net: conv 8 filters 9×9 stride 4, max-pool 2, FC 8, FC 8, then a regressor
    for (tx, ty) of an attention window whose scale the optimisation sets (`window_scale`)."""
    side = ((CANVAS - 9) // 4 + 1) // 2
    loc = nn.Sequential(
        nn.Conv2d(1, 8, 9, stride=4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(8 * side * side, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
    )
    st = SpatialTransformer(loc, 8, Attention(CROP / CANVAS), (CROP, CROP))
    if centred:
        st.regressor = BatchCentred(st.regressor)
    return st


def window_scale(step: int, start: float, anneal_steps: int) -> float:
    """The window's side relative to the canvas: `start` shrinking geometrically to the digit's
    28/84 over `anneal_steps`, then held. From the whole canvas every crop holds its digit, and
    eq. 8 pulls the windows towards the digits; from a digit-sized centred crop it pushes them
    away (docs/CHOICES.md)."""
    final = CROP / CANVAS
    if step >= anneal_steps:
        return final
    return start * (final / start) ** (step / anneal_steps)


def crop_resolution(settings: dict) -> str:
    """How a Table 5 `optimise` section samples its windows (`crop_side`); absent: "digit", as before the key."""
    return settings.get("resolution", "digit")


def crop_side(scale: float, resolution: str, largest: int) -> int:
    """The side in pixels of the crop that a window `scale` of the canvas is sampled onto: 28 (`resolution`
    "digit"), or ("native") the window's own side on the 84-px canvas, even, between 28 and `largest` (the largest
    canvas among e()'s CNNs in use: a TC window of 50 px gives a 50 px crop, one of 84 px a 60 px crop)."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"optimise.resolution must be one of {list(RESOLUTIONS)}, got {resolution!r}")
    if resolution == "digit":
        return CROP
    return max(CROP, min(largest - largest % 2, 2 * round(scale * CANVAS / 2)))


def localise(st: SpatialTransformer, x: Tensor, scale: float, side: int = CROP) -> tuple[Tensor, Tensor]:
    """Crops (N, 1, side, side) and θ = (s, tx, ty) (N, 3), after setting the transformer's fixed
    window scale to `scale` (the localiser regresses only (tx, ty))."""
    st.transform.scale = scale
    st.out_size = (side, side)
    crops, t = st(x)
    return crops, torch.cat([torch.full_like(t[:, :1], scale), t], 1)


def feature_maps(cnn: nn.Module, x: Tensor) -> list[Tensor]:
    """The outputs of `cnn`'s max-pool stages and of its last layer, in order (a `PaddedCrop` works them out
    only where its crop reaches)."""
    if isinstance(cnn, PaddedCrop):
        return cnn.feature_maps(x)
    maps = []
    for layer in cnn:
        x = layer(x)
        if isinstance(layer, nn.MaxPool2d):
            maps.append(x)
    return maps + [x]


def encoder_features(cnn: nn.Module, x: Tensor) -> Tensor:
    """The CNN's two hidden layers (after each max-pool) and its logits, each L2-normalised, concatenated.

    Normalising each block keeps squared distances O(1), where the margin α = 1 means something;
    with raw activations an empty crop minimises eq. (8) (docs/CHOICES.md).
    """
    return torch.cat([torch.nn.functional.normalize(f.flatten(1), dim=1) for f in feature_maps(cnn, x)], 1)


class Encoder(nn.Module):
    """e(): the `encoder_features` of one or more frozen CNNs, concatenated, each CNN's scaled by √weight so its
    squared distances count `weight` times in eq. 8; the weights' sum (`weight_of`) scales the margin. `names`
    (the CNNs' data sets) let `optimise.encoder_start` say from which step each CNN joins e(); `only` picks CNNs
    by index.

        e = Encoder([crop_encoder(p_cnn, 28), crop_encoder(tc_cnn, 60)], [0.25, 1.0], ["P", "TC"])
        e(crops)  # (N, 1, 28, 28) -> (N, D)
        e(crops, only=(0,))  # P's features alone, weighed 0.25 (e.weight_of((0,)))
    """

    def __init__(self, cnns: list[nn.Sequential], weights: list[float], names: list[str] | None = None,
                 precision: str = "fp32") -> None:
        super().__init__()
        if len(cnns) != len(weights) or not cnns or min(weights) <= 0:
            raise ValueError(f"e() needs one positive weight per CNN, got {len(cnns)} CNNs and weights {weights}")
        if precision not in PRECISIONS:
            raise ValueError(f"optimise.precision must be one of {list(PRECISIONS)}, got {precision!r}")
        self.cnns = nn.ModuleList(cnns)
        self.weights = [float(w) for w in weights]
        self.names = list(names) if names is not None else [str(i) for i in range(len(cnns))]
        self.precision = precision
        self.eval().requires_grad_(False)
        # under bf16, the crops' gradient from fp32 columns (`InputGradConv2d.columns_dtype`): from bf16 columns, each
        # rounded before col2im sums them, TC's class 1 ended at 49-56% over optimiser seeds 0-3 (440 steps), against
        # 87-94% on three of them; oneDNN's kernel, the path until session 40, is ~1.3x slower a step (docs/CHOICES.md)
        for layer in self.modules():
            if isinstance(layer, InputGradConv2d):
                layer.columns_dtype = torch.float32

    def largest(self, only: tuple[int, ...] | None = None) -> int:
        """The largest canvas (side in pixels) among the CNNs `only` (all: None): 60 with TC's CNN, else 28."""
        chosen = range(len(self.cnns)) if only is None else only
        return max(self.cnns[i].size if isinstance(self.cnns[i], PaddedCrop) else CROP for i in chosen)

    def parts(self, x: Tensor, only: tuple[int, ...] | None = None) -> list[Tensor]:
        """Each chosen CNN's scaled features (N, D_i), in order, fp32; with precision bf16 the CNNs run under
        autocast (the crops come in, and the features go out, in fp32). Crops larger than 28×28 (`crop_side`)
        reach a CNN on 28×28 images resized to that (`fit_crops`)."""
        chosen = range(len(self.cnns)) if only is None else only
        if self.precision == "fp32":  # no autocast context at all: the fp32 path is the code it always was
            return [encoder_features(self.cnns[i], fit_crops(self.cnns[i], x)) * self.weights[i] ** 0.5 for i in chosen]
        with autocast(self.precision, x.device):
            feats = [encoder_features(self.cnns[i], fit_crops(self.cnns[i], x)) for i in chosen]
        return [f.float() * self.weights[i] ** 0.5 for f, i in zip(feats, chosen)]

    def weight_of(self, only: tuple[int, ...] | None = None) -> float:
        """The summed weight of the CNNs `only` (all: None), by which eq. 8's margin is scaled."""
        return float(sum(self.weights[i] for i in (range(len(self.weights)) if only is None else only)))

    def forward(self, x: Tensor, only: tuple[int, ...] | None = None) -> Tensor:
        return torch.cat(self.parts(x, only), 1)


ELEMENTWISE = (nn.ReLU, nn.Identity, nn.Dropout, Standardise)


class PaddedCrop(nn.Module):
    """A CNN on `size`² images applied to a crop (28×28 in Table 5) at the centre of an otherwise blank `size`²
    canvas, each layer computed only where the crop reaches.

    Outside that reach a layer's output is its output on a blank canvas, worked out once (`blank`), so a
    convolution runs only on the window that its outputs near the crop read. On the TC CNN (60², an unpadded 9×9 and
    7×7 convolution, 2×2 max-pools) and a 28-px crop that is 36² of the first convolution's 52² outputs (its second
    reads all of its 26² input): a TC step 1.23× faster (`python -m stn.bench coloc`), the same values (bitwise in
    fp32 on the default run's encoders). Stride-1 convolutions, 2×2 max-pools and elementwise layers are windowed;
    from the first other layer (Flatten) on, the CNN runs on the full map (`feature_maps`).

        e = PaddedCrop(tc_cnn, 60)
        e(crops)  # (N, 1, 28, 28) -> logits, as tc_cnn(F.pad(crops, (16,) * 4))
    """

    def __init__(self, cnn: nn.Sequential, size: int) -> None:
        super().__init__()
        self.cnn, self.size = cnn, size
        self._blank: tuple | None = None

    def offset(self, crop: int) -> int:
        """Where a crop of side `crop` starts on the canvas (centred: `size` − `crop` must be even)."""
        pad, odd = divmod(self.size - crop, 2)
        if pad < 0 or odd:
            raise ValueError(f"a {crop}×{crop} crop cannot sit at the centre of a {self.size}×{self.size} canvas")
        return pad

    def blank(self, x: Tensor) -> list[Tensor]:
        """Each layer's input on a blank canvas (1, C, h, w), then the last layer's output, for x's device, dtype
        and autocast state."""
        key = (x.device, x.dtype, x.shape[1], torch.is_autocast_enabled(x.device.type))
        if self._blank is None or self._blank[0] != key:
            with torch.no_grad():
                y, inputs = x.new_zeros(1, x.shape[1], self.size, self.size), []
                for layer in self.cnn:
                    inputs.append(y)
                    y = layer(y)
            self._blank = (key, inputs + [y])
        return self._blank[1]

    @staticmethod
    def _window(blank: Tensor, region: Tensor, lo: int, start: int, stop: int) -> Tensor:
        """Rows and columns [start, stop) of the map that is `blank` with `region` at [lo, lo + h); beyond the
        map's edges, zeros (a convolution's padding)."""
        size, hi = blank.shape[-1], lo + region.shape[-1]
        a, b = max(start, 0), min(stop, size)
        out = blank[:, :, a:b, a:b].expand(region.shape[0], -1, -1, -1).clone()
        ra, rb = max(a, lo), min(b, hi)
        out[:, :, ra - a:rb - a, ra - a:rb - a] = region[:, :, ra - lo:rb - lo, ra - lo:rb - lo]
        if start < a or stop > b:
            out = torch.nn.functional.pad(out, (a - start, stop - b) * 2)
        return out

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """`feature_maps` of the padded canvas: each max-pool's output and the last layer's, full size."""
        blank, maps = self.blank(x), []
        region, lo, size = x, self.offset(x.shape[-1]), self.size  # what differs from the blank canvas, and where
        whole = None  # the current map at full size, once worked out (after a max-pool)

        def window(i: int, start: int, stop: int) -> Tensor:
            if whole is not None and (start, stop) == (0, size):
                return whole
            return self._window(blank[i], region, lo, start, stop)

        for i, layer in enumerate(self.cnn):
            if isinstance(layer, ELEMENTWISE):
                region = layer(region)
            elif isinstance(layer, nn.Conv2d) and layer.stride == (1, 1) and layer.dilation == (1, 1) \
                    and layer.groups == 1 and isinstance(layer.padding, tuple) and len(set(layer.padding)) == 1 \
                    and len(set(layer.kernel_size)) == 1:
                k, p = layer.kernel_size[0], layer.padding[0]
                out = size + 2 * p - k + 1
                start, stop = max(0, lo + p - k + 1), min(out, lo + region.shape[-1] + p)
                region = conv_valid(layer, window(i, start - p, stop - p + k - 1))
                lo, size = start, out
            elif isinstance(layer, nn.MaxPool2d) and layer.kernel_size in (2, (2, 2)) \
                    and layer.stride in (2, (2, 2)) and layer.padding in (0, (0, 0)) and not layer.ceil_mode:
                start, stop = lo // 2, min(size // 2, (lo + region.shape[-1] + 1) // 2)
                region = layer(window(i, 2 * start, 2 * stop))
                lo, size = start, size // 2
                whole = self._window(blank[i + 1], region, lo, 0, size)
                maps.append(whole)
                continue
            else:  # from here on, the whole map
                return maps + feature_maps(self.cnn[i:], window(i, 0, size))
            whole = None
        return maps + [window(len(self.cnn), 0, size)]

    def forward(self, x: Tensor) -> Tensor:
        return self.feature_maps(x)[-1]


def fit_crops(cnn: nn.Module, crops: Tensor) -> Tensor:
    """`crops` as `cnn` reads them: a `PaddedCrop` centres them on its canvas itself; a CNN on 28×28 images gets
    larger crops resized to 28×28 (bilinear, antialiased: a window that holds a digit and more shows it smaller, as
    P's scaled digits are)."""
    if isinstance(cnn, PaddedCrop) or crops.shape[-1] == CROP:
        return crops
    return torch.nn.functional.interpolate(crops, size=(CROP, CROP), mode="bilinear", align_corners=False,
                                           antialias=True)


def crop_encoder(cnn: nn.Sequential, size: int) -> nn.Module:
    """e() for 28×28 crops from a Table 1 CNN whose images are `size`² (RTS 42², TC 60²): each crop sits at
    the centre of a blank canvas of that size, as that data set's 28×28 digits sat in theirs (`PaddedCrop`).
    A 28×28 data set's CNN (R, P, E) is returned as it is."""
    pad, odd = divmod(size - CROP, 2)
    if pad < 0 or odd:
        raise ValueError(f"e() needs a CNN on {CROP}×{CROP} images or on images an even number of pixels larger, "
                         f"not {size}×{size}")
    return PaddedCrop(cnn, size) if pad else cnn


def triplet_loss(e_crop: Tensor, e_pair: Tensor, e_rand: Tensor, margin: float = 1.0) -> Tensor:
    """Eq. (8) per image n: max(0, ‖e(Iₙᵀ) − e(Iₘᵀ)‖² − ‖e(Iₙᵀ) − e(Iₙʳᵃⁿᵈ)‖² + α), averaged."""
    pos = (e_crop - e_pair).pow(2).sum(1)
    neg = (e_crop - e_rand).pow(2).sum(1)
    return torch.clamp(pos - neg + margin, min=0).mean()


def boxes_from_theta(theta: Tensor, size: int = CANVAS) -> Tensor:
    """Attention θ = (s, tx, ty) -> pixel boxes (x0, y0, x1, y1) of the region it samples."""
    s, tx, ty = theta.unbind(1)
    s = s.abs()
    return torch.stack([(tx - s + 1), (ty - s + 1), (tx + s + 1), (ty + s + 1)], 1) * (size / 2)


def iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of boxes (N, 4) given as (x0, y0, x1, y1)."""
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = w * h
    area = lambda r: (r[:, 2] - r[:, 0]).clamp(min=0) * (r[:, 3] - r[:, 1]).clamp(min=0)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-12)


def random_crops(x: Tensor, gen: torch.Generator) -> Tensor:
    """Iₙʳᵃⁿᵈ: a uniformly placed digit-sized (28×28) patch of each image."""
    n = x.shape[0]
    s = CROP / CANVAS
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * (1 - s)
    theta = torch.cat([torch.full((n, 1), s), t], 1).to(x)
    return ops.sample(x, Attention().grid(theta, (CROP, CROP)))


def random_bank(x: Tensor, encoder: Encoder, count: int, gen: torch.Generator) -> list[Tensor]:
    """e(Iₙʳᵃⁿᵈ) for `count` random patches of each image, encoded once: per CNN of e(), (N, count, D_i). e() is
    frozen and the images fixed, so a patch's encoding never changes; drawing one of these per step
    (`optimise.random_bank`) spares the forward pass through e() that a fresh patch costs every step (a third of
    a TC step's work)."""
    with torch.no_grad():
        draws = [encoder.parts(random_crops(x, gen)) for _ in range(count)]
    return [torch.stack([d[i] for d in draws], 1) for i in range(len(encoder.cnns))]


def random_encodings(x: Tensor, encoder: Encoder, only: tuple[int, ...], bank: list[Tensor] | None,
                     gen: torch.Generator) -> Tensor:
    """This step's e(Iₙʳᵃⁿᵈ) from the CNNs `only`: a fresh patch of each image, or one of its patches in `bank`."""
    if bank is None:
        return encoder(random_crops(x, gen), only)
    draw = torch.arange(len(x)), torch.randint(bank[0].shape[1], (len(x),), generator=gen)
    return torch.cat([bank[i][draw] for i in only], 1)


def encoder_schedule(encoder: Encoder, starts: dict[str, int]) -> Callable[[int], tuple[int, ...]]:
    """step -> the indices of e()'s CNNs in use at that step: each from its `starts` step on (absent: step 0). A data
    set of `starts` that this e() is not made of is another variant's (the config's check refuses one of none)."""
    if all(starts.get(name, 0) > 0 for name in encoder.names):
        raise ValueError(f"optimise.encoder_start {starts}: some CNN of e() ({encoder.names}) must start at step 0")
    return lambda step: tuple(i for i, name in enumerate(encoder.names) if starts.get(name, 0) <= step)


def derangement(n: int, gen: torch.Generator) -> Tensor:
    """A random pairing m(n) ≠ n."""
    shift = torch.randint(1, n, (1,), generator=gen).item()
    perm = torch.randperm(n, generator=gen)
    partner = torch.empty(n, dtype=torch.long)
    partner[perm] = perm.roll(shift)
    return partner


def optimise(images: np.ndarray, boxes: np.ndarray, encoder: Encoder, settings: dict, seed: int,
             log=print, on_eval=None) -> dict:
    """Train a localiser on one image set; returns the final localisation rate and the θ trajectory, whose frames
    (every settings["record_every"] steps and the last) also carry eq. 8's mean loss over the steps since the frame
    before (None at step 0): the final loss ranks draws without the true boxes (docs/CHOICES.md). The margin
    is settings["margin"] per unit of the weight of e()'s CNNs in use, each from its settings["encoder_start"] step
    on (`encoder_schedule`). Iₙʳᵃⁿᵈ is a fresh patch every step, or with settings["random_bank"] = K > 0 one of K
    patches per image encoded once at the start (`random_bank`)."""
    torch.manual_seed(seed)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    true = torch.from_numpy(boxes).double()
    centre = settings["centre"]
    if centre not in CENTRES:
        raise ValueError(f"optimise.centre must be one of {list(CENTRES)}, got {centre!r}")
    resolution = crop_resolution(settings)
    crop_side(1.0, resolution, CROP)  # names a bad value before any work
    st = localiser(centre != "none")
    in_use = encoder_schedule(encoder, settings.get("encoder_start") or {})
    opt = make_optimizer(settings["optimizer"], st.parameters(), settings["lr"], settings["momentum"])
    gen = torch.Generator().manual_seed(seed)
    bank = random_bank(x, encoder, settings["random_bank"], gen) if settings.get("random_bank", 0) else None
    trajectory = []
    window = []  # eq. 8's loss at each step since the last frame
    start = time.time()
    for step in range(settings["steps"] + 1):
        scale = window_scale(step, settings["scale_from"], settings["anneal_steps"])
        only = in_use(step)
        crops, theta = localise(st, x, scale, crop_side(scale, resolution, encoder.largest(only)))
        if step % settings["record_every"] == 0 or step == settings["steps"]:  # always true at the last step
            boxes = boxes_from_theta(theta.detach().double())
            hits = iou(boxes, true) > 0.5  # A.2's measure: IoU with the true box above 0.5
            rate = float(hits.double().mean() * 100)
            trajectory.append({"step": step, "theta": theta[: settings["figure_images"]].tolist(), "localised": rate,
                               "loss": float(torch.stack(window).mean()) if window else None})
            window.clear()
            if on_eval:
                on_eval(step, rate)
            log(f"step {step}/{settings['steps']}  localised {rate:.0f}%  window {theta[0, 0]:.3f} of the canvas  "
                f"({time.time() - start:.0f} s)")
        if step == settings["steps"]:
            break
        if centre == "ink" and step >= settings["anneal_steps"]:  # the window holds a digit's size from here
            recentre(st, crops, scale)
        partner = derangement(len(x), gen)
        e_rand = random_encodings(x, encoder, only, bank, gen)
        e_crop = encoder(crops, only)
        loss = triplet_loss(e_crop, e_crop[partner], e_rand, settings["margin"] * encoder.weight_of(only))
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append(loss.detach())
    return {"localised": rate, "trajectory": trajectory, "predicted_boxes": boxes.tolist(), "hits": hits.tolist()}


build_data = make_images
build_model = localiser


def train_encoder(job: dict, inputs: dict[str, Path], out_dir: Path) -> dict:
    """e(): the Table 1 CNN architecture trained on the job's data set with its own data reading and
    inputs (job extra `encoder`). Inputs: mnist, params (Table 1's parameter table, for the widths),
    experiments. Writes model.pt, params.json (the table e() is built from) and metrics.json."""
    from . import classification

    dataset, encoder, extra = job["dataset"], job["extra"]["encoder"], job["extra"]
    keys = [key for key, _ in registry.DATASETS[dataset].options]
    data = out_dir / "data.npz"
    classification.build_data(dataset, inputs["mnist"], extra["data_seed"], extra["limits"], data,
                              {k: encoder[k] for k in keys})
    table = read_json(inputs["params"])
    table = {dataset: {**table[dataset], "net": {"init": extra["init"], "standardise": encoder["standardise"]}}}
    write_json(out_dir / "params.json", table)
    try:
        return classification.run_job({**job, "model": "CNN", "extra": {}},
                                      {"data": data, "params": out_dir / "params.json",
                                       "experiments": inputs["experiments"]}, out_dir)
    finally:
        data.unlink(missing_ok=True)
        data.with_suffix(".json").unlink(missing_ok=True)


def copy_table1_encoder(dataset: str, run: Path, params: Path, out_dir: Path, log: Path | None = None) -> dict:
    """e()'s CNN on `dataset` from Table 1's own run of the same job (`settings.encoder_from_table1`): its model.pt,
    its entry of Table 1's parameter table as params.json, and its metrics.json with `from_run` naming the run,
    written into out_dir as `train_encoder` writes them (and a line saying so into `log`)."""
    import shutil

    from ..io import atomic_path

    run, out_dir = Path(run), Path(out_dir)
    table = read_json(params)
    if dataset not in table:
        raise KeyError(f"Table 1's parameter table {params} has no {dataset}; e()'s CNN on {dataset} comes from its run")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.pt") as tmp:
        shutil.copyfile(run / "model.pt", tmp)
    write_json(out_dir / "params.json", {dataset: table[dataset]})
    metrics = {**read_json(run / "metrics.json"), "from_run": str(run)}
    write_json(out_dir / "metrics.json", metrics)
    if log:
        write_text(log, f"copied {run} (Table 1's CNN on {dataset}) to {out_dir}\n")
    return metrics


def encoder_precision(settings: dict, variant: str) -> str:
    """The arithmetic of e()'s CNNs on `variant` that a Table 5 `optimise` section asks for: its `precision`, one for
    every variant or {variant: precision} (a variant it leaves out, or no `precision` at all: fp32, the paper's)."""
    precision = settings.get("precision", "fp32")
    return precision.get(variant, "fp32") if isinstance(precision, dict) else precision


def load_encoder(weights: dict[str, float], models: dict[str, Path], precision: str = "fp32") -> Encoder:
    """e() from its CNNs' model.pt files ({data set: path}; the params.json its run wrote lies beside each),
    weighted as `weights` ({data set: weight}, table5.encoders of one variant), run at `precision`
    (optimise.precision)."""
    from .classification import build_model as build_classifier

    cnns = []
    for dataset in weights:
        if dataset not in models:
            raise KeyError(f"e() needs the CNN on {dataset}: pass its model.pt as input "
                           f"{ENCODER_RUN.format(dataset=dataset)}=PATH (runs/table5/{ENCODER_RUN.format(dataset=dataset)}/)")
        built = build_classifier(dataset, "CNN", read_json(Path(models[dataset]).parent / "params.json"))
        load_weights(built.model, models[dataset], f"e()'s CNN on {dataset}")
        cnns.append(crop_encoder(built.model, registry.DATASETS[dataset].size))
    return Encoder(cnns, list(weights.values()), list(weights), precision)


def run_job(job: dict, inputs: dict[str, Path], out_dir: Path) -> dict:
    """One class of one variant (the job's data set T or TC, its model the digit), or (model "encoder")
    the training of one of e()'s CNNs. Inputs: mnist, encoder_<data set> (the model.pt of each CNN the
    variant's e() uses, table5.encoders), experiments (MLflow ids)."""
    from ..data import mnist as mnist_data

    if job["model"] == "encoder":
        return train_encoder(job, inputs, out_dir)
    variant, digit, seed, settings = job["dataset"], int(job["model"]), job["seed"], job["settings"]
    weights = job["extra"]["encoders"][variant]
    models = {d: inputs[name] for d in weights if (name := ENCODER_RUN.format(dataset=d)) in inputs}
    encoder = load_encoder(weights, models, encoder_precision(settings, variant))
    data = make_images(mnist_data.load(inputs["mnist"]), digit, variant, settings["images"], seed)
    save_npz(out_dir / "images.npz", **data)
    run = tracker(job, inputs["experiments"], {"variant": variant, "digit": str(digit), "encoders": str(models),
                                               "torch_version": torch.__version__,
                                               "sampler_impl": ops.resolve_impl("auto", torch.device("cpu"))}, out_dir)()
    status = "FAILED"
    try:
        run.log_params({"settings": settings, "seed": seed})
        t0 = time.time()
        result = optimise(data["images"], data["boxes"], encoder, settings, seed,
                          log=lambda s: print(s, flush=True),
                          on_eval=lambda step, rate: run.log_metrics({"localised": rate}, step))
        metrics = {"experiment": job["experiment"], "model": job["model"], "dataset": variant, "seed": seed,
                   "localised": result["localised"], "seconds": time.time() - t0, "run_id": run.run_id}
        write_json(out_dir / "trajectory.json", {**result, "true_boxes": data["boxes"].tolist()})
        metrics = write_metrics(out_dir, metrics)
        status = "FINISHED"
        return metrics
    finally:
        run.end(status)


def render(spec: dict, results: Path) -> list[Path]:
    """Table 5 (every class of the config's variants) and Fig. 4 (one class's boxes over the optimisation)."""
    from ..io import load_npz
    from ..report import figures, tables

    results, section = Path(results), spec["section"]
    e = registry.experiment("table5")
    grid = registry.Grid(**spec["grid"])
    s = spec["settings"]
    bank = s.get("random_bank", 0)
    patches = f", each image's random patch one of {bank} encoded once" if bank else ""
    patches += "".join(f", e() on {v} in {encoder_precision(s, v)} (paper fp32)" for v in section["variants"]
                       if encoder_precision(s, v) != "fp32")
    caption = (f"{e.title}, {spec['config_name']} config "
               f"({s['steps']} {OPTIMIZER_NAMES[s['optimizer']]} steps per class, {s['images']} images each, "
               f"{_encoder_words(section, s.get('encoder_start') or {})}{patches}; "
               f"the window shrinks from the whole canvas{CENTRE_WORDS[s['centre']]}"
               f"{RESOLUTION_WORDS[crop_resolution(s)]}, see docs/CHOICES.md).")
    paths = tables.render_table(run_records(results, "table5", grid), list(e.datasets), list(e.models), caption,
                                results / "tables", "table5")
    variant, digit = section["figure_variant"], section["figure_digit"]
    run = registry.run_dir(results, "table5", variant, digit, grid.seeds[0])
    traj = read_json(run / "trajectory.json")
    frames = traj["trajectory"]
    boxes = torch.stack([boxes_from_theta(torch.tensor(f["theta"])) for f in frames]).numpy()
    made = figures.colocalisation_steps(load_npz(run / "images.npz")["images"], [f["step"] for f in frames], boxes,
                                        np.asarray(traj["true_boxes"]), digit, variant, results / "figures")
    return list(paths.values()) + made


OPTIMIZER_NAMES = {"adam": "Adam", "sgd": "SGD"}  # as the caption spells them


def _encoder_words(section: dict, starts: dict[str, int]) -> str:
    """How e() is made for each variant, e.g. "e() on T the Table 1 CNN on P (raw inputs); on TC 0.25× the CNN on P
    (raw inputs) + the CNN on TC (as Table 1's) from step 240": the weights, what each CNN's training changes, and
    from which step a CNN joins (`starts`, optimise.encoder_start)."""
    def cnn(dataset: str) -> str:
        own = section.get("encoder_training", {}).get(dataset, {})
        words = [f"{own['projective_corners']} corner moves"] if "projective_corners" in own else []
        if "standardise" in own:
            words.append("standardised inputs" if own["standardise"] else "raw inputs")
        words += [f"{key} {value}" for key, value in sorted(own.get("train", {}).items())]  # over Table 1's settings
        return f"{dataset} ({', '.join(words) or 'as Table 1'})"

    parts = []
    for variant in section["variants"]:
        weights = section["encoders"][variant]
        terms = [("" if w == 1 else f"{w:g}× ") + cnn(d) + (f" from step {starts[d]}" if starts.get(d) else "")
                 for d, w in weights.items()]
        parts.append(f"on {variant} the Table 1 CNN{'s' if len(terms) > 1 else ''} on " + " + ".join(terms))
    return "e() " + "; ".join(parts)
