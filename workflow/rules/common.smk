# Shared first steps: the compiled samplers, MNIST, and the MLflow experiments.


rule build_extension:
    """Compile the C++/CUDA samplers once (cached by source hash; never raced by parallel jobs)."""
    output:
        f"{RESULTS}/extension.json",
    log:
        f"{RESULTS}/logs/build_extension.log",
    shell:
        "{STN} build-ext --stamp {output} > {log} 2>&1"


rule mnist:
    """MNIST as canonical uint8 arrays, verified against ../shared/DATA.md's sha256 values."""
    output:
        f"{RESULTS}/data/mnist.npz",
    params:
        source=config["mnist"]["source"],
        path=f'--path {config["mnist"]["path"]}' if config["mnist"].get("path") else "",
    log:
        f"{RESULTS}/logs/mnist.log",
    shell:
        "{STN} mnist --out {output} --source {params.source} {params.path} > {log} 2>&1"


rule mlflow_experiments:
    """One MLflow experiment per paper table, created before any training job starts."""
    output:
        f"{RESULTS}/mlflow/experiments.json",
    params:
        names=["table1", "table4", "table5", "volumetric"],
    log:
        f"{RESULTS}/logs/mlflow_experiments.log",
    shell:
        "{STN} mlflow-init --results {RESULTS} --experiments {params.names} --out {output} > {log} 2>&1"
