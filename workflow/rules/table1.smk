# Table 1 (Sect. 4.1, appendix A.4): its runs train in classification.smk; this renders them.


rule table1:
    """The table beside the paper's numbers, data samples, learning curves, ST-vs-CNN figures and Figure 1."""
    input:
        spec=spec_file("table1"),
        runs=runs("table1", "model.pt") + runs("table1", "curve.json") + runs("table1"),
        data=[data_file(d) for d in grid("table1").datasets],
        params=params_file("table1"),
    output:
        **report_outputs("table1"),
    params:
        summary=EXPERIMENTS["table1"].summary,
    priority: RENDER_PRIORITY
    log:
        log_file("table1_render"),
    benchmark:
        benchmark_file("table1_render")
    shell:
        "stn render --spec {input.spec} > {log} 2>&1"
