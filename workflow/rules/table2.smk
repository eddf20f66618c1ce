# Table 2 (Sect. 4.2, appendix A.5): multi-digit recognition at 64 and 128 px, on SVHN where the user
# has it (table2.source: svhn) or on a synthetic stand-in of MNIST digit sequences.

T2 = config["table2"]


rule table2_data:
    """Both sets (64 and 128 px) of the stand-in or of SVHN, generated once."""
    input:
        mnist=data_file("mnist") if T2["source"] == "standin" else [],
    output:
        npz=[data_file(d) for d in grid("table2").datasets],
        info=[data_file(d).replace(".npz", ".json") for d in grid("table2").datasets],
    params:
        source=T2["source"],
        out=" ".join(f"{s}={data_file(d)}" for s, d in zip(T2["sizes"], grid("table2").datasets)),
        mnist=lambda wc, input: f"--mnist {input.mnist}" if input.mnist else "",
        counts=" ".join(f"--{k} {v}" for k, v in T2["sequences"].items()),
        svhn=(f"--svhn-path {T2['svhn']['path']} --validation {T2['svhn']['validation']}"
              + (" --use-extra" if T2["svhn"]["use_extra"] else "")) if T2["source"] == "svhn" else "",
        seed=config["data"]["seed"],
    log:
        log_file("table2_data"),
    benchmark:
        benchmark_file("table2_data")
    priority: 20
    shell:
        "stn sequences --source {params.source} --out {params.out} --seed {params.seed} {params.mnist} "
        "{params.counts} {params.svhn} > {log} 2>&1"


rule table2_run:
    """Train and evaluate one (set, model, seed); resumes from its checkpoint if killed."""
    input:
        job=run_file("job.json", "table2"),
        data=data_file("{dataset}"),
        experiments=mlflow_file("table2"),
        ext=rules.build_extension.output[0],
    output:
        metrics=run_file("metrics.json", "table2"),
        model=run_file("model.pt", "table2"),
    priority: run_priority("table2")
    threads: 1
    resources:
        gpu=1 if USE_GPU else 0,
    log:
        run_log("table2"),
    benchmark:
        run_benchmark("table2")
    shell:
        "stn run --job {input.job} --threads {threads} --input data={input.data} experiments={input.experiments} > {log} 2>&1"


rule table2:
    """The table and Table 2 (right): what the first transformer of the figure model does."""
    input:
        spec=spec_file("table2"),
        runs=runs("table2", "model.pt") + runs("table2"),
        data=[data_file(d) for d in grid("table2").datasets],
    output:
        **report_outputs("table2"),
    params:
        summary=EXPERIMENTS["table2"].summary,
    priority: RENDER_PRIORITY
    log:
        log_file("table2_render"),
    benchmark:
        benchmark_file("table2_render")
    shell:
        "stn render --spec {input.spec} > {log} 2>&1"
