# Table 4 (appendix A.1, MNIST addition): its runs train in classification.smk; this renders them.


rule table4:
    """The table beside the paper's numbers and what each of the two parallel transformers does."""
    input:
        spec=spec_file("table4"),
        runs=runs("table4", "model.pt") + runs("table4"),
        data=data_file("ADD"),
        params=params_file("table4"),
    output:
        **report_outputs("table4"),
    params:
        summary=EXPERIMENTS["table4"].summary,
    priority: RENDER_PRIORITY
    log:
        log_file("table4_render"),
    benchmark:
        benchmark_file("table4_render")
    shell:
        "stn render --spec {input.spec} > {log} 2>&1"
