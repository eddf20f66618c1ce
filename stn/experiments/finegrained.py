"""Fine-grained classification: Table 3 (Sect. 4.3, appendix A.6).

Data: CUB-200-2011 from the user's local copy (stn.data.cub; images decoded per batch with the paper's
augmentation), or, in the default run, a labelled synthetic stand-in whose classes are told apart by
two small parts on a cluttered canvas (stn.data.parts), at a large size and its 2× downscale (the
paper's 448 and 224 px). Models: the CNN and 2 or 4 parallel attention transformers (stn.models.cub).
Metric: accuracy. On the stand-in, each transformer model's runs also measure how often the two parts
fall inside two different attention windows.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import load_weights, run_records, tracker, write_metrics
from ..io import load_npz, read_json, save_npz, sha256_file, write_json, write_text
from ..models import cub as zoo
from ..paper import display_name, registry
from ..report import figures, tables
from ..settings import TrainSettings
from ..train import as_input, config_hash, train_run

INSIDE = 0.75  # a part is inside a window when this fraction of its box is


def crop_size(dataset: str) -> int:
    """The transformers' output side: the input side at "224px", half of it at "448px"."""
    d = registry.DATASETS[dataset]
    return d.size // 2 if d.paper_column == "448px" else d.size


def build_data(source: str, out: dict[int, Path], seed: int, mnist_path: Path | None = None,
               counts: dict | None = None, cub: dict | None = None) -> None:
    """Both sets ("224" and "448": out[224], out[448] are their npz files) of the stand-in (`counts`
    canvases per split from MNIST) or CUB's index (`cub` = {path, validation}; unpacked beside the npz)."""
    progress = lambda s: print(s, flush=True)  # noqa: E731
    if source == "standin":
        from ..data import mnist as mnist_data
        from ..data import parts

        sets = parts.generate(mnist_data.load(mnist_path), seed, counts, progress)
        made = {224: sets["small"], 448: sets["large"]}
        info = {"source": "MNIST parts (synthetic stand-in)", "counts": counts, "large_side": parts.LARGE,
                "classes": parts.CLASSES}
    elif source == "cub":
        from ..data import cub as cub_data

        arrays, info = cub_data.build(cub["path"], cub["validation"], seed, Path(next(iter(out.values()))).parent / "cub",
                                      progress)
        made = {224: arrays, 448: arrays}
    else:
        raise ValueError(f"unknown source {source!r}; use standin or cub")
    for size, arrays in made.items():
        if size not in out:
            continue
        path = Path(out[size])
        save_npz(path, **arrays)
        write_json(path.with_suffix(".json"), {**info, "seed": seed, "size": size, "sha256": sha256_file(path),
                                               "sizes": {s: int(arrays[f"y_{s}"].shape[0]) for s in ("train", "val", "test")}})


def weights_for(net: dict, cub: dict) -> tuple[Path | None, str]:
    """The file of the backbone's starting weights for this config (None: from scratch), and the caption's words."""
    path = zoo.googlenet_weights_path(cub["weights"]) if net["backbone"] == "googlenet" else None
    if path is not None:
        return path, "ImageNet-pretrained"
    found = net["backbone"] != "googlenet" or cub["weights"] == "none"
    return None, "trained from scratch" + ("" if found else " (no ImageNet weights found)")


def build_model(dataset: str, model: str, net: dict, seed: int | None = None, weights: dict | None = None) -> torch.nn.Module:
    """A Table 3 model for a data set, with the config's `net` (backbone, width, loc_channels, loc_fc, dropout)."""
    d = registry.DATASETS[dataset]
    if seed is not None:
        torch.manual_seed(seed)
    return zoo.PartsNet(zoo.transformers(model), d.channels, d.size, crop_size(dataset), d.classes, net["backbone"],
                        net["width"], net["loc_channels"], net["loc_fc"], net["dropout"], weights)


def load_data(path: Path, dataset: str) -> dict:
    """A set's arrays for train_run: the stand-in's images, or CUB images decoded per batch."""
    data = load_npz(path)
    if registry.DATASETS[dataset].builder != "cub":
        return data
    from ..data.cub import Images

    root, size = read_json(Path(path).with_suffix(".json"))["root"], registry.DATASETS[dataset].size
    out = {f"y_{s}": data[f"y_{s}"] for s in ("train", "val", "test")}
    out.update({f"x_{s}": Images(root, data[f"path_{s}"], size, train=s == "train") for s in ("train", "val", "test")})
    return {**data, **out}


