"""The paper's experiments and data sets, declared once.

Everything that names an experiment, a data set or a run directory reads this module: the
Snakemake rules (wildcard constraints, `rule all`, the MLflow experiments, the report), the CLI's
choices, the config schema's enums, the table captions and the README's list of tables. It is the
library's lowest layer: plain data, no torch.

A new paper table is one `Experiment` entry here, plus its module in `stn/experiments/`, its
config section and schema part (`workflow/schemas/<name>.schema.json`) and its rules file
(`workflow/rules/<name>.smk`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# The layout of results/: every job of every experiment writes into one RUN_DIR; a generated data set
# is one DATA_FILE (+ its .json sidecar); a classification table's matched widths are one PARAMS_FILE;
# SPEC_FILE is the resolved config section an experiment's render step reads; every job's Snakemake
# benchmark is one BENCHMARK_FILE, a run's under its experiment (RUN_BENCHMARK), which the README's timing reads.
RUN_DIR = "runs/{experiment}/{dataset}/{model}/seed{seed}"
DATA_FILE = "data/{name}.npz"
PARAMS_FILE = "tables/{experiment}_params.json"
SPEC_FILE = "specs/{experiment}.json"
BENCHMARK_FILE = "benchmarks/{name}.tsv"
RUN_BENCHMARK = "{experiment}/{dataset}_{model}_seed{seed}"  # the name of a run's BENCHMARK_FILE


def run_dir(results: str | Path, experiment: str, dataset: str, model: str, seed: int | str) -> Path:
    return Path(results) / RUN_DIR.format(experiment=experiment, dataset=dataset, model=model, seed=seed)


def run_of_benchmark(results: str | Path, benchmark: str | Path) -> Path | None:
    """The run directory whose job wrote `benchmark` (a BENCHMARK_FILE named by RUN_BENCHMARK), or None for another
    job's. Data set names hold no "_"; a model's name may."""
    rel = Path(benchmark).relative_to(Path(results) / Path(BENCHMARK_FILE).parent).with_suffix("")
    pattern = re.escape(RUN_BENCHMARK)
    for key, part in (("experiment", r"[^/]+"), ("dataset", r"[^_/]+"), ("model", r"[^/]+"), ("seed", r"\d+")):
        pattern = pattern.replace(re.escape("{" + key + "}"), f"(?P<{key}>{part})")
    match = re.fullmatch(pattern, rel.as_posix())
    return run_dir(results, **match.groupdict()) if match else None


# A run whose time per step compares machines (`stn readme` prints it beside the wall time): one model, no
# transformer, the default run's costliest step (experiment, data set, model).
YARDSTICK = ("table1", "TC", "CNN")

AUX_DIR = "runs/{experiment}/{name}"  # a run that an experiment needs besides its grid


def aux_dir(results: str | Path, experiment: str, name: str) -> Path:
    return Path(results) / AUX_DIR.format(experiment=experiment, name=name)


def data_path(results: str | Path, name: str) -> Path:
    return Path(results) / DATA_FILE.format(name=name)


def params_path(results: str | Path, experiment: str) -> Path:
    return Path(results) / PARAMS_FILE.format(experiment=experiment)


@dataclass(frozen=True)
class Dataset:
    """A generated data set: results/data/<name>.npz (+ <name>.json), made by `builder`."""

    name: str
    builder: str  # "distort" (stored images, stn.data.distort.<generator>) or "volumes" (rendered on demand)
    generator: str | None  # the function in stn.data.distort that draws one batch
    size: int  # image side in pixels (volume side for MNIST3D)
    description: str
    channels: int = 1
    classes: int = 10
    pool_after_st: bool = False  # appendix A.4: 2x average pooling after the transformer (RTS and TC)
    paper_column: str | None = None  # the column of the paper's table that this data set is (or stands in for)
    stands_in_for: str | None = None  # a synthetic stand-in's original; its table never puts the paper's number beside ours
    options: tuple[tuple[str, str], ...] = ()  # (key of the config's `data` section, keyword of the generator)


DATASETS: dict[str, Dataset] = {d.name: d for d in [
    Dataset("R", "distort", "rotated", 28, "rotated: U(-90°, 90°)"),
    Dataset("RTS", "distort", "rotated_translated_scaled", 42,
            "rotated U(-45°, 45°), scaled U(0.7, 1.2), translated in a 42×42 canvas", pool_after_st=True),
    Dataset("P", "distort", "projective", 28, "projective: scale U(0.75, 1), each corner stretched by N(0, 5 px)",
            options=(("projective_corners", "corners"),)),
    Dataset("E", "distort", "elastic", 28, "elastic: scale U(0.75, 1), 16 TPS points moved by N(0, 1.5 px)"),
    Dataset("TC", "distort", "translated_cluttered", 60, "translated in a 60×60 canvas with six 6×6 clutter patches",
            pool_after_st=True),
    Dataset("ADD", "distort", "addition_pairs", 42, "two RTS digits as two channels, labelled by their sum",
            channels=2, classes=19, pool_after_st=True),
    Dataset("MNIST3D", "volumes", None, 60, "a digit extruded into a slab, rotated and translated in a 60³ volume"),
    Dataset("SEQ64", "sequences", None, 64, "1-5 MNIST digits in a row, their 30%-expanded box resized to 64×64",
            classes=11, paper_column="64px", stands_in_for="SVHN 64px"),
    Dataset("SEQ128", "sequences", None, 128, "the SEQ64 picture at about half size in the middle of a cluttered 128×128 canvas",
            classes=11, paper_column="128px", stands_in_for="SVHN 128px"),
    Dataset("SVHN64", "svhn", None, 64, "SVHN's numbers, 30%-expanded box resized to 64×64", channels=3, classes=11,
            paper_column="64px"),
    Dataset("SVHN128", "svhn", None, 128, "SVHN's numbers, inflated crops with more background resized to 128×128",
            channels=3, classes=11, paper_column="128px"),
    Dataset("PARTS48", "parts", None, 48, "the PARTS96 canvas downscaled 2×", classes=25, paper_column="224px",
            stands_in_for="CUB 224px"),
    Dataset("PARTS96", "parts", None, 96, "two small digits (an ordered pair: 25 classes) on a cluttered 96×96 canvas",
            classes=25, paper_column="448px", stands_in_for="CUB 448px"),
    Dataset("CUB224", "cub", None, 224, "CUB-200-2011, random 224 crops of the image resized to 256 on its shorter side",
            channels=3, classes=200, paper_column="224px"),
    Dataset("CUB448", "cub", None, 448, "CUB-200-2011, random 448 crops of the image resized to 512 on its shorter side",
            channels=3, classes=200, paper_column="448px"),
]}


def datasets(builder: str) -> list[str]:
    return [d.name for d in DATASETS.values() if d.builder == builder]


@dataclass(frozen=True)
class Grid:
    """The runs an experiment's config section asks for: data sets × models × seeds, less the (data set,
    model) pairs in `exclude` (Table 3 has no 4×ST at 224 px)."""

    datasets: list[str]
    models: list[str]
    seeds: list[int]
    exclude: list[tuple[str, str]] = field(default_factory=list)

    def has(self, dataset: str, model: str) -> bool:
        return dataset in self.datasets and model in self.models and [dataset, model] not in [list(c) for c in self.exclude]

    def cells(self) -> list[tuple[str, str, int]]:
        return [(d, m, s) for d in self.datasets for m in self.models for s in self.seeds if self.has(d, m)]


@dataclass(frozen=True)
class Experiment:
    """One paper table (and its figures).

    `grid` reads the experiment's config section (and the whole config) into the runs it asks for;
    `tables` and `figures` are the outputs it renders, as paths under results/ that may use
    {placeholders} filled from the config section (`figure_names`).
    """

    name: str  # config section, MLflow experiment, runs/<name>/, rules file, schema part
    module: str  # stn.experiments.<module>: build data, build a model, run one job, render
    title: str  # the table's caption starts with it
    paper: str  # the key of its numbers in stn/paper/results.yaml
    summary: str  # what the paper shows, for the report
    datasets: tuple[str, ...]  # the table's columns it may have
    models: tuple[str, ...]  # its rows it may have
    grid: Callable[[dict, dict], Grid]
    figures: Callable[[dict], list[str]] = lambda section: []
    metric: str = "test_error"
    metric_words: str = "test error"
    row_label: str = "Model"
    column_label: str = "data set"
    protocol: dict = field(default_factory=dict)  # the paper's training protocol, for "changed from" captions
    # Snakemake priority of its runs: Table 1 first (its wall time is reported on its own), then the experiments
    # whose runs take minutes, Table 5's half-minute runs last, so that short jobs fill the end on few cores
    priority: int = 0
    # its data sets and models whose runs take several times the others' (TC's 60 px canvas; the CNN, 10-70x an
    # FCN's step): each name a run has adds one to its priority, so that the longest runs start first and the
    # short ones fill the end (session 38's default run ended with a 150 s TC class of Table 5 alone for 2.5 min)
    slowest: tuple[str, ...] = ()
    settings_key: str = "train"  # the section's key of a run's settings ("train": TrainSettings, with train_overrides)
    job_keys: tuple[str, ...] = ()  # other keys of the section that a run needs (copied into its job.json)
    # (key, values, allowed) triples the schema cannot check: values that must name something the config trains
    references: Callable[[dict], list[tuple[str, list, list]]] = lambda config: []
    problems: Callable[[dict], list[str]] = lambda config: []  # other checks of the config, as messages
    paper_rows: dict = field(default_factory=dict)  # model -> the paper's row name, where it is not display_name's
    extra_tables: tuple[str, ...] = ()  # tables/<name>_<extra>.md rendered beside the main table

    @property
    def tables(self) -> list[str]:
        return ([f"tables/{self.name}.{ext}" for ext in TABLE_FORMATS]
                + [f"tables/{self.name}_{extra}.md" for extra in self.extra_tables])


TABLE_FORMATS = ("csv", "md", "tex", "html")

# Appendix A.4: the distorted-MNIST protocol (also the protocol the other MNIST tables follow).
MNIST_PROTOCOL = {
    "iterations": 150_000,
    "batch_size": 256,
    "lr": 0.01,
    "momentum": 0.0,
    "optimizer": "sgd",
    "lr_step": 50_000,
    "lr_gamma": 0.1,
    "weight_decay": 0.0,
    "seeds": 3,
    "param_target": 400_000,
    "precision": "fp32",  # the paper trained in single precision (a caption names bf16 where a config uses it)
}

# Appendix A.5: the SVHN protocol (localisation nets at 0.1x the base rate, dropout 0.5, 2 seeds).
SVHN_PROTOCOL = {
    "iterations": 400_000,
    "batch_size": 128,
    "lr": 0.01,
    "momentum": 0.0,
    "optimizer": "sgd",
    "lr_step": 80_000,
    "lr_gamma": 0.1,
    "weight_decay": 0.0005,
    "loc_lr_mult": 0.1,
    "seeds": 2,
    "precision": "fp32",
}

# Appendix A.6: the CUB protocol (lr ÷10 at 10k, 20k and 25k; localisation nets at 1e-4× the base rate).
CUB_PROTOCOL = {
    "iterations": 30_000,
    "batch_size": 256,
    "lr": 0.1,
    "optimizer": "sgd",  # momentum: the appendix does not say
    "lr_milestones": [10_000, 20_000, 25_000],
    "lr_gamma": 0.1,
    "weight_decay": 0.00001,
    "loc_lr_mult": 0.0001,
    "precision": "fp32",
}

TABLE1_MODELS = ("FCN", "CNN", "ST-FCN-Aff", "ST-FCN-Proj", "ST-FCN-TPS", "ST-CNN-Aff", "ST-CNN-Proj", "ST-CNN-TPS")
TABLE4_MODELS = ("FCN", "CNN", "ST-FCN-Aff", "ST-FCN-Proj", "ST-FCN-TPS", "2xST-FCN-Aff", "2xST-FCN-Proj", "2xST-FCN-TPS")


def _table1_figures(c: dict) -> list[str]:
    out = ["figures/table1_data.png", "figures/table1_curves.png"]
    out += [f"figures/table1_{d}_st_vs_cnn.png" for d in c["figure_datasets"]]
    return out + (["figures/figure1.png"] if "TC" in c["datasets"] else [])


def _svhn_problems(c: dict) -> list[str]:
    if c["source"] != "svhn":
        return []
    where = "the folder holding SVHN's train/ and test/ (or train.tar.gz and test.tar.gz)"
    if not c["svhn"].get("path"):
        return [f"table2.svhn.path: table2.source is svhn but no path is set; point it at {where}, "
                f"or set table2.source: standin"]
    if not Path(c["svhn"]["path"]).is_dir():
        return [f"table2.svhn.path: {c['svhn']['path']} is not a directory; point it at {where}"]
    return []


def sized(builder: str, size: int) -> str:
    """The data set of a builder that is the paper's `size` px column (Tables 2 and 3 name sets by it)."""
    for d in DATASETS.values():
        if d.builder == builder and d.paper_column == f"{size}px":
            return d.name
    raise KeyError(f"no {builder} data set is the paper's {size}px column")


