"""The 3-D spatial transformer (appendix A.3, Fig. 5) against a baseline of the same size.

ST3D: a 3-D affine transformer (trilinear sampling) warps the 60³ volume into a 30³ output whose
depth is then summed, as in the paper, into a 30×30 image for a CNN classifier. The baseline
flattens the 2× average-pooled input volume the same way, with no transformer, and gets CNN widths
that give it the same parameter count.
"""
from __future__ import annotations

import resource
from pathlib import Path

import torch
from torch import Tensor, nn

from . import load_weights, run_records, tracker, write_metrics
from ..data import volumes
from ..io import load_npz, read_json, write_json
from ..models import mnist as zoo
from ..modules import AvgPool, SpatialTransformer
from ..paper import registry
from ..settings import TrainSettings
from ..train import config_hash, train_run
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
        AvgPool(4),  # 60³ -> 15³
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
        self.pool = AvgPool(volumes.SIZE // OUT)
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


build_model = build


def build_data(mnist_path: Path, out: Path, seed: int, limits: dict, max_in_plane: float, max_out_of_plane: float,
               max_shift: float) -> None:
    """results/data/MNIST3D.npz: each volume's generating parameters (volumes are rendered on demand)."""
    from ..data import mnist as mnist_data
    from ..io import save_npz, sha256_file

    arrays = volumes.generate(mnist_data.load(mnist_path), seed, limits, max_in_plane, max_out_of_plane, max_shift)
    save_npz(out, **arrays)
    write_json(Path(out).with_suffix(".json"), {"name": "MNIST3D", "seed": seed, "limits": limits,
                                                "sha256": sha256_file(out)})


def run_job(job: dict, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Inputs: mnist (the source digits), data (MNIST3D's parameters), experiments (MLflow ids)."""
    from ..data import mnist as mnist_data

    model_name, seed = job["model"], job["seed"]
    model, w = build(model_name, job["extra"]["widths"], seed)
    data = volumes.load_sets(mnist_data.load(inputs["mnist"]), load_npz(inputs["data"]))
    describe = {"experiment": job["experiment"], "dataset": job["dataset"], "model": model_name, "params": count(model),
                "widths": w}
    tags = {"config_hash": config_hash({"settings": job["settings"], "describe": describe}), "dataset": job["dataset"],
            "model": model_name, "seed": str(seed),
            "data_sha256": read_json(Path(inputs["data"]).with_suffix(".json"))["sha256"]}
    metrics = train_run(model, data, TrainSettings.from_dict(job["settings"]), seed, out_dir,
                        tracker(job, inputs["experiments"], tags, out_dir, inputs["data"]), describe)
    metrics["peak_rss_gib"] = peak_rss_gib()
    metrics = write_metrics(out_dir, metrics)
    return metrics


def render(spec: dict, results: Path) -> list[Path]:
    """The table (no paper numbers exist) and a Fig. 5-style figure of the first seed's ST3D."""
    from ..data import mnist as mnist_data
    from ..report import figures, tables

    results = Path(results)
    e = registry.experiment("volumetric")
    grid = registry.Grid(**spec["grid"])
    caption = f"{e.title}, {spec['config_name']} config; the paper gives no number for this experiment."
    paths = tables.render_table(run_records(results, "volumetric", grid), grid.datasets, grid.models, caption,
                                results / "tables", "volumetric", paper=lambda m, d: (None, False))
    model = load_weights(build("ST3D", spec["section"]["widths"])[0],
                         registry.run_dir(results, "volumetric", "MNIST3D", "ST3D", grid.seeds[0]) / "model.pt",
                         f"volumetric/MNIST3D/ST3D/seed{grid.seeds[0]}")
    data = load_npz(registry.data_path(results, "MNIST3D"))
    sets = volumes.load_sets(mnist_data.load(registry.data_path(results, "mnist")), data)
    v, y = sets["x_test"][torch.arange(4)], torch.from_numpy(data["y_test"][:4])
    with torch.no_grad():
        flat, _ = model.transform(v)
        pred = model.classifier(flat).argmax(1)
    return list(paths.values()) + [figures.volumes_figure(v, flat, pred, y, results / "figures" / "figure5_3d.png")]
