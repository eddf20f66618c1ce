"""Multi-digit recognition: Table 2 (Sect. 4.2, appendix A.5).

Data: SVHN's numbers from the user's local copy (stn.data.svhn), or, in the default run, a labelled
synthetic stand-in of MNIST digit sequences (stn.data.sequences); 64 px and 128 px sets of each.
Models: the sequence CNN, ST-CNN Single and ST-CNN Multi (stn.models.svhn). Metric: sequence error
(a sequence counts as right only if all five positions, blanks included, are).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import load_weights, run_records, tracker, transform_stats, write_metrics
from ..io import load_npz, read_json, save_npz, sha256_file, write_json
from ..models import svhn as zoo
from ..paper import registry
from ..report import figures, tables
from ..settings import TrainSettings
from ..train import config_hash, train_run


def build_data(source: str, out: dict[int, Path], seed: int, mnist_path: Path | None = None,
               counts: dict | None = None, svhn: dict | None = None) -> None:
    """Both sets (64 and 128 px) of the stand-in (`source` "standin": `counts` sequences per split from
    MNIST) or of SVHN (`source` "svhn": `svhn` = {path, use_extra, validation}); out[size] is each npz."""
    progress = lambda s: print(s, flush=True)  # noqa: E731
    if source == "standin":
        from ..data import mnist as mnist_data
        from ..data import sequences

        sets = sequences.generate(mnist_data.load(mnist_path), seed, counts, progress)
        made = [(size, sets[size], {"source": "MNIST sequences (synthetic stand-in)", "counts": counts}) for size in sets]
    elif source == "svhn":
        from ..data import svhn as svhn_data

        made = svhn_data.build(Path(svhn["path"]), svhn["use_extra"], svhn["validation"], seed, progress)
    else:
        raise ValueError(f"unknown source {source!r}; use standin or svhn")
    for size, arrays, info in made:
        if size not in out:  # the config trains only some sizes
            continue
        path = Path(out[size])
        save_npz(path, **arrays)
        write_json(path.with_suffix(".json"), {**info, "seed": seed, "size": size, "sha256": sha256_file(path),
                                               "sizes": {s: int(arrays[f"y_{s}"].shape[0]) for s in ("train", "val", "test")}})


def build_model(dataset: str, model: str, net: dict, seed: int | None = None) -> torch.nn.Module:
    """A Table 2 model for a data set, with the config's `net` (width, fc, loc_filters, dropout, init)."""
    d = registry.DATASETS[dataset]
    if seed is not None:
        torch.manual_seed(seed)
    return zoo.build(model, d.channels, d.size, net["width"], net["fc"], net["loc_filters"], net["dropout"], net["init"])


def run_job(job: dict, inputs: dict[str, Path], out_dir: Path) -> dict:
    """Inputs: data (the set's npz), experiments (MLflow ids)."""
    dataset, model_name, seed = job["dataset"], job["model"], job["seed"]
    model = build_model(dataset, model_name, job["extra"]["net"], seed)
    data = load_npz(inputs["data"])
    info = read_json(Path(inputs["data"]).with_suffix(".json"))
    describe = {"experiment": job["experiment"], "dataset": dataset, "model": model_name,
                "params": sum(p.numel() for p in model.parameters()), **job["extra"]}
    tags = {"config_hash": config_hash({"settings": job["settings"], "describe": describe}),
            "data_sha256": info["sha256"], "dataset": dataset, "model": model_name, "seed": str(seed)}

    def artifacts(trained, directory):
        if not trained.sts:
            return []
        x = _images(data["x_test"][:8])
        with torch.no_grad():
            out, _ = trained.eval().transform(x.to(next(trained.parameters()).device))
        return [figures.transformer_outputs(x, out.cpu(), directory / "transforms.png", f"{model_name} on {dataset}")]

    metrics = train_run(model, data, TrainSettings.from_dict(job["settings"]), seed, out_dir,
                        tracker(job, inputs["experiments"], tags, out_dir, inputs["data"]), describe, artifacts)
    metrics.update(data_sha256=info["sha256"], **transform_stats(model, data["x_test"][:500]))
    metrics = write_metrics(out_dir, metrics)
    return metrics


def _images(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).float().div(255)
    return t if t.dim() == 4 else t.unsqueeze(1)


def load_model(results: Path, spec: dict, dataset: str, model: str, seed: int) -> torch.nn.Module:
    return load_weights(build_model(dataset, model, spec["section"]["net"]),
                        registry.run_dir(results, "table2", dataset, model, seed) / "model.pt",
                        f"table2/{dataset}/{model}/seed{seed}")


def render(spec: dict, results: Path) -> list[Path]:
    """The table (the paper's SVHN numbers in their own columns for a stand-in) and Table 2 (right):
    inputs with the figure model's first transformer's sampling grid, and what it outputs."""
    results, section = Path(results), spec["section"]
    e = registry.experiment("table2")
    grid = registry.Grid(**spec["grid"])
    net = section["net"]
    data_words = ("SVHN" + (" with extra" if section["svhn"]["use_extra"] else "") if section["source"] == "svhn"
                  else "a synthetic stand-in of MNIST digit sequences, not SVHN")
    title = f"{e.title} on {data_words}"
    caption = tables.protocol_caption(title, spec["config_name"], spec["settings"], len(grid.seeds), None,
                                      spec["overrides"], grid.datasets, e.protocol)
    caption += (f" Network: the paper's conv widths x{net['width']:.3g}, fc {net['fc']} (paper 3072), localisation convs "
                f"{net['loc_filters']} (paper 32), dropout {net['dropout']} (paper 0.5), {net['init']} initialisation.")
    records = run_records(results, "table2", grid)
    paths = tables.render_table(records, grid.datasets, grid.models, caption, results / "tables", "table2")
    transforms = tables.render_transform_table(
        records, grid.datasets, grid.models, f"What the first transformer of each model of Table 2 learnt, "
        f"{spec['config_name']} config: mean zoom / mean shift over the test set", results / "tables", "table2",
        "the number exactly has about 1 at 64 px (the crop is the number's region) and about 0.5 at 128 px (the "
        "region's side is half the canvas's; 52-76 px of 128 in the stand-in)")
    model_name = section["figure_model"]
    panels = []
    for ds in grid.datasets:
        model = load_model(results, spec, ds, model_name, grid.seeds[0])
        data = load_npz(registry.data_path(results, ds))
        x = _images(data["x_test"][:6])
        with torch.no_grad():
            out, theta = model.transform(x)
            pred = model(x).argmax(-1)
        st = model.sts[min(model.sts, key=int)]
        grid_pts = st.transform.grid(theta, st.out_size, st.align_corners)
        panels.append((ds, x, grid_pts, out, data["y_test"][:6], pred.numpy()))
    figure = figures.sequence_transformers(panels, results / "figures" / "table2_transformers.png",
                                           f"Table 2 (right): the first transformer of {model_name}")
    return [*paths.values(), transforms, figure]
