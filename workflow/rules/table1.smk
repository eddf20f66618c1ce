# Table 1: distorted MNIST (Sect. 4.1, appendix A.4).

T1 = config["table1"]
T1_SETTINGS = json.dumps({**T1["train"], "device": config["device"]}, sort_keys=True)
T1_RUNS = expand(
    f"{RESULTS}/runs/table1/{{dataset}}/{{model}}/seed{{seed}}/metrics.json",
    dataset=T1["datasets"],
    model=T1["models"],
    seed=T1["seeds"],
)


rule table1_params:
    """Widths per model so that all models of a data set have the same parameter count."""
    output:
        json=f"{RESULTS}/tables/table1_params.json",
        md=f"{RESULTS}/tables/table1_params.md",
    params:
        datasets=T1["datasets"],
        models=T1["models"],
        cap=T1["param_target"],
    log:
        f"{RESULTS}/logs/table1_params.log",
    shell:
        "{STN} params --datasets {params.datasets} --models {params.models} --cap {params.cap} "
        "--out {output.json} > {log} 2>&1"


rule table1_train:
    """Train and evaluate one (data set, model, seed); resumes from its checkpoint if killed."""
    input:
        data=f"{RESULTS}/data/{{dataset}}.npz",
        params=rules.table1_params.output.json,
        experiments=rules.mlflow_experiments.output[0],
        ext=rules.build_extension.output[0],
    output:
        metrics=f"{RESULTS}/runs/table1/{{dataset}}/{{model}}/seed{{seed}}/metrics.json",
        model=f"{RESULTS}/runs/table1/{{dataset}}/{{model}}/seed{{seed}}/model.pt",
        curve=f"{RESULTS}/runs/table1/{{dataset}}/{{model}}/seed{{seed}}/curve.json",
    params:
        settings=T1_SETTINGS,
        out=lambda wc: f"{RESULTS}/runs/table1/{wc.dataset}/{wc.model}/seed{wc.seed}",
    threads: 1
    resources:
        gpu=1 if USE_GPU else 0,
    log:
        f"{RESULTS}/logs/table1/{{dataset}}_{{model}}_seed{{seed}}.log",
    shell:
        "{STN} train --experiment table1 --dataset {wildcards.dataset} --model {wildcards.model} "
        "--seed {wildcards.seed} --data {input.data} --params {input.params} --settings '{params.settings}' "
        "--results {RESULTS} --experiments-file {input.experiments} --out {params.out} --threads {threads} > {log} 2>&1"


rule table1_table:
    """results/tables/table1.{csv,md,tex}: our mean ± std beside the paper's numbers."""
    input:
        T1_RUNS,
    output:
        csv=f"{RESULTS}/tables/table1.csv",
        md=f"{RESULTS}/tables/table1.md",
        tex=f"{RESULTS}/tables/table1.tex",
    params:
        settings=T1_SETTINGS,
        datasets=T1["datasets"],
        models=T1["models"],
        seeds=len(T1["seeds"]),
        target=T1["param_target"],
        name=config["name"],
    log:
        f"{RESULTS}/logs/table1_table.log",
    shell:
        "{STN} table1 --results {RESULTS} --datasets {params.datasets} --models {params.models} "
        "--settings '{params.settings}' --seeds {params.seeds} --param-target {params.target} "
        "--config-name {params.name} --out-dir {RESULTS}/tables > {log} 2>&1"


rule table1_figures:
    """Data samples, learning curves, and Table 1 (right): ST right where the CNN is wrong."""
    input:
        T1_RUNS,
        data=expand(f"{RESULTS}/data/{{d}}.npz", d=T1["datasets"]),
        params=rules.table1_params.output.json,
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


rule table1_all:
    input:
        rules.table1_table.output,
        rules.table1_figures.output,
        rules.table1_params.output.md,
