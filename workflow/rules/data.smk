# Distorted MNIST data sets (appendix A.4), generated once per config.


rule distort:
    """One distorted data set: results/data/<name>.npz plus <name>.json (sha256, sizes)."""
    input:
        mnist=data_file("mnist"),
        ext=rules.build_extension.output[0],
    output:
        npz=data_file(),
        info=data_file().replace(".npz", ".json"),
    wildcard_constraints:
        name="|".join(registry.datasets("distort")),
    params:
        seed=config["data"]["seed"],
        limits=data_limits(),
        options=data_options,
    log:
        log_file("distort_{name}"),
    benchmark:
        benchmark_file("distort_{name}")
    priority: 20  # before any training: Table 1's jobs must not wait behind the appendix experiments
    shell:
        "stn distort --mnist {input.mnist} --name {wildcards.name} --seed {params.seed} "
        "{params.limits} {params.options} --out {output.npz} > {log} 2>&1"
