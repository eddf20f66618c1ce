# Table 5 and Fig. 4: co-localisation (appendix A.2), one optimisation per (variant, digit class).
# e() is the Table 1 CNN of table5.encoder_dataset, first seed.


rule table5_run:
    """Optimise an attention transformer on the images of one class with the triplet loss of eq. (8)."""
    input:
        job=run_file("job.json", "table5"),
        mnist=data_file("mnist"),
        encoder=registry.run_dir(RESULTS, "table1", config["table5"]["encoder_dataset"], "CNN",
                                 config["table1"]["seeds"][0]) / "model.pt",
        encoder_params=params_file("table1"),
        experiments=mlflow_file("table5"),
        ext=rules.build_extension.output[0],
    output:
        metrics=run_file("metrics.json", "table5"),
        trajectory=run_file("trajectory.json", "table5"),
    threads: 1
    log:
        run_log("table5"),
    benchmark:
        run_benchmark("table5")
    shell:
        "stn run --job {input.job} --threads {threads} --input mnist={input.mnist} encoder={input.encoder} "
        "encoder_params={input.encoder_params} experiments={input.experiments} > {log} 2>&1"


rule table5:
    """Table 5, Fig. 4 and its animated GIF."""
    input:
        spec=spec_file("table5"),
        runs=runs("table5") + runs("table5", "trajectory.json"),
    output:
        **report_outputs("table5"),
    params:
        summary=EXPERIMENTS["table5"].summary,
    log:
        log_file("table5_render"),
    benchmark:
        benchmark_file("table5_render")
    shell:
        "stn render --spec {input.spec} > {log} 2>&1"