def _table3_grid(c: dict, cfg: dict) -> Grid:
    """Table 3's runs: the config's sizes × models × seeds, less its `skip` entries (the paper has no 4xST at 224 px)."""
    builder = "cub" if c["source"] == "cub" else "parts"
    return Grid([sized(builder, s) for s in c["sizes"]], list(c["models"]), list(c["seeds"]),
                [[sized(builder, k["size"]), k["model"]] for k in c["skip"] if k["size"] in c["sizes"]])


def _cub_problems(config: dict) -> list[str]:
    c = config["table3"]
    out = []
    if c["source"] == "cub":
        where = "the CUB_200_2011 folder, the folder holding it, or CUB_200_2011.tgz"
        if not c["cub"].get("path"):
            out.append(f"table3.cub.path: table3.source is cub but no path is set; point it at {where}, "
                       f"or set table3.source: standin")
        elif not Path(c["cub"]["path"]).exists():
            out.append(f"table3.cub.path: {c['cub']['path']} does not exist; point it at {where}")
    elif c["net"]["backbone"] == "googlenet":
        out.append("table3.net.backbone: googlenet takes RGB images; the stand-in (table3.source: standin) is grey, "
                   "use backbone: small")
    weights = c["cub"]["weights"]
    if weights not in ("auto", "hub", "none") and not Path(weights).is_file():
        out.append(f"table3.cub.weights: {weights} is not a file; give torchvision's googlenet ImageNet weights "
                   f"(googlenet-1378be20.pth), or auto, hub or none")
    if weights == "hub" and c["net"]["backbone"] == "googlenet":
        if not googlenet_hub_path().is_file():
            out.append(f"table3.cub.weights: hub, but torch's hub cache has no {GOOGLENET_WEIGHTS} (the paper's protocol "
                       f"starts from ImageNet weights); put the file there, name it in table3.cub.weights, or use auto "
                       f"to train from scratch")
    return out


