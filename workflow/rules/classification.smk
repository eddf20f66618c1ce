# Classification tables: Table 1 (distorted MNIST, Sect. 4.1 / A.4) and Table 4 (MNIST addition, A.1).
# One training rule serves both; each table has its own config section, settings and parameter table.

CLASSIFICATION = {
    "table1": {**config["table1"], "title": "Table 1: test error (%) on distorted MNIST"},
    "table4": {**config["table4"], "datasets": ["ADD"], "title": "Table 4: test error (%) on two-digit MNIST addition (RTS)"},
}


def train_overrides(experiment):
    """The config's overrides as [{"select": {dataset and/or model}, "settings": {...}}], checked."""
    c, out, seen = CLASSIFICATION[experiment], [], set()
    for entry in c.get("train_overrides", []):
        entry = dict(entry)
        select = {k: entry.pop(k) for k in ("dataset", "model") if k in entry}
        if "model" in select and select["model"] not in c["models"]:
            sys.exit(f"{experiment}.train_overrides names model {select['model']}, which is not in {experiment}.models")
        key = tuple(sorted(select.items()))
        if key in seen:
            sys.exit(f"{experiment}.train_overrides names {'/'.join(select.values())} twice; merge the two entries")
        seen.add(key)
        out.append({"select": select, "settings": entry})
    return out


def settings_json(experiment, dataset=None, model=None):
    """The training settings of one (data set, model)'s runs: table.train with every override that
    selects them applied in the config's order; with no data set, table.train alone."""
    run = {"dataset": dataset, "model": model}
    settings = dict(CLASSIFICATION[experiment]["train"])
    for o in train_overrides(experiment) if dataset else []:
        if all(run[k] == v for k, v in o["select"].items()):
            settings.update(o["settings"])
    return json.dumps({**settings, "device": config["device"]}, sort_keys=True)


def runs(experiment, name="metrics.json"):
    c = CLASSIFICATION[experiment]
    return expand(
        f"{RESULTS}/runs/{experiment}/{{dataset}}/{{model}}/seed{{seed}}/{name}",
        dataset=c["datasets"],
        model=c["models"],
        seed=c["seeds"],
    )


rule classification_params:
    """Widths per model so that all models of a data set have the same parameter count."""
    output:
        json=f"{RESULTS}/tables/{{experiment}}_params.json",
        md=f"{RESULTS}/tables/{{experiment}}_params.md",
    wildcard_constraints:
        experiment="table1|table4",
    params:
        datasets=lambda wc: CLASSIFICATION[wc.experiment]["datasets"],
        models=lambda wc: CLASSIFICATION[wc.experiment]["models"],
        cap=lambda wc: CLASSIFICATION[wc.experiment]["param_target"],
    log:
        f"{RESULTS}/logs/{{experiment}}_params.log",
    shell:
        "{STN} params --datasets {params.datasets} --models {params.models} --cap {params.cap} "
        "--out {output.json} > {log} 2>&1"


rule classification_train:
    """Train and evaluate one (data set, model, seed); resumes from its checkpoint if killed."""
    input:
        data=f"{RESULTS}/data/{{dataset}}.npz",
        params=f"{RESULTS}/tables/{{experiment}}_params.json",
        experiments=rules.mlflow_experiments.output[0],
        ext=rules.build_extension.output[0],
    output:
        metrics=f"{RESULTS}/runs/{{experiment}}/{{dataset}}/{{model}}/seed{{seed}}/metrics.json",
        model=f"{RESULTS}/runs/{{experiment}}/{{dataset}}/{{model}}/seed{{seed}}/model.pt",
        curve=f"{RESULTS}/runs/{{experiment}}/{{dataset}}/{{model}}/seed{{seed}}/curve.json",
    wildcard_constraints:
        experiment="table1|table4",
    params:
        settings=lambda wc: settings_json(wc.experiment, wc.dataset, wc.model),
        pairings=lambda wc: CLASSIFICATION[wc.experiment].get("pairings", 1),
        out=lambda wc: f"{RESULTS}/runs/{wc.experiment}/{wc.dataset}/{wc.model}/seed{wc.seed}",
    threads: 1
    priority: lambda wc: 10 if wc.experiment == "table1" else 0  # Table 1 first: its wall time is reported
    resources:
        gpu=1 if USE_GPU else 0,
    log:
        f"{RESULTS}/logs/{{experiment}}/{{dataset}}_{{model}}_seed{{seed}}.log",
    shell:
        "{STN} train --experiment {wildcards.experiment} --dataset {wildcards.dataset} --model {wildcards.model} "
        "--seed {wildcards.seed} --data {input.data} --params {input.params} --settings '{params.settings}' "
        "--results {RESULTS} --experiments-file {input.experiments} --out {params.out} --threads {threads} --pairings {params.pairings} > {log} 2>&1"


