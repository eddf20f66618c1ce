# Table 5 and Fig. 4: co-localisation (appendix A.2), one optimisation per (variant, digit class).
# e() concatenates the features of CNNs trained as Table 1's on the data sets of table5.encoders (first
# seed), each with table5.encoder_training's data reading, inputs and settings, in its own run directory;
# a data set without such an entry takes Table 1's own run of that CNN (the same job), copied there.


wildcard_constraints:
    encoder=encoder_pattern(),

# e()'s encoders, their job files and the copies from Table 1: every Table 5 run waits for them, so they start
# with the other appendix experiments' runs, ahead of every Table 5 class
ENCODER_PRIORITY = run_priority("table5") + 5


rule table5_encoder_spec:
    """job.json of the run that trains one of e()'s CNNs."""
    wildcard_constraints:
        encoder=encoder_pattern(from_table1=False),
    output:
        stn_settings.encoder_file(config, "{encoder}", "job.json"),
    params:
        job=lambda w: stn_settings.encoder_job(config, w.encoder),
    priority: ENCODER_PRIORITY
    log:
        log_file("table5/encoder_{encoder}_job"),
    localrule: True
    run:
        from stn.io import write_json, write_text

        write_json(output[0], params.job)
        write_text(log[0], f"wrote {output[0]}\n")


rule table5_encoder:
    """Train one of e()'s CNNs: the Table 1 CNN architecture on its data set."""
    wildcard_constraints:
        encoder=encoder_pattern(from_table1=False),
    input:
        job=stn_settings.encoder_file(config, "{encoder}", "job.json"),
        mnist=data_file("mnist"),
        params=params_file("table1"),
        experiments=mlflow_file("table5"),
        ext=rules.build_extension.output[0],
    output:
        model=stn_settings.encoder_file(config, "{encoder}", "model.pt"),
        params=stn_settings.encoder_file(config, "{encoder}", "params.json"),
        metrics=stn_settings.encoder_file(config, "{encoder}", "metrics.json"),
    threads: 1
    priority: ENCODER_PRIORITY
    log:
        log_file("table5/encoder_{encoder}"),
    benchmark:
        benchmark_file("table5/encoder_{encoder}")
    shell:
        "stn run --job {input.job} --threads {threads} --input mnist={input.mnist} params={input.params} "
        "experiments={input.experiments} > {log} 2>&1"


rule table5_encoder_from_table1:
    """One of e()'s CNNs that is Table 1's first-seed CNN run: its model, parameter-table entry and metrics."""
    wildcard_constraints:
        encoder=encoder_pattern(from_table1=True),
    input:
        unpack(lambda w: stn_settings.encoder_table1_files(config, w.encoder)),
        params=params_file("table1"),
    output:
        model=stn_settings.encoder_file(config, "{encoder}", "model.pt"),
        params=stn_settings.encoder_file(config, "{encoder}", "params.json"),
        metrics=stn_settings.encoder_file(config, "{encoder}", "metrics.json"),
    priority: ENCODER_PRIORITY
    log:
        log_file("table5/encoder_{encoder}"),
    localrule: True
    run:
        from stn.experiments.colocalisation import copy_table1_encoder

        copy_table1_encoder(wildcards.encoder, Path(input.model).parent, input.params, Path(output.model).parent, log[0])


rule table5_run:
    """Optimise an attention transformer on the images of one class with the triplet loss of eq. (8)."""
    input:
        unpack(lambda w: stn_settings.encoder_inputs(config, w.dataset)),
        job=run_file("job.json", "table5"),
        mnist=data_file("mnist"),
        experiments=mlflow_file("table5"),
        ext=rules.build_extension.output[0],
    output:
        metrics=run_file("metrics.json", "table5"),
        trajectory=run_file("trajectory.json", "table5"),
    params:
        encoders=lambda w, input: " ".join(f"{name}={input[name]}" for name in stn_settings.encoder_inputs(config, w.dataset)),
    priority: lambda wc: run_priority("table5", wc.dataset)  # TC classes first: the short T ones fill the end
    threads: 1
    log:
        run_log("table5"),
    benchmark:
        run_benchmark("table5")
    shell:
        "stn run --job {input.job} --threads {threads} --input mnist={input.mnist} {params.encoders} "
        "experiments={input.experiments} > {log} 2>&1"


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
