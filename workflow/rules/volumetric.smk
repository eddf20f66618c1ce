# The 3-D transformer (appendix A.3, Fig. 5) and its same-size baseline.


rule volumes:
    """Per-sample parameters of the extruded 3-D MNIST volumes (rendered on demand, never stored)."""
    input:
        data_file("mnist"),
    output:
        npz=data_file("MNIST3D"),
        info=data_file("MNIST3D").replace(".npz", ".json"),
    params:
        seed=config["data"]["seed"],
        limits=data_limits(),
        ranges=" ".join(f"--{k.replace('_', '-')} {config['volumetric'][k]}"
                        for k in ("max_in_plane", "max_out_of_plane", "max_shift")),
    priority: upstream_priority("volumetric")  # at 0 it waited behind Table 5, and the 3-D runs ran last (session 38)
    log:
        log_file("volumes"),
    benchmark:
        benchmark_file("volumes")
    shell:
        "stn volumes --mnist {input} --out {output.npz} --seed {params.seed} {params.ranges} {params.limits} > {log} 2>&1"


rule volumetric_run:
    """Train the 3-D transformer or its baseline."""
    input:
        job=run_file("job.json", "volumetric"),
        mnist=data_file("mnist"),
        data=data_file("MNIST3D"),
        experiments=mlflow_file("volumetric"),
        ext=rules.build_extension.output[0],
    output:
        metrics=run_file("metrics.json", "volumetric"),
        model=run_file("model.pt", "volumetric"),
    priority: run_priority("volumetric")
    threads: 1
    resources:
        gpu=1 if USE_GPU else 0,
    log:
        run_log("volumetric"),
    benchmark:
        run_benchmark("volumetric")
    shell:
        "stn run --job {input.job} --threads {threads} --input mnist={input.mnist} data={input.data} "
        "experiments={input.experiments} > {log} 2>&1"


rule volumetric:
    """The 3-D table and a Fig. 5-style figure."""
    input:
        spec=spec_file("volumetric"),
        runs=runs("volumetric", "model.pt") + runs("volumetric"),
        mnist=data_file("mnist"),
        data=data_file("MNIST3D"),
    output:
        **report_outputs("volumetric"),
    params:
        summary=EXPERIMENTS["volumetric"].summary,
    priority: RENDER_PRIORITY
    log:
        log_file("volumetric_render"),
    benchmark:
        benchmark_file("volumetric_render")
    shell:
        "stn render --spec {input.spec} > {log} 2>&1"