GOOGLENET_WEIGHTS = "googlenet-1378be20.pth"  # torchvision's ImageNet weights of googlenet, as its hub cache names them


def googlenet_hub_path() -> Path:
    """Where torch's hub cache keeps googlenet's ImageNet weights (a user who ran torchvision's googlenet has them)."""
    from torch.hub import get_dir  # only here: the registry is otherwise torch-free

    return Path(get_dir()) / "checkpoints" / GOOGLENET_WEIGHTS


def table5_encoder_datasets(section: dict, variants: list[str] | None = None) -> list[str]:
    """The data sets whose Table 1 CNNs make Table 5's e() (table5.encoders), for `variants` or for every entry."""
    encoders = section["encoders"]
    return sorted({d for v in (encoders if variants is None else variants) for d in encoders.get(v, {})})


def _table5_references(cfg: dict) -> list[tuple[str, list, list]]:
    section, used = cfg["table5"], table5_encoder_datasets(cfg["table5"])
    return [("table5.encoders (their Table 1 CNNs make e())", used, cfg["table1"]["datasets"]),
            ("table5.encoders (e() is made of Table 1's CNNs)", ["CNN"], cfg["table1"]["models"]),
            ("table5.variants (each needs its e() in table5.encoders)", section["variants"], list(section["encoders"])),
            ("table5.encoder_training (for a data set of table5.encoders)", list(section.get("encoder_training", {})), used),
            ("table5.optimise.encoder_start (for a data set of table5.encoders)",
             list(section["optimise"].get("encoder_start") or {}), used),
            ("table5.figure_variant", [section["figure_variant"]], section["variants"]),
            ("table5.figure_digit", [section["figure_digit"]], section["digits"])]


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment(
        name="table1", module="classification", title="Table 1: test error (%) on distorted MNIST",
        paper="table1_distorted_mnist",
        summary="Sect. 4.1: every ST model beats its plain counterpart on every distortion (R, RTS, P, E, TC).",
        datasets=("R", "RTS", "P", "E", "TC"), models=TABLE1_MODELS,
        grid=lambda c, cfg: Grid(list(c["datasets"]), list(c["models"]), list(c["seeds"])),
        figures=_table1_figures, protocol=MNIST_PROTOCOL, priority=10, slowest=("TC", "CNN"), extra_tables=("transforms",),
        references=lambda cfg: [
            ("table1.figure_datasets", cfg["table1"]["figure_datasets"], cfg["table1"]["datasets"]),
            ("table1.figure_model", [cfg["table1"]["figure_model"]], cfg["table1"]["models"]),
            ("table1.figure1_model", [cfg["table1"]["figure1_model"]] if "TC" in cfg["table1"]["datasets"] else [],
             cfg["table1"]["models"]),
            ("table1.models (the ST-vs-CNN figure compares with the CNN)", ["CNN"], cfg["table1"]["models"])],
    ),
    Experiment(
        name="table2", priority=5, module="multidigit",
        title="Table 2: sequence error (%) of multi-digit recognition", paper="table2_svhn",
        summary="Sect. 4.2: on SVHN, transformers in the CNN (Single: one on the input; Multi: one before each of "
                "the first four conv layers) lower the sequence error, most on the 128 px crops with more background "
                "(CNN 5.6, ST-CNN 3.9).",
        datasets=("SEQ64", "SEQ128", "SVHN64", "SVHN128"), models=("CNN", "ST-CNN-Single", "ST-CNN-Multi"),
        grid=lambda c, cfg: Grid([sized("svhn" if c["source"] == "svhn" else "sequences", s) for s in c["sizes"]],
                                 list(c["models"]), list(c["seeds"])),
        figures=lambda c: ["figures/table2_transformers.png"], metric_words="sequence error", protocol=SVHN_PROTOCOL,
        job_keys=("net",), paper_rows={"CNN": "CNN (ours)"}, extra_tables=("transforms",),
        references=lambda cfg: [("table2.figure_model", [cfg["table2"]["figure_model"]], cfg["table2"]["models"])],
        problems=lambda cfg: _svhn_problems(cfg["table2"]),
    ),
    Experiment(
        name="table3", priority=5, module="finegrained",
        title="Table 3: accuracy (%) of fine-grained classification", paper="table3_cub",
        summary="Sect. 4.3: on CUB-200-2011, 2 or 4 parallel attention transformers find bird parts (head, body) from "
                "class labels alone and beat the CNN (82.3%); 448 px inputs help (4xST-CNN 448px: 84.1%).",
        datasets=("PARTS48", "PARTS96", "CUB224", "CUB448"), models=("CNN", "2xST-CNN", "4xST-CNN"),
        grid=_table3_grid,
        figures=lambda c: ["figures/table3_attention.png"], metric="accuracy", metric_words="accuracy",
        protocol=CUB_PROTOCOL, job_keys=("net", "cub"), paper_rows={"CNN": "CNN (ours)"}, extra_tables=("parts",),
        problems=_cub_problems,
    ),
    Experiment(
        name="table4", priority=5, module="classification", title="Table 4: test error (%) on two-digit MNIST addition (RTS)",
        paper="table4_mnist_addition",
        summary="Appendix A.1: two parallel transformers (2xST-FCN) each take one digit and beat every single-transformer model.",
        datasets=("ADD",), models=TABLE4_MODELS,
        grid=lambda c, cfg: Grid(["ADD"], list(c["models"]), list(c["seeds"])),
        figures=lambda c: ["figures/table4_transformers.png"], protocol=MNIST_PROTOCOL, job_keys=("pairings",), slowest=("CNN",),
        extra_tables=("transforms", "focus"),
        references=lambda cfg: [("table4.figure_model", [cfg["table4"]["figure_model"]], cfg["table4"]["models"])],
    ),
    Experiment(
        name="table5", module="colocalisation", title="Table 5: percent of digits co-localised (IoU > 0.5) per class",
        paper="table5_colocalisation",
        summary="Appendix A.2: with only the triplet loss of eq. 8, an attention transformer finds the digit of one class "
                "in 100% of plain (T) and 75-94% of cluttered (TC) canvases.",
        datasets=("T", "TC"), models=tuple(str(d) for d in range(10)),
        grid=lambda c, cfg: Grid(list(c["variants"]), [str(d) for d in c["digits"]], [cfg["data"]["seed"]]),
        figures=lambda c: [f"figures/table5_{c['figure_variant']}_{c['figure_digit']}_steps.png",
                           f"figures/table5_{c['figure_variant']}_{c['figure_digit']}.gif"],
        metric="localised", metric_words="percent localised", row_label="Class", column_label="variant",
        settings_key="optimise", job_keys=("encoders",), slowest=("TC",),  # a TC class ~150 s, a T class ~20 s
        references=_table5_references,
    ),
    Experiment(
        name="volumetric", priority=5, module="volumetric",
        title="3-D transformer (appendix A.3): test error (%) on extruded, rotated and translated MNIST volumes",
        paper="volumetric",
        summary="Appendix A.3 / Fig. 5: a 3-D affine transformer flattens a rotated volume into a 2-D view for a CNN "
                "(the paper gives no number; the baseline is ours).",
        datasets=("MNIST3D",), models=("ST3D", "baseline"),
        grid=lambda c, cfg: Grid(["MNIST3D"], ["ST3D", "baseline"], list(c["seeds"])),
        figures=lambda c: ["figures/figure5_3d.png"], job_keys=("widths",),
    ),
]}