def windows(model, x) -> torch.Tensor:
    """The attention windows of `model` on images `x` (uint8 or float, (N, [C,] S, S)) as boxes (N, k, 4) in
    pixels of the input."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(x), 250):
            batch = x[s : s + 250]
            batch = as_input(batch if isinstance(batch, torch.Tensor) else torch.as_tensor(batch), device, False)
            out.append(zoo.window_boxes(model.transform(batch)[1].cpu(), model.size))
    return torch.cat(out)


def part_stats(windows_px: torch.Tensor, parts_px: torch.Tensor) -> dict[str, float]:
    """How the k windows (N, k, 4) cover the two parts (N, 2, 4), both in the same pixels: `separated` =
    percent of images with the two parts inside two different windows; `part<j>_window<i>` = percent of
    images with part j inside window i (a part is inside where INSIDE of its box is)."""
    w, p = windows_px.double()[:, None], parts_px.double()[:, :, None]
    ix = (torch.minimum(p[..., 2], w[..., 2]) - torch.maximum(p[..., 0], w[..., 0])).clamp(min=0)
    iy = (torch.minimum(p[..., 3], w[..., 3]) - torch.maximum(p[..., 1], w[..., 1])).clamp(min=0)
    inside = ix * iy / ((p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])) >= INSIDE  # (N, 2, k)
    k = inside.shape[2]
    separated = torch.zeros(inside.shape[0], dtype=torch.bool)
    for i in range(k):
        for j in range(k):
            if i != j:
                separated |= inside[:, 0, i] & inside[:, 1, j]
    out = {"separated": 100 * separated.double().mean().item()}
    out.update({f"part{j}_window{i}": 100 * inside[:, j, i].double().mean().item() for j in range(2) for i in range(k)})
    return out


def run_job(job: dict, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Inputs: data (the set's npz), experiments (MLflow ids)."""
    dataset, model_name, seed = job["dataset"], job["model"], job["seed"]
    net, cub = job["extra"]["net"], job["extra"]["cub"]
    path, _ = weights_for(net, cub)
    model = build_model(dataset, model_name, net, seed, zoo.load_googlenet_weights(path) if path else None)
    data = load_data(inputs["data"], dataset)
    info = read_json(Path(inputs["data"]).with_suffix(".json"))
    describe = {"experiment": job["experiment"], "dataset": dataset, "model": model_name,
                "params": sum(p.numel() for p in model.parameters()), **job["extra"]}
    tags = {"config_hash": config_hash({"settings": job["settings"], "describe": describe}),
            "data_sha256": info["sha256"], "dataset": dataset, "model": model_name, "seed": str(seed)}
    metrics = train_run(model, data, TrainSettings.from_dict(job["settings"]), seed, out_dir,
                        tracker(job, inputs["experiments"], tags, out_dir, inputs["data"]), describe)
    metrics.update(data_sha256=info["sha256"], accuracy=100 - metrics["test_error"])
    if model.k and "boxes_test" in data:
        boxes = torch.from_numpy(data["boxes_test"]).double() * (model.size / info["large_side"])  # to this set's px
        metrics.update(part_stats(windows(model, data["x_test"]), boxes))
    metrics = write_metrics(out_dir, metrics)
    return metrics


def load_model(results: Path, spec: dict, dataset: str, model: str, seed: int) -> torch.nn.Module:
    return load_weights(build_model(dataset, model, spec["section"]["net"]),
                        registry.run_dir(results, "table3", dataset, model, seed) / "model.pt",
                        f"table3/{dataset}/{model}/seed{seed}")


