"""Classification experiments on distorted MNIST (Table 1): parameter tables, model building, training jobs."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import tracking
from ..data import distort
from ..io import load_npz, read_json, write_json
from ..models import mnist as zoo
from ..train import TrainSettings, config_hash, train_run

POOLED = {"RTS", "TC"}  # appendix A.4: 2× average pooling after the transformer


def input_spec(dataset: str) -> zoo.InputSpec:
    if dataset == "ADD":  # appendix A.1: two 42×42 RTS channels, 19 sums; pooled after the ST like RTS
        return zoo.InputSpec(channels=2, size=42, classes=19, pool_after_st=True)
    return zoo.InputSpec(channels=1, size=distort.image_size(dataset), classes=10, pool_after_st=dataset in POOLED)


def param_table(datasets: list[str], models: list[str], cap: int) -> dict:
    """Per data set: the matched parameter target and every model's widths and count."""
    table = {}
    for ds in datasets:
        target, built = zoo.build_experiment(models, input_spec(ds), cap)
        table[ds] = {
            "target": target,
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
    built = zoo.build(model, input_spec(dataset), entry["target"])
    if built.params != expected:
        raise RuntimeError(f"{dataset}/{model}: built {built.params} parameters but the table says {expected}; regenerate it")
    return built


def transformer_figure(model: torch.nn.Module, x: torch.Tensor, path: Path, title: str) -> Path | None:
    """Inputs and transformer outputs of up to 8 test images (an MLflow artifact per ST run)."""
    if not hasattr(model, "transform"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    model.eval()
    with torch.no_grad():
        out, _ = model.transform(x)
    k = x.shape[0]
    fig, axes = plt.subplots(2, k, figsize=(1.3 * k, 2.8))
    for i in range(k):
        axes[0, i].imshow(x[i, 0].cpu(), cmap="gray", vmin=0, vmax=1)
        axes[1, i].imshow(out[i, 0].cpu(), cmap="gray", vmin=0, vmax=1)
        for a in axes[:, i]:
            a.axis("off")
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    axes[1, 0].set_title("transformer output", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def run_job(*, experiment: str, dataset: str, model: str, seed: int, data_path: Path, params_path: Path,
            settings: dict, results: Path, experiments_path: Path, out_dir: Path, pairings: int = 1) -> dict:
    """One training job: build, train (resuming if a checkpoint exists), evaluate, write metrics.json.

    `pairings` > 1 (addition only) trains on the digits re-paired that many times over."""
    if pairings != 1 and dataset != "ADD":
        raise ValueError(f"pairings applies to the addition data set only, not {dataset}")
    table = read_json(params_path)
    built = build_model(dataset, model, table, seed)
    data = load_npz(data_path)
    if dataset == "ADD":
        pairs = distort.RepairedAddition(data["x_train"], data["y_train"], data["params_train"], pairings, seed)
        data["x_train"], data["y_train"] = pairs, pairs.labels
    data_info = read_json(Path(data_path).with_suffix(".json"))
    settings_obj = TrainSettings.from_dict(settings)
    exp_ids = read_json(experiments_path)
    uri = tracking.tracking_uri(results)
    if experiment not in exp_ids:
        raise KeyError(f"MLflow experiment {experiment!r} is not in {experiments_path}; re-run the mlflow setup rule")
    describe = {"experiment": experiment, "dataset": dataset, "model": model, "params": built.params,
                "widths": built.widths, "in_paper_range": built.in_paper_range,
                **({"pairings": pairings} if dataset == "ADD" else {})}
    tags = {"config_hash": config_hash({"settings": settings, "describe": describe}),
            "data_sha256": data_info["sha256"], "dataset": dataset, "model": model, "seed": str(seed)}

    def tracker(run_id):
        run = tracking.Run(uri, exp_ids[experiment], f"{dataset}/{model}/seed{seed}", run_id, tags)
        return run

    def artifacts(trained, directory):
        x = torch.from_numpy(data["x_test"][:8]).float().div(255)
        x = x.unsqueeze(1) if x.dim() == 3 else x
        device = next(trained.parameters()).device
        path = transformer_figure(trained, x.to(device), directory / "transforms.png", f"{model} on {dataset}")
        return [path] if path else []

    metrics = train_run(built.model, data, settings_obj, seed, out_dir, tracker, describe, artifacts)
    metrics["data_sha256"] = data_info["sha256"]
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def generate_dataset(name: str, mnist_path: Path, seed: int, limits: dict, out: Path) -> None:
    """Write results/data/<name>.npz and its sidecar <name>.json (sha256, sizes, parameters)."""
    from ..data import mnist as mnist_data
    from ..io import save_npz, sha256_file

    arrays = distort.generate(name, mnist_data.load(mnist_path), seed, limits, progress=lambda s: print(s, flush=True))
    save_npz(out, **arrays)
    info = {"name": name, "seed": seed, "limits": limits, "sha256": sha256_file(out),
            "sizes": {s: int(arrays[f"y_{s}"].shape[0]) for s in distort.SPLITS},
            "image_size": distort.image_size(name), "param_names": [str(p) for p in arrays["param_names"]]}
    write_json(out.with_suffix(".json"), info)


def parse_settings(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--settings is not valid JSON: {exc}") from None

