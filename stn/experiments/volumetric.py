"""The 3-D spatial transformer (appendix A.3, Fig. 5) against a baseline of the same size.

ST3D: a 3-D affine transformer (trilinear sampling) warps the 60³ volume into a 30³ output whose
depth is then summed, as in the paper, into a 30×30 image for a CNN classifier. The baseline
flattens the 2× average-pooled input volume the same way, with no transformer, and gets CNN widths
that give it the same parameter count.
"""
from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .. import tracking
from ..data import volumes
from ..io import load_npz, read_json, write_json
from ..models import mnist as zoo
from ..modules import SpatialTransformer
from ..train import TrainSettings, config_hash, train_run
from ..transforms import Affine3D

OUT = 30  # side of the transformer's output volume and of the classifier's image
MODELS = ("ST3D", "baseline")


class DepthFlatten(nn.Module):
    """(N, C, D, H, W) -> (N, C, H, W) by the sum over depth (appendix A.3). Not the mean: an 8-voxel
    slab in 30 depth samples would then reach the classifier at about 1/8 of a digit's brightness,
    and at lr 0.01 neither model learnt (800 steps: 77-79% error, against 12-15% with the sum)."""

    def forward(self, v: Tensor) -> Tensor:
        return v.sum(dim=2)


def localiser() -> tuple[nn.Module, int]:
    loc = nn.Sequential(
        nn.AvgPool3d(4),  # 60³ -> 15³
        nn.Conv3d(1, 8, 5), nn.ReLU(), nn.MaxPool3d(2),  # -> 8 × 5³
        nn.Flatten(), nn.Linear(8 * 5 ** 3, 32), nn.ReLU(),
    )
    return loc, 32


class ST3DClassifier(nn.Module):
    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        loc, features = localiser()
        self.st = SpatialTransformer(loc, features, Affine3D(), (OUT, OUT, OUT))
        self.flatten = DepthFlatten()
        self.classifier = classifier

    def transform(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """The flattened 2-D projection the classifier sees, and θ."""
        out, theta = self.st(v)
        return self.flatten(out), theta

    def forward(self, v: Tensor) -> Tensor:
        return self.classifier(self.transform(v)[0])


class Baseline(nn.Module):
    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.pool = nn.AvgPool3d(volumes.SIZE // OUT)
        self.flatten = DepthFlatten()
        self.classifier = classifier

    def forward(self, v: Tensor) -> Tensor:
        return self.classifier(self.flatten(self.pool(v)))


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, widths: int = 32, seed: int | None = None) -> tuple[nn.Module, dict]:
    """ST3D with CNN widths `widths`; the baseline's widths are matched to ST3D's total count.
    With `seed`, the initial weights come from that seed."""
    if seed is not None:
        torch.manual_seed(seed)
    st = ST3DClassifier(zoo.cnn(1, OUT, widths, widths, 10))
    if name == "ST3D":
        return st, {"c1": widths, "c2": widths}
    if name != "baseline":
        raise ValueError(f"unknown 3-D model {name!r}; choose one of {MODELS}")
    target = count(st)
    best = min(((c1, c2) for c1 in range(8, 129) for c2 in (c1, c1 + 1)),
               key=lambda c: abs(zoo.cnn_params(1, OUT, c[0], c[1], 10) - target))
    if seed is not None:
        torch.manual_seed(seed)
    model = Baseline(zoo.cnn(1, OUT, best[0], best[1], 10))
    if abs(count(model) - target) > zoo.TOLERANCE * target:
        raise RuntimeError(f"no baseline width matches ST3D's {target} parameters within 5%")
    return model, {"c1": best[0], "c2": best[1]}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def run_job(*, model_name: str, seed: int, mnist_path: Path, data_path: Path, settings: dict, results: Path,
            experiments_path: Path, out_dir: Path, widths: int) -> dict:
    from ..data import mnist as mnist_data

    model, w = build(model_name, widths, seed)
    params_data = load_npz(data_path)
    data = volumes.load_sets(mnist_data.load(mnist_path), params_data)
    exp_ids = read_json(experiments_path)
    describe = {"experiment": "volumetric", "dataset": "MNIST3D", "model": model_name, "params": count(model), "widths": w}
    tags = {"config_hash": config_hash({"settings": settings, "describe": describe}), "dataset": "MNIST3D",
            "model": model_name, "seed": str(seed), "data_sha256": read_json(Path(data_path).with_suffix(".json"))["sha256"]}

    def tracker(run_id):
        return tracking.Run(tracking.tracking_uri(results), exp_ids["volumetric"], f"MNIST3D/{model_name}/seed{seed}",
                            run_id, tags)

    metrics = train_run(model, data, TrainSettings.from_dict(settings), seed, out_dir, tracker, describe)
    metrics["peak_rss_gib"] = peak_rss_gib()
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def figure(model: ST3DClassifier, volumes_: Tensor, labels: Tensor, out: Path) -> Path:
    """Fig. 5: the input volume (max projections along depth and along x), the transformer's flattened
    output that the classifier sees, and the prediction."""
    from ..report.figures import plt, save

    model.eval()
    with torch.no_grad():
        flat, _ = model.transform(volumes_)
        pred = model.classifier(flat).argmax(1)
    n = len(volumes_)
    fig, axes = plt.subplots(n, 3, figsize=(5.4, 1.8 * n), squeeze=False)
    for i in range(n):
        v = volumes_[i, 0]
        axes[i, 0].imshow(v.amax(0).numpy(), cmap="gray")
        axes[i, 1].imshow(v.amax(2).numpy(), cmap="gray")
        axes[i, 2].imshow(flat[i, 0].numpy(), cmap="gray")
        axes[i, 2].set_xlabel(f"label {int(labels[i])}, predicted {int(pred[i])}", fontsize=7)
        for a in axes[i]:
            a.set_xticks([])
            a.set_yticks([])
    for a, t in zip(axes[0], ["input, max over depth", "input, max over x", "ST output, flattened"]):
        a.set_title(t, fontsize=8)
    fig.suptitle("3-D spatial transformer on extruded MNIST (appendix A.3)", fontsize=9)
    return save(fig, out)


def render_table(records: list[dict], caption: str, out_dir: Path) -> dict[str, Path]:
    from ..report.tables import render_table as render

    return render(records, ["MNIST3D"], list(MODELS), caption, out_dir, "volumetric", paper=lambda m, d: (None, False))


def sample_volumes(mnist: dict[str, np.ndarray], data: dict[str, np.ndarray], k: int) -> tuple[Tensor, Tensor]:
    sets = volumes.load_sets(mnist, data)
    return sets["x_test"][torch.arange(k)], torch.from_numpy(data["y_test"][:k])