rule classification_table:
    """results/tables/<table>.{csv,md,tex}: our mean ± std beside the paper's numbers."""
    input:
        lambda wc: runs(wc.experiment),
    output:
        csv=f"{RESULTS}/tables/{{experiment}}.csv",
        md=f"{RESULTS}/tables/{{experiment}}.md",
        tex=f"{RESULTS}/tables/{{experiment}}.tex",
    wildcard_constraints:
        experiment="table1|table4",
    params:
        settings=lambda wc: settings_json(wc.experiment),
        overrides=lambda wc: json.dumps(train_overrides(wc.experiment), sort_keys=True),
        datasets=lambda wc: CLASSIFICATION[wc.experiment]["datasets"],
        models=lambda wc: CLASSIFICATION[wc.experiment]["models"],
        seeds=lambda wc: len(CLASSIFICATION[wc.experiment]["seeds"]),
        target=lambda wc: CLASSIFICATION[wc.experiment]["param_target"],
        title=lambda wc: CLASSIFICATION[wc.experiment]["title"],
        name=config["name"],
    log:
        f"{RESULTS}/logs/{{experiment}}_table.log",
    shell:
        "{STN} table --experiment {wildcards.experiment} --title '{params.title}' --results {RESULTS} "
        "--datasets {params.datasets} --models {params.models} --settings '{params.settings}' --overrides '{params.overrides}' --seeds {params.seeds} "
        "--param-target {params.target} --config-name {params.name} --out-dir {RESULTS}/tables > {log} 2>&1"


T1 = CLASSIFICATION["table1"]


rule table1_figures:
    """Data samples, learning curves, and Table 1 (right): ST right where the CNN is wrong."""
    input:
        runs("table1"),
        data=expand(f"{RESULTS}/data/{{d}}.npz", d=T1["datasets"]),
        params=f"{RESULTS}/tables/table1_params.json",
    output:
        samples=f"{RESULTS}/figures/table1_data.png",
        curves=f"{RESULTS}/figures/table1_curves.png",
        st=expand(f"{RESULTS}/figures/table1_{{d}}_st_vs_cnn.png", d=T1["figure_datasets"]),
    params:
        datasets=T1["datasets"],
        models=T1["models"],
        figure_datasets=T1["figure_datasets"],
        st_model=T1["figure_model"],
        seed=T1["seeds"][0],
    log:
        f"{RESULTS}/logs/table1_figures.log",
    shell:
        "{STN} figures-table1 --results {RESULTS} --data-dir {RESULTS}/data --params {input.params} "
        "--out-dir {RESULTS}/figures --st-model {params.st_model} --datasets {params.datasets} "
        "--models {params.models} --figure-datasets {params.figure_datasets} --seed {params.seed} > {log} 2>&1"


T4 = CLASSIFICATION["table4"]


rule table4_figure:
    """Table 4 (right): what each of the two parallel transformers does to test inputs."""
    input:
        runs("table4"),
        data=f"{RESULTS}/data/ADD.npz",
        params=f"{RESULTS}/tables/table4_params.json",
    output:
        f"{RESULTS}/figures/table4_transformers.png",
    params:
        model=T4["figure_model"],
        seed=T4["seeds"][0],
    log:
        f"{RESULTS}/logs/table4_figure.log",
    shell:
        "{STN} figure-table4 --results {RESULTS} --data {input.data} --params {input.params} --model {params.model} "
        "--seed {params.seed} --out {output} > {log} 2>&1"


rule figure1:
    """Figure 1: an ST-FCN on TC: input, predicted transform as a box, output, prediction."""
    input:
        f"{RESULTS}/runs/table1/TC/{config['figure1']['model']}/seed{T1['seeds'][0]}/model.pt",
        data=f"{RESULTS}/data/TC.npz",
        params=f"{RESULTS}/tables/table1_params.json",
    output:
        f"{RESULTS}/figures/figure1.png",
    params:
        model=config["figure1"]["model"],
        seed=T1["seeds"][0],
    log:
        f"{RESULTS}/logs/figure1.log",
    shell:
        "{STN} figure1 --results {RESULTS} --data {input.data} --params {input.params} --model {params.model} "
        "--seed {params.seed} --out {output} > {log} 2>&1"


rule classification_all:
    input:
        expand(f"{RESULTS}/tables/{{t}}.{{ext}}", t=["table1", "table4"], ext=["csv", "md", "tex"]),
        expand(f"{RESULTS}/tables/{{t}}_params.md", t=["table1", "table4"]),
        rules.table1_figures.output,
        rules.table4_figure.output,
        rules.figure1.output if "TC" in T1["datasets"] else [],
