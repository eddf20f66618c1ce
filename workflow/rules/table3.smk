# Table 3 (Sect. 4.3, appendix A.6): fine-grained classification at 224 and 448 px, on CUB-200-2011 where
# the user has it (table3.source: cub) or on a synthetic stand-in of MNIST parts.

T3 = config["table3"]


rule table3_data:
    """Both sets (224 and 448) of the stand-in, or CUB's index (images are decoded while training)."""
    input:
        mnist=data_file("mnist") if T3["source"] == "standin" else [],
    output:
        npz=[data_file(d) for d in grid("table3").datasets],
        info=[data_file(d).replace(".npz", ".json") for d in grid("table3").datasets],
    params:
        source=T3["source"],
        out=" ".join(f"{s}={data_file(d)}" for s, d in zip(T3["sizes"], grid("table3").datasets)),
        mnist=lambda wc, input: f"--mnist {input.mnist}" if input.mnist else "",
        counts=" ".join(f"--{k} {v}" for k, v in T3["parts"].items()),
        cub=f"--cub-path {T3['cub']['path']} --validation {T3['cub']['validation']}" if T3["source"] == "cub" else "",
        seed=config["data"]["seed"],
    log:
        log_file("table3_data"),
    benchmark:
        benchmark_file("table3_data")
    priority: 20
    shell:
        "stn parts --source {params.source} --out {params.out} --seed {params.seed} {params.mnist} "
        "{params.counts} {params.cub} > {log} 2>&1"


rule table3_run:
    """Train and evaluate one (set, model, seed); resumes from its checkpoint if killed."""
    input:
        job=run_file("job.json", "table3"),
        data=data_file("{dataset}"),
        experiments=mlflow_file("table3"),
        ext=rules.build_extension.output[0],
    output:
        metrics=run_file("metrics.json", "table3"),
        model=run_file("model.pt", "table3"),
    priority: run_priority("table3")
    threads: 1
    resources:
        gpu=1 if USE_GPU else 0,
    log:
        run_log("table3"),
    benchmark:
        run_benchmark("table3")
    shell:
        "stn run --job {input.job} --threads {threads} --input data={input.data} experiments={input.experiments} > {log} 2>&1"


rule table3:
    """The table, where the windows settle on the parts, and Table 3 (right): each transformer's window."""
    input:
        spec=spec_file("table3"),
        runs=runs("table3", "model.pt") + runs("table3"),
        data=[data_file(d) for d in grid("table3").datasets],
    output:
        **report_outputs("table3"),
    params:
        summary=EXPERIMENTS["table3"].summary,
    priority: RENDER_PRIORITY
    log:
        log_file("table3_render"),
    benchmark:
        benchmark_file("table3_render")
    shell:
        "stn render --spec {input.spec} > {log} 2>&1"