def experiment(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; the registry (stn/paper/registry.py) has {list(EXPERIMENTS)}") from None


VERSUS_PAPER = "figures/{name}_vs_paper.png"  # ours beside the paper's, per cell (stn.report.figures.versus_paper)


def paper_cells(name: str, grid: Grid) -> list[tuple[str, str]]:
    """(data set, model) of the grid's cells that have a number of the paper's to set ours beside: none on a
    synthetic stand-in (Dataset.stands_in_for), whose numbers are not comparable with the paper's."""
    from . import paper_number

    return [(d, m) for d, m in dict.fromkeys((d, m) for d, m, _ in grid.cells())
            if not (d in DATASETS and DATASETS[d].stands_in_for) and paper_number(name, m, d)[0] is not None]


def outputs(config: dict, name: str) -> list[str]:
    """Every table and figure the experiment renders for this config, relative to results/ (each PNG figure
    with its PDF twin, for LaTeX); VERSUS_PAPER where some cell has a paper number to compare with."""
    e = experiment(name)
    figures = e.figures(config[name])
    if paper_cells(name, e.grid(config[name], config)):
        figures = figures + [VERSUS_PAPER.format(name=name)]
    return e.tables + figures + [f"{f[:-4]}.pdf" for f in figures if f.endswith(".png")]
