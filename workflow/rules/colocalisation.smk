# Table 5 and Fig. 4: co-localisation (appendix A.2), one optimisation per (variant, digit class).

T5 = config["table5"]
T5_SETTINGS = json.dumps(T5["optimise"], sort_keys=True)
T5_ENCODER = f"{RESULTS}/runs/table1/{T5['encoder_dataset']}/CNN/seed{config['table1']['seeds'][0]}/model.pt"
T5_RUNS = expand(f"{RESULTS}/runs/table5/{{variant}}/class{{digit}}/metrics.json", variant=T5["variants"], digit=T5["digits"])


rule colocalise:
    """Optimise an attention transformer on 100 images of one class with the triplet loss of eq. (8)."""
    input:
        mnist=f"{RESULTS}/data/mnist.npz",
        encoder=T5_ENCODER,
        encoder_params=f"{RESULTS}/tables/table1_params.json",
        experiments=rules.mlflow_experiments.output[0],
        ext=rules.build_extension.output[0],
    output:
        metrics=f"{RESULTS}/runs/table5/{{variant}}/class{{digit}}/metrics.json",
        trajectory=f"{RESULTS}/runs/table5/{{variant}}/class{{digit}}/trajectory.json",
    wildcard_constraints:
        variant="T|TC",
        digit="[0-9]",
    params:
        settings=T5_SETTINGS,
        dataset=T5["encoder_dataset"],
        seed=config["data"]["seed"],
        out=lambda wc: f"{RESULTS}/runs/table5/{wc.variant}/class{wc.digit}",
    threads: 1
    log:
        f"{RESULTS}/logs/table5/{{variant}}_class{{digit}}.log",
    shell:
        "{STN} coloc --variant {wildcards.variant} --digit {wildcards.digit} --mnist {input.mnist} "
        "--encoder {input.encoder} --encoder-params {input.encoder_params} --encoder-dataset {params.dataset} "
        "--settings '{params.settings}' --seed {params.seed} --results {RESULTS} "
        "--experiments-file {input.experiments} --out {params.out} --threads {threads} > {log} 2>&1"


rule table5:
    """results/tables/table5.{csv,md,tex}, Fig. 4 and its animated GIF."""
    input:
        T5_RUNS,
    output:
        expand(f"{RESULTS}/tables/table5.{{ext}}", ext=["csv", "md", "tex"]),
        f"{RESULTS}/figures/table5_{T5['figure_variant']}_{T5['figure_digit']}_steps.png",
        f"{RESULTS}/figures/table5_{T5['figure_variant']}_{T5['figure_digit']}.gif",
    params:
        variant=T5["figure_variant"],
        digit=T5["figure_digit"],
        steps=T5["optimise"]["steps"],
        images=T5["optimise"]["images"],
        optimizer={"adam": "Adam", "sgd": "SGD"}[T5["optimise"]["optimizer"]],
        encoder=T5["encoder_dataset"],
        name=config["name"],
    log:
        f"{RESULTS}/logs/table5.log",
    shell:
        "{STN} report-coloc --results {RESULTS} --table-dir {RESULTS}/tables --figure-dir {RESULTS}/figures "
        "--figure-variant {params.variant} --figure-digit {params.digit} --steps {params.steps} --images {params.images} "
        "--optimizer {params.optimizer} --encoder {params.encoder} "
        "--config-name {params.name} > {log} 2>&1"
