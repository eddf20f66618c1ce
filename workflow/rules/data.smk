# Distorted MNIST data sets (appendix A.4), generated once per config.


def _limits():
    lim = config["data"].get("limits") or {}
    return " ".join(f"--limit-{k} {v}" for k, v in lim.items() if v)


rule distort:
    """One distorted data set: results/data/<name>.npz plus <name>.json (sha256, sizes)."""
    input:
        mnist=f"{RESULTS}/data/mnist.npz",
        ext=f"{RESULTS}/extension.json",
    output:
        npz=f"{RESULTS}/data/{{name}}.npz",
        info=f"{RESULTS}/data/{{name}}.json",
    wildcard_constraints:
        name="R|RTS|P|E|TC|ADD",
    params:
        seed=config["data"]["seed"],
        limits=_limits(),
    log:
        f"{RESULTS}/logs/distort_{{name}}.log",
    priority: 20  # before any training: Table 1's jobs must not wait behind the appendix experiments
    shell:
        "{STN} distort --mnist {input.mnist} --name {wildcards.name} --seed {params.seed} "
        "{params.limits} --out {output.npz} > {log} 2>&1"
