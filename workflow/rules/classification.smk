# Classification experiments (stn/experiments/classification.py: Table 1 and Table 4): the
# parameter-matched widths of each table and one training rule for all their runs.


rule classification_params:
    """Widths per model so that all models of a data set have the same parameter count."""
    output:
        json=params_file(),
        md=params_file().replace(".json", ".md"),
    wildcard_constraints:
        experiment=experiments_of("classification"),
    params:
        datasets=lambda wc: grid(wc.experiment).datasets,
        models=lambda wc: grid(wc.experiment).models,
        cap=lambda wc: config[wc.experiment]["param_target"],
        net=lambda wc: net_options(config[wc.experiment]["net"]),
    priority: lambda wc: upstream_priority(wc.experiment)  # its runs wait for it
    log:
        log_file("{experiment}_params"),
    benchmark:
        benchmark_file("{experiment}_params")
    localrule: True  # counts parameters of small nets, seconds: under Slurm it runs beside Snakemake
    shell:
        "stn params --datasets {params.datasets} --models {params.models} --cap {params.cap} {params.net} "
        "--out {output.json} > {log} 2>&1"


rule classification_run:
    """Train and evaluate one (data set, model, seed); resumes from its checkpoint if killed."""
    input:
        job=run_file("job.json"),
        data=data_file("{dataset}"),
        params=params_file(),
        experiments=mlflow_file(),
        ext=rules.build_extension.output[0],
    output:
        metrics=run_file("metrics.json"),
        model=run_file("model.pt"),
        curve=run_file("curve.json"),
    wildcard_constraints:
        experiment=experiments_of("classification"),
    threads: 1
    priority: lambda wc: run_priority(wc.experiment, wc.dataset, wc.model)
    resources:
        gpu=1 if USE_GPU else 0,
    log:
        run_log(),
    benchmark:
        run_benchmark()
    shell:
        "stn run --job {input.job} --threads {threads} "
        "--input data={input.data} params={input.params} experiments={input.experiments} > {log} 2>&1"
