# Table 5 and Fig. 4: co-localisation (appendix A.2), one optimisation per (variant, digit class).
# e() is a CNN trained as Table 1's on table5.encoder_dataset (first seed), with table5.encoder's data
# reading and inputs, in its own run directory.


rule table5_encoder_spec:
    """job.json of e()'s training run."""
    output:
        aux_file("table5", "encoder", "job.json"),
    params:
        job=stn_settings.encoder_job(config),
    log:
        log_file("table5/encoder_job"),
    localrule: True
    run:
        from stn.io import write_json, write_text

        write_json(output[0], params.job)
        write_text(log[0], f"wrote {output[0]}\n")


rule table5_encoder:
    """Train e(): the Table 1 CNN architecture on the encoder's data set."""
    input:
        job=rules.table5_encoder_spec.output[0],
        mnist=data_file("mnist"),
        params=params_file("table1"),
        experiments=mlflow_file("table5"),
        ext=rules.build_extension.output[0],
    output:
        model=aux_file("table5", "encoder", "model.pt"),
        params=aux_file("table5", "encoder", "params.json"),
        metrics=aux_file("table5", "encoder", "metrics.json"),
    threads: 1
    priority: run_priority("table5") + 5  # every Table 5 run waits for it
    log:
        log_file("table5/encoder"),
    benchmark:
        benchmark_file("table5/encoder")
    shell:
        "stn run --job {input.job} --threads {threads} --input mnist={input.mnist} params={input.params} "
        "experiments={input.experiments} > {log} 2>&1"


rule table5_run:
    """Optimise an attention transformer on the images of one class with the triplet loss of eq. (8)."""
    input:
        job=run_file("job.json", "table5"),
        mnist=data_file("mnist"),
        encoder=rules.table5_encoder.output.model,
        encoder_params=rules.table5_encoder.output.params,
        experiments=mlflow_file("table5"),
        ext=rules.build_extension.output[0],
    output:
        metrics=run_file("metrics.json", "table5"),
        trajectory=run_file("trajectory.json", "table5"),
    priority: run_priority("table5")
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
    priority: RENDER_PRIORITY
    log:
        log_file("table5_render"),
    benchmark:
        benchmark_file("table5_render")
    shell:
        "stn render --spec {input.spec} > {log} 2>&1"