def _caption(spec: dict, grid: registry.Grid) -> str:
    e, section = registry.experiment("table3"), spec["section"]
    net = section["net"]
    if section["source"] == "cub":
        _, words = weights_for(net, section["cub"])
        data_words = f"CUB-200-2011 ({section['cub']['validation']} training images held out for validation)"
        net_words = f" Backbone: {net['backbone']}, {words}."
    else:
        from ..data import parts

        data_words = (f"a synthetic stand-in of MNIST parts, not CUB: {parts.CLASSES} classes, each an ordered pair of "
                      f"digits (left, right) on a cluttered {parts.LARGE} px canvas (the \"448px\" column) and its 2× "
                      f"downscale (\"224px\")")
        net_words = (f" Backbone: a small conv net in place of googlenet (4 × conv3×3-BN-ReLU, widths {net['width']}·1/2/4/8, "
                     f"2× max pooling after the first three; global average pooling), trained from scratch.")
    caption = tables.protocol_caption(f"{e.title} on {data_words}", spec["config_name"], spec["settings"],
                                      len(grid.seeds), None, spec["overrides"], grid.datasets, e.protocol)
    return caption + net_words + (f" Localisation net: conv1×1 to {net['loc_channels']} (paper 128), fc {net['loc_fc']} "
                                  f"(paper 128); dropout {net['dropout']} (paper 0.7). Windows of half the image's side, "
                                  f"(x, y) learnt, started tiling the image.")


def render(spec: dict, results: Path) -> list[Path]:
    """The table (the paper's CUB numbers in their own columns for the stand-in), the parts table (stand-in:
    how often each transformer's window holds each part) and Table 3 (right): test images with each
    transformer's window in its own colour."""
    results, section = Path(results), spec["section"]
    grid = registry.Grid(**spec["grid"])
    records = run_records(results, "table3", grid)
    paths = tables.render_table(records, grid.datasets, grid.models, _caption(spec, grid), results / "tables", "table3")
    parts_table = render_parts_table(records, grid, results / "tables")
    panels = []
    for ds in grid.datasets:
        data = load_data(registry.data_path(results, ds), ds)
        n = section["figure_images"]
        x = data["x_test"][:n]
        images = as_input(x if isinstance(x, torch.Tensor) else torch.as_tensor(x), torch.device("cpu"), False)
        marks = None
        if "boxes_test" in data:  # the stand-in's parts, scaled to this set's pixels
            info = read_json(registry.data_path(results, ds).with_suffix(".json"))
            marks = torch.from_numpy(data["boxes_test"][:n]) * (registry.DATASETS[ds].size / info["large_side"])
        for model_name in grid.models:
            if not zoo.transformers(model_name) or not grid.has(ds, model_name):
                continue
            model = load_model(results, spec, ds, model_name, grid.seeds[0])
            with torch.no_grad():
                pred = model(images).argmax(-1)
            panels.append((f"{display_name(model_name)}\n{ds}", images, windows(model, images), marks,
                           data["y_test"][:n], pred.numpy()))
    figure = figures.attention_windows(panels, results / "figures" / "table3_attention.png",
                                       "Table 3 (right): the attention windows of each transformer model (first seed)")
    return [*paths.values(), parts_table, figure]


def render_parts_table(records: list[dict], grid: registry.Grid, out_dir: Path) -> Path:
    """results/tables/table3_parts.md: per transformer model and set, the percent of test images whose two
    parts lie in two different windows, and which window holds each part how often (means over seeds)."""
    lines = ["**Table 3, the parts: where the attention windows settle (percent of test images)**", ""]
    rows = [r for r in records if "separated" in r]
    if not rows:
        lines.append("No run measured parts (CUB has no part boxes in this pipeline; the stand-in's transformer "
                     "models measure them).")
    else:
        table = []
        for m in grid.models:
            for d in grid.datasets:
                mine = [r for r in rows if r["model"] == m and r["dataset"] == d]
                if not mine:
                    continue
                k = zoo.transformers(m)
                mean = lambda key: sum(r[key] for r in mine) / len(mine)  # noqa: E731
                cells = [" / ".join(f"{mean(f'part{j}_window{i}'):.0f}" for i in range(k)) for j in range(2)]
                table.append([display_name(m), d, f"{mean('separated'):.1f}", *cells])
        lines += [tables.markdown_table(["Model", "Set", "parts in different windows", "left part in window 1..k",
                                         "right part in window 1..k"], table)]
        lines += [f"A part is inside a window when {INSIDE:.0%} of its box is. Windows are numbered as they start: "
                  "for 2, left and right halves; for 4, top-left, top-right, bottom-left, bottom-right quadrants."]
    path = Path(out_dir) / "table3_parts.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
