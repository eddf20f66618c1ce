"""Classification on distorted MNIST: Table 1 (Sect. 4.1 / A.4) and Table 4 (MNIST addition, A.1).

Data: the distorted data sets of stn.data.distort. Models: the zoo of stn.models.mnist with widths
matched per data set (the parameter table). One run trains one (data set, model, seed).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import channel_focus, load_weights, run_records, tracker, transform_stats, write_metrics
from ..data import distort
from ..io import load_npz, read_json, write_json
from ..models import mnist as zoo
from ..paper import registry
from ..report import figures, tables
from ..settings import TrainSettings
from ..train import config_hash, train_run


def input_spec(dataset: str) -> zoo.InputSpec:
    d = registry.DATASETS[dataset]
    return zoo.InputSpec(channels=d.channels, size=d.size, classes=d.classes, pool_after_st=d.pool_after_st)


def build_data(name: str, mnist_path: Path, seed: int, limits: dict, out: Path, options: dict | None = None) -> None:
    """results/data/<name>.npz and its sidecar <name>.json (sha256, sizes, options, parameters)."""
    from ..data import mnist as mnist_data
    from ..io import save_npz, sha256_file

    arrays = distort.generate(name, mnist_data.load(mnist_path), seed, limits, progress=lambda s: print(s, flush=True),
                              options=options)
    save_npz(out, **arrays)
    info = {"name": name, "seed": seed, "limits": limits, "options": options or {}, "sha256": sha256_file(out),
            "sizes": {s: int(arrays[f"y_{s}"].shape[0]) for s in distort.SPLITS},
            "image_size": registry.DATASETS[name].size, "param_names": [str(p) for p in arrays["param_names"]]}
    write_json(out.with_suffix(".json"), info)


def param_table(datasets: list[str], models: list[str], cap: int, net: dict | None = None) -> dict:
    """Per data set: the matched parameter target, every model's widths and count, and the `net`
    (initialisation, standardisation) every model of the experiment is built with."""
    table = {}
    for ds in datasets:
        target, built = zoo.build_experiment(models, input_spec(ds), cap)
        table[ds] = {
            "target": target, "net": asdict(zoo.Net.from_dict(net)),
            "models": {m: {"params": b.params, "widths": b.widths, "in_paper_range": b.in_paper_range} for m, b in built.items()},
        }
    return table


def build_model(dataset: str, model: str, table: dict, seed: int | None = None) -> zoo.Built:
    """The model with the table's widths; with `seed`, its initial weights come from that seed
    (torch's own start-up seed differs from process to process)."""
    try:
        entry = table[dataset]
        expected = entry["models"][model]["params"]
    except KeyError:
        raise KeyError(f"the parameter table has no entry for {dataset}/{model}; regenerate it") from None
    if seed is not None:
        torch.manual_seed(seed)
    built = zoo.build(model, input_spec(dataset), entry["target"], zoo.Net.from_dict(entry.get("net")))
    if built.params != expected:
        raise RuntimeError(f"{dataset}/{model}: built {built.params} parameters but the table says {expected}; regenerate it")
    return built


def load_model(results: Path, experiment: str, dataset: str, model: str, seed: int) -> torch.nn.Module:
    """A finished run's trained model, in eval mode on the CPU."""
    built = build_model(dataset, model, read_json(registry.params_path(results, experiment)))
    return load_weights(built.model, registry.run_dir(results, experiment, dataset, model, seed) / "model.pt",
                        f"{experiment}/{dataset}/{model}/seed{seed}")


def test_inputs(data: Path | dict[str, np.ndarray], count: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` test images (None: all) of a data set (its file, or its arrays already loaded) as floats in
    [0, 1] (N, C, H, W), and their labels."""
    data = data if isinstance(data, dict) else load_npz(data)
    x = torch.from_numpy(data["x_test"][:count]).float().div(255)
    return (x if x.dim() == 4 else x.unsqueeze(1)), torch.from_numpy(data["y_test"][:count])


def pixel_stats(x: np.ndarray, sample: int = 10_000) -> tuple[float, float]:
    """Mean and std of the training images' pixels in [0, 1] (over the first `sample` images)."""
    v = torch.from_numpy(np.asarray(x[:sample])).double().div(255)
    return float(v.mean()), float(v.std())


def run_job(job: dict, inputs: dict[str, Path], out_dir: Path) -> dict:
    """One training job: build, train (resuming if a checkpoint exists), evaluate, write metrics.json.
    Inputs: data (the data set), params (the parameter table), experiments (MLflow ids).

    A Table 4 job's `pairings` > 1 trains on the digits re-paired that many times over."""
    dataset, model, seed = job["dataset"], job["model"], job["seed"]
    built = build_model(dataset, model, read_json(inputs["params"]), seed)
    data = load_npz(inputs["data"])
    standardised = zoo.has_standardisation(built.model)
    if standardised:
        stats = pixel_stats(data["x_train"])
        zoo.set_standardisation(built.model, *stats)
    pairings = job["extra"].get("pairings")
    if pairings is not None:
        pairs = distort.RepairedAddition(data["x_train"], data["y_train"], data["params_train"], pairings, seed)
        data["x_train"], data["y_train"] = pairs, pairs.labels
    data_info = read_json(Path(inputs["data"]).with_suffix(".json"))
    settings = TrainSettings.from_dict(job["settings"])
    describe = {"experiment": job["experiment"], "dataset": dataset, "model": model, "params": built.params,
                "widths": built.widths, "in_paper_range": built.in_paper_range, **job["extra"],
                **({"pixel_mean": stats[0], "pixel_std": stats[1]} if standardised else {})}
    tags = {"config_hash": config_hash({"settings": job["settings"], "describe": describe}),
            "data_sha256": data_info["sha256"], "dataset": dataset, "model": model, "seed": str(seed)}

    def artifacts(trained, directory):
        x, _ = test_inputs(data, 8)  # the arrays in memory: reading the file again cost a TC job ~1.3 s
        if not hasattr(trained, "transform"):
            return []
        with torch.no_grad():
            out, _ = trained.eval().transform(x.to(next(trained.parameters()).device))
        return [figures.transformer_outputs(x, out.cpu(), directory / "transforms.png", f"{model} on {dataset}")]

    metrics = train_run(built.model, data, settings, seed, out_dir, tracker(job, inputs["experiments"], tags, out_dir, inputs["data"]),
                        describe, artifacts)
    metrics.update(transform_stats(built.model, data["x_test"]))
    metrics["data_sha256"] = data_info["sha256"]
    metrics = write_metrics(out_dir, metrics)
    return metrics


def render(spec: dict, results: Path) -> list[Path]:
    """The table (with the paper's numbers and a caption naming every change of protocol) and the figures."""
    name, section = spec["experiment"], spec["section"]
    e = registry.experiment(name)
    grid = registry.Grid(**spec["grid"])
    caption = tables.protocol_caption(e.title, spec["config_name"], spec["settings"], len(grid.seeds),
                                      section["param_target"], spec["overrides"], grid.datasets, e.protocol)
    caption += tables.net_phrase(section["net"])
    records = run_records(results, name, grid)
    paths = list(tables.render_table(records, grid.datasets, grid.models, caption, Path(results) / "tables", name).values())
    paths.append(tables.render_transform_table(
        records, grid.datasets, grid.models, f"What the affine transformers of {e.title.split(':')[0]} learnt, "
        f"{spec['config_name']} config: mean zoom / mean shift over the test set", Path(results) / "tables", name,
        "a 28 px digit exactly has 28/42 ≈ 0.67 on RTS's 42 px canvas at scale 1 and 28/60 ≈ 0.47 on TC's 60 px "
        "canvas"))
    return paths + FIGURES[name](spec, Path(results), grid)


def _table1_figures(spec: dict, results: Path, grid: registry.Grid) -> list[Path]:
    section, seed, out = spec["section"], grid.seeds[0], results / "figures"
    data = {d: registry.data_path(results, d) for d in grid.datasets}
    made = [figures.data_samples(data, out / "table1_data.png"),
            figures.learning_curves({(d, m): [read_json(registry.run_dir(results, "table1", d, m, s) / "curve.json")
                                               for s in grid.seeds] for d in grid.datasets for m in grid.models},
                                    grid.datasets, grid.models, out / "table1_curves.png")]
    st_model = section["figure_model"]
    for ds in section["figure_datasets"]:
        x, y = test_inputs(data[ds], 2000)
        made.append(figures.st_vs_cnn(load_model(results, "table1", ds, st_model, seed),
                                      load_model(results, "table1", ds, "CNN", seed), x, y,
                                      out / f"table1_{ds}_st_vs_cnn.png", f"{st_model} vs CNN on {ds}"))
    if "TC" in grid.datasets:
        model = section["figure1_model"]
        x, y = test_inputs(data["TC"], 4)
        made.append(figures.figure1(load_model(results, "table1", "TC", model, seed), x, y, out / "figure1.png",
                                    f"Figure 1: {model} on translated, cluttered MNIST (TC)"))
    return made


def _table4_figures(spec: dict, results: Path, grid: registry.Grid) -> list[Path]:
    """Table 4 (right), and beside it which channel each parallel transformer takes (tables/table4_focus.md), for
    every model with two transformers, from its first seed's weights on the whole test set."""
    name, model, seed = "table4", spec["section"]["figure_model"], grid.seeds[0]
    x, y = test_inputs(registry.data_path(results, "ADD"), None)
    parallel = [m for m in grid.models if zoo.ModelSpec.parse(m).transformers > 1]
    models = {m: load_model(results, name, "ADD", m, seed) for m in {*parallel, model}}  # each loaded once
    focus = {m: channel_focus(models[m], x) for m in parallel}
    made = [tables.render_focus_table(
        focus, f"Which channel each transformer of Table 4's 2xST models takes, {spec['config_name']} config "
        f"(seed {seed}, {len(x):,} test images)", results / "tables", name)]
    return made + [figures.parallel_transformers(models[model], x[:5], y[:5],
                                                 results / "figures" / "table4_transformers.png",
                                                 f"Table 4 (right): the two transformers of {model}", focus.get(model))]


FIGURES = {"table1": _table1_figures, "table4": _table4_figures}  # each table's figures and companion tables
