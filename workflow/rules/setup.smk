# First steps shared by every experiment: the compiled samplers, MNIST, the MLflow experiments, and
# the resolved settings each run (job.json) and each render step (specs/<experiment>.json) reads.


rule build_extension:
    """Compile the C++/CUDA samplers once (cached by source hash; never raced by parallel jobs)."""
    output:
        result("extension.json"),
    log:
        log_file("build_extension"),
    benchmark:
        benchmark_file("build_extension")
    shell:
        "stn build-ext --stamp {output} > {log} 2>&1"


rule mnist:
    """MNIST as canonical uint8 arrays, verified against ../shared/DATA.md's sha256 values."""
    output:
        data_file("mnist"),
    params:
        source=config["mnist"]["source"],
        path=f'--path {config["mnist"]["path"]}' if config["mnist"].get("path") else "",
    log:
        log_file("mnist"),
    benchmark:
        benchmark_file("mnist")
    shell:
        "stn mnist --out {output} --source {params.source} {params.path} > {log} 2>&1"


rule mlflow_store:
    """The MLflow store (its database schema), made once: several processes migrating a new SQLite
    database at the same time collide."""
    output:
        result("mlflow/store.json"),
    params:
        results=lambda wildcards, output: Path(output[0]).parents[1],  # the results directory
    log:
        log_file("mlflow_store"),
    benchmark:
        benchmark_file("mlflow_store")
    localrule: True  # bookkeeping, under a second: under Slurm it runs beside Snakemake, not through the queue
    shell:
        "stn mlflow-init --results {params.results} --out {output} > {log} 2>&1"


rule mlflow_experiment:
    """The paper table's MLflow experiment, created before any of its jobs starts (one file per table, so
    a table added later reruns nothing of the others)."""
    input:
        rules.mlflow_store.output[0],
    output:
        mlflow_file(),
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    params:
        results=lambda wildcards, output: Path(output[0]).parents[2],  # the results directory
    priority: lambda wc: upstream_priority(wc.experiment)  # its runs wait for it
    log:
        log_file("mlflow_{experiment}"),
    benchmark:
        benchmark_file("mlflow_{experiment}")
    localrule: True  # as mlflow_store: no queue wait between the store and the first training job
    shell:
        "stn mlflow-init --results {params.results} --experiments {wildcards.experiment} --out {output} > {log} 2>&1"


rule job_spec:
    """job.json in the run directory (registry.RUN_DIR): the run's resolved settings, which `stn run --job` reads."""
    output:
        run_file("job.json"),
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    params:
        job=job_spec,
    priority: lambda wc: run_priority(wc.experiment, wc.dataset, wc.model)  # as the run it feeds: no run waits behind lesser ones
    log:
        run_log(suffix="_job"),
    localrule: True
    run:
        from stn.io import write_json, write_text

        write_json(output[0], params.job)
        write_text(log[0], f"wrote {output[0]}\n")


rule experiment_spec:
    """specs/<experiment>.json: the resolved config section and runs that the experiment's render step reads."""
    output:
        spec_file(),
    wildcard_constraints:
        experiment="|".join(EXPERIMENTS),
    params:
        spec=experiment_spec,
    log:
        log_file("{experiment}_spec"),
    localrule: True
    run:
        from stn.io import write_json, write_text

        write_json(output[0], params.spec)
        write_text(log[0], f"wrote {output[0]}\n")
