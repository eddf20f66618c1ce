# The 3-D transformer (appendix A.3, Fig. 5) and its same-size baseline.

V = config["volumetric"]
V_SETTINGS = json.dumps({**V["train"], "device": config["device"]}, sort_keys=True)
V_RUNS = expand(f"{RESULTS}/runs/volumetric/MNIST3D/{{model}}/seed{{seed}}/metrics.json", model=["ST3D", "baseline"], seed=V["seeds"])


def _vlimits():
    lim = config["data"].get("limits") or {}
    return " ".join(f"--limit-{k} {v}" for k, v in lim.items() if v)


rule volumes:
    """Per-sample parameters of the extruded 3-D MNIST volumes (rendered on demand, never stored)."""
    input:
        f"{RESULTS}/data/mnist.npz",
    output:
        npz=f"{RESULTS}/data/MNIST3D.npz",
        info=f"{RESULTS}/data/MNIST3D.json",
    params:
        seed=config["data"]["seed"],
        limits=_vlimits(),
        ranges=f"--max-in-plane {V['max_in_plane']} --max-out-of-plane {V['max_out_of_plane']} --max-shift {V['max_shift']}",
    log:
        f"{RESULTS}/logs/volumes.log",
    shell:
        "{STN} volumes --mnist {input} --out {output.npz} --seed {params.seed} {params.ranges} {params.limits} > {log} 2>&1"


rule train_3d:
    input:
        mnist=f"{RESULTS}/data/mnist.npz",
        data=f"{RESULTS}/data/MNIST3D.npz",
        experiments=rules.mlflow_experiments.output[0],
        ext=rules.build_extension.output[0],
    output:
        metrics=f"{RESULTS}/runs/volumetric/MNIST3D/{{model}}/seed{{seed}}/metrics.json",
        model=f"{RESULTS}/runs/volumetric/MNIST3D/{{model}}/seed{{seed}}/model.pt",
    wildcard_constraints:
        model="ST3D|baseline",
    params:
        settings=V_SETTINGS,
        widths=V["widths"],
        out=lambda wc: f"{RESULTS}/runs/volumetric/MNIST3D/{wc.model}/seed{wc.seed}",
    threads: 1
    resources:
        gpu=1 if USE_GPU else 0,
    log:
        f"{RESULTS}/logs/volumetric/{{model}}_seed{{seed}}.log",
    shell:
        "{STN} train-3d --model {wildcards.model} --seed {wildcards.seed} --mnist {input.mnist} --data {input.data} "
        "--settings '{params.settings}' --widths {params.widths} --results {RESULTS} "
        "--experiments-file {input.experiments} --out {params.out} --threads {threads} > {log} 2>&1"


rule volumetric_report:
    """results/tables/volumetric.{csv,md,tex} and a Fig. 5-style figure."""
    input:
        V_RUNS,
        mnist=f"{RESULTS}/data/mnist.npz",
        data=f"{RESULTS}/data/MNIST3D.npz",
    output:
        expand(f"{RESULTS}/tables/volumetric.{{ext}}", ext=["csv", "md", "tex"]),
        figure=f"{RESULTS}/figures/figure5_3d.png",
    params:
        seed=V["seeds"][0],
        widths=V["widths"],
        name=config["name"],
    log:
        f"{RESULTS}/logs/volumetric_report.log",
    shell:
        "{STN} report-3d --results {RESULTS} --mnist {input.mnist} --data {input.data} --table-dir {RESULTS}/tables "
        "--figure {output.figure} --seed {params.seed} --widths {params.widths} --config-name {params.name} > {log} 2>&1"
