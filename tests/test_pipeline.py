"""End to end: the smoke config through Snakemake into a temporary directory."""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stn import tracking
from stn.paper import registry

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # `pytest -m "not slow"` leaves these out of a quick run


def test_dry_run_shows_the_whole_dag(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--cores", "1", "--config", f"results={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    for rule in ["mnist", "build_extension", "mlflow_store", "mlflow_experiment", "distort", "classification_params", "job_spec", "table2_data",
                 "experiment_spec", "volumes", *registry.EXPERIMENTS]:
        assert counts.get(rule) and counts[rule] >= 1, rule
    assert counts["classification_run"] == 5 * 8 * 2 + 8  # default config: Table 1 (data x models x seeds), Table 4
    assert counts["table5_run"] == 20 and counts["volumetric_run"] == 2 and counts["table2_run"] == 3 * 2
    assert counts["table3_run"] == 5 and counts["table3_data"] == 1  # 3 models x 2 sizes, less 4xST at 224 px
    assert counts["job_spec"] == 5 * 8 * 2 + 8 + 20 + 2 + 6 + 5 and counts["experiment_spec"] == len(registry.EXPERIMENTS)
    # the config's data and net choices reach the commands: P's corner reading, Table 1's standardisation
    assert "--name P --seed 0  --option projective_corners=radial" in proc.stdout
    assert "--cap 120000 --init default --standardise" in proc.stdout and "--cap 240000 --init default --out" in proc.stdout
    # scheduling: each table renders as soon as its runs are done, ahead of every waiting run
    priorities = {}
    for block in proc.stdout.split("\n\n"):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        priority = re.search(r"^    priority: (\d+)", block, re.M)
        if rule and priority:
            priorities.setdefault(rule.group(1), set()).add(int(priority.group(1)))
    runs = set().union(*(priorities[r] for r in priorities if r.endswith("_run")))
    for table in registry.EXPERIMENTS:  # Snakemake prints no priority line for the default 0
        assert min(priorities.get(table, {0})) > max(runs), (table, priorities.get(table, {0}), max(runs))
    # the longest runs start first (registry `slowest`), and what a run waits for does not wait behind lesser runs
    by_job = {}
    for block in proc.stdout.split("\n\n"):
        rule, wildcards = re.search(r"^(?:local)?rule (\w+):", block, re.M), re.search(r"^    wildcards: (.*)$", block, re.M)
        priority = re.search(r"^    priority: (\d+)", block, re.M)
        if rule:
            by_job[(rule.group(1), wildcards.group(1) if wildcards else "")] = int(priority.group(1)) if priority else 0
    run = lambda rule, **wc: by_job[(rule, ", ".join(f"{k}={v}" for k, v in wc.items()))]
    assert run("table5_run", dataset="TC", model=0, seed=0) > run("table5_run", dataset="T", model=0, seed=0)
    assert run("classification_run", experiment="table1", dataset="TC", model="CNN", seed=1) > run(
        "classification_run", experiment="table1", dataset="TC", model="ST-CNN-Aff", seed=1) > run(
        "classification_run", experiment="table1", dataset="R", model="ST-CNN-Aff", seed=1)
    assert by_job[("volumes", "")] > run("volumetric_run", dataset="MNIST3D", model="ST3D", seed=1)
    assert min(p for (r, _), p in by_job.items() if r.startswith("table5_encoder")) > max(priorities["table5_run"])


def test_smoke_outputs_agree(smoke):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())["table1"]
    runs = {(m["dataset"], m["model"], m["seed"]): m
            for m in (json.loads(p.read_text()) for p in (smoke / "runs" / "table1").rglob("metrics.json"))}
    expected = {(d, m, s) for d in cfg["datasets"] for m in cfg["models"] for s in cfg["seeds"]}
    assert set(runs) == expected

    with open(smoke / "tables" / "table1.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["model"], r["dataset"]) for r in rows} == {(m, d) for d in cfg["datasets"] for m in cfg["models"]}
    for r in rows:
        ours = [v["test_error"] for k, v in runs.items() if k[0] == r["dataset"] and k[1] == r["model"]]
        assert float(r["ours_mean"]) == pytest.approx(sum(ours) / len(ours), abs=1e-3)
    md = (smoke / "tables" / "table1.md").read_text()
    assert "(0.8)" in md and "iterations 30 (paper 150000)" in md  # the paper's CNN/RTS number, the changes
    assert "R: iterations 20." in md  # smoke.yaml's train_overrides, applied and named in the caption
    own = {o["dataset"]: o["iterations"] for o in cfg["train_overrides"]}
    assert {k: m["iterations"] for k, m in runs.items() if k[1] == "CNN"} == {
        (d, "CNN", s): own.get(d, cfg["train"]["iterations"]) for d in cfg["datasets"] for s in cfg["seeds"]}
    assert (smoke / "tables" / "table1.tex").read_text().startswith("\\begin{table}")
    assert "Standardised inputs to the classifier and localisation nets (the paper names neither)." in md
    transforms = (smoke / "tables" / "table1_transforms.md").read_text()
    for (d, m, s), r in runs.items():  # every affine ST run records what its transformer does
        assert ("zoom" in r and "shift" in r) == m.endswith("-Aff"), (d, m)
        if m.endswith("-Aff"):
            assert r["pixel_std"] > 0 and f"| {m.replace('ST-CNN-', 'ST-CNN ').replace('ST-FCN-', 'ST-FCN ')} |" in transforms

    for fig in ["table1_data.png", "table1_curves.png"] + [f"table1_{d}_st_vs_cnn.png" for d in cfg["figure_datasets"]]:
        data = (smoke / "figures" / fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    mlruns = tracking.find_runs(tracking.default_uri(smoke), "table1")
    assert len(mlruns) == len(expected)
    by_id = {r.info.run_id: r for r in mlruns}
    for key, m in runs.items():
        r = by_id[m["run_id"]]
        assert r.info.status == "FINISHED"
        assert r.data.metrics["test_error"] == pytest.approx(m["test_error"])
        for tag in ["git_commit", "config_hash", "data_sha256", "device", "sampler_impl", "torch_version"]:
            assert r.data.tags.get(tag), tag
        assert r.data.tags["data_sha256"] == m["data_sha256"]
    client = tracking.client(tracking.default_uri(smoke))
    st_run = next(r for r in mlruns if r.data.tags["model"] == "ST-CNN-Aff" and r.data.tags["dataset"] == "RTS")
    names = {a.path for a in client.list_artifacts(st_run.info.run_id)}
    assert "transforms.png" in names and "model.pt" not in names  # the model is an MLflow model, not a bare file
    import mlflow

    mlflow.set_tracking_uri(tracking.default_uri(smoke))
    info = mlflow.models.get_model_info(f"runs:/{st_run.info.run_id}/model")
    assert "pytorch" in info.flavors and info.signature is not None and info.run_id == st_run.info.run_id
    assert [d.dataset.name for d in st_run.inputs.dataset_inputs] == ["RTS"]
    history = client.get_metric_history(st_run.info.run_id, "val_error")
    assert [h.step for h in sorted(history, key=lambda h: h.step)] == [15, 30]


def test_every_smoke_job_started_warm_and_the_server_stopped(smoke):
    """The Snakefile's onstart server (stn/warm.py) ran every `stn` job of the local run, then stopped."""
    log = (smoke / "logs" / "warm_server.log").read_text()
    assert "ready on" in log and log.rstrip().endswith("stopped")
    jobs = sorted(smoke.glob("runs/*/*/*/seed*/job.json"))
    assert len(jobs) > 20
    for job in jobs:
        assert f"stn run --job {job.relative_to(smoke.parent)}" in log or f"stn run --job {job}" in log, job


def test_a_model_logged_by_the_smoke_run_loads_through_mlflow_and_gives_its_test_error(smoke):
    import mlflow.pytorch
    import numpy as np
    import torch

    from stn.train import as_input

    m = json.loads((smoke / "runs" / "table1" / "RTS" / "ST-CNN-Aff" / "seed1" / "metrics.json").read_text())
    mlflow.set_tracking_uri(tracking.default_uri(smoke))
    model = mlflow.pytorch.load_model(f"runs:/{m['run_id']}/model").eval()
    data = np.load(smoke / "data" / "RTS.npz")
    with torch.no_grad():
        pred = model(as_input(torch.from_numpy(data["x_test"]), torch.device("cpu"), False)).argmax(-1).numpy()
    error = float((pred != data["y_test"]).mean() * 100)
    assert abs(error - m["test_error"]) <= 100 / len(pred) + 1e-6  # at most one image apart (memory layout)


def test_smoke_appendix_experiments(smoke):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    t4 = (smoke / "tables" / "table4.md").read_text()
    assert "| 2xST-FCN Aff |" in t4 and "(9.0)" in t4  # the paper's 2xST-FCN Aff number beside ours
    assert "optimizer adam (paper sgd)" in t4 and "FCN: iterations 10." in t4  # the changes and the override
    t4_runs = [json.loads(p.read_text()) for p in (smoke / "runs" / "table4").rglob("metrics.json")]
    assert {m["model"]: m["iterations"] for m in t4_runs} == {"FCN": 10, "ST-FCN-Aff": 20, "2xST-FCN-Aff": 20}
    assert {m["pairings"] for m in t4_runs} == {cfg["table4"]["pairings"]}
    t5 = list(csv.DictReader(open(smoke / "tables" / "table5.csv")))
    assert {(r["model"], r["dataset"]) for r in t5} == {(str(d), v) for d in range(10) for v in ("T", "TC")}
    done = {(r["model"], r["dataset"]) for r in t5 if r["ours_mean"]}
    assert done == {(str(d), v) for d in cfg["table5"]["digits"] for v in cfg["table5"]["variants"]}
    t5_runs = [json.loads(p.read_text()) for p in (smoke / "runs" / "table5").rglob("seed*/metrics.json")]
    for dataset in ("R", "TC"):  # e()'s CNNs: R's (raw inputs) trained apart for both variants, TC's beside it for TC
        encoder = json.loads((smoke / "runs" / "table5" / f"encoder_{dataset}" / "metrics.json").read_text())
        assert (encoder["dataset"], encoder["model"]) == (dataset, "CNN")
        assert ("pixel_mean" in encoder) == cfg["table1"]["net"]["standardise"] * (dataset == "TC")  # R's: raw inputs
        assert not (smoke / "runs" / "table5" / f"encoder_{dataset}" / "data.npz").exists()  # its data is not kept
    # TC has no encoder_training entry: its CNN is Table 1's first-seed run, copied, not trained again
    table1_tc = smoke / "runs" / "table1" / "TC" / "CNN" / f"seed{cfg['table1']['seeds'][0]}"
    encoder_tc = smoke / "runs" / "table5" / "encoder_TC"
    assert json.loads((encoder_tc / "metrics.json").read_text())["from_run"] == str(table1_tc)
    assert (encoder_tc / "model.pt").read_bytes() == (table1_tc / "model.pt").read_bytes()
    assert "from_run" not in json.loads((smoke / "runs" / "table5" / "encoder_R" / "metrics.json").read_text())
    assert ("on T the Table 1 CNN on R (raw inputs); on TC the Table 1 CNNs on 0.25× R (raw inputs) + TC (as Table 1) from step 2, "
            "each image's random patch one of 2 encoded once;") in (smoke / "tables" / "table5.md").read_text()
    assert "follows their ink, each window sampled at the image's own pixel pitch, see" in (smoke / "tables" / "table5.md").read_text()
    assert len(t5_runs) == len(done) and all(m["seconds"] > 0 for m in t5_runs)  # counted in the README's job time
    metrics = [json.loads(p.read_text()) for p in (smoke / "runs" / "volumetric").rglob("metrics.json")]
    assert {m["model"] for m in metrics} == {"ST3D", "baseline"}
    assert all(m["peak_rss_gib"] < 8 for m in metrics)
    for fig in ["figure1", "table2_transformers", "table3_attention", "table4_transformers", "figure5_3d", "table5_TC_8_steps"]:
        assert (smoke / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
        assert (smoke / "figures" / f"{fig}.pdf").read_bytes()[:5] == b"%PDF-"  # the vector twin
    t3 = (smoke / "tables" / "table3.md").read_text()
    assert "synthetic stand-in of MNIST parts, not CUB" in t3 and "| paper: CUB 224px | paper: CUB 448px |" in t3
    assert "| 4xST-CNN | — |" in t3  # no 4xST at 224 px, as the paper
    t3_runs = {(m["dataset"], m["model"]): m for m in
               (json.loads(p.read_text()) for p in (smoke / "runs" / "table3").rglob("metrics.json"))}
    assert set(t3_runs) == {("PARTS48", "CNN"), ("PARTS48", "2xST-CNN"), ("PARTS96", "CNN"), ("PARTS96", "2xST-CNN"),
                            ("PARTS96", "4xST-CNN")}
    assert all(("separated" in m) == (model != "CNN") for (_, model), m in t3_runs.items())
    assert "| 4xST-CNN | PARTS96 |" in (smoke / "tables" / "table3_parts.md").read_text()
    assert (smoke / "figures" / "table5_TC_8.gif").read_bytes()[:3] == b"GIF"
    t2 = (smoke / "tables" / "table2.md").read_text()
    assert "synthetic stand-in of MNIST digit sequences, not SVHN" in t2 and "| paper: SVHN 64px | paper: SVHN 128px |" in t2
    t2_runs = [json.loads(p.read_text()) for p in (smoke / "runs" / "table2").rglob("metrics.json")]
    assert {(m["dataset"], m["model"]) for m in t2_runs} == {
        (f"SEQ{s}", m) for s in cfg["table2"]["sizes"] for m in cfg["table2"]["models"]}
    assert all(0 < m["zoom"] < 2 and m["shift"] >= 0 for m in t2_runs if m["model"] != "CNN")
    t2_transforms = (smoke / "tables" / "table2_transforms.md").read_text()  # those zooms, per model and size
    multi = next(m for m in t2_runs if m["model"] == "ST-CNN-Multi" and m["dataset"] == "SEQ128")
    assert f"{multi['zoom']:.2f} / {multi['shift']:.2f}" in t2_transforms.split("| ST-CNN Multi |")[1].splitlines()[0]
    assert "about 0.5 at 128 px" in t2_transforms and "| CNN |" not in t2_transforms
    assert json.loads((smoke / "data" / "SEQ128.json").read_text())["sizes"] == cfg["table2"]["sequences"]
    for experiment, n in [("table2", 6), ("table4", 3), ("table5", 2 + 1), ("volumetric", 2)]:  # Table 5: + e()'s CNN on R (TC's is Table 1's run)
        runs = tracking.find_runs(tracking.default_uri(smoke), experiment)
        assert len(runs) == n and all(r.info.status == "FINISHED" for r in runs)
        (parent,) = tracking.find_runs(tracking.default_uri(smoke), experiment, parents=True)  # they nest under it
        assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    from stn.report.publish import CELL_TAG, NOTE_TAG

    uri = tracking.default_uri(smoke)
    c = tracking.client(uri)
    for experiment in registry.EXPERIMENTS:  # each table and its figures beside its runs in MLflow (stn.report.publish)
        (parent,) = tracking.find_runs(uri, experiment, parents=True)
        logged = {a.path for folder in ("tables", "figures") for a in c.list_artifacts(parent.info.run_id, folder)}
        assert f"tables/{experiment}.md" in logged and f"tables/{experiment}.html" in logged, (experiment, logged)
        assert any(p.startswith("figures/") and p.endswith(".png") for p in logged), (experiment, logged)
        table = (smoke / "tables" / f"{experiment}.md").read_text()
        assert parent.data.tags[NOTE_TAG].startswith(table.split("\n")[0])
        assert c.get_experiment(parent.info.experiment_id).tags[NOTE_TAG] == parent.data.tags[NOTE_TAG]
        ids = {json.loads(p.read_text())["run_id"] for p in (smoke / "runs" / experiment).glob("*/*/*/metrics.json")}
        read = {r.info.run_id for r in tracking.find_runs(uri, experiment) if r.data.tags.get(CELL_TAG) == "yes"}
        assert read == ids and ids, experiment  # e()'s CNNs (runs/table5/encoder_*) are not cells: "no"
    paper = {(r["dataset"], r["model"]): r["paper"] for r in csv.DictReader((smoke / "tables" / "table1.csv").open())}
    for run in tracking.find_runs(uri, "table1"):  # the paper's number beside ours, per run
        dataset, model, _ = run.info.run_name.split("/")
        assert run.data.metrics["paper_test_error"] == float(paper[dataset, model]) > 0, run.info.run_name
    assert not any("paper_test_error" in r.data.metrics for r in tracking.find_runs(uri, "table2"))


def test_coloc_probe_reads_the_pipeline_outputs(smoke, tmp_path):
    """scripts/coloc_probe.py (docs/CHOICES.md's gradient table) runs on what the pipeline wrote."""
    args = ["--mnist", smoke / "data" / "mnist.npz", "--encoder", smoke / "runs" / "table1" / "R" / "CNN" / "seed1" / "model.pt",
            "--params", smoke / "tables" / "table1_params.json", "--digits", "3", "--images", "8", "--draws", "3",
            "--fractions", "0", "0.5", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "scripts/coloc_probe.py", *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [(r[0], float(r[1])) for r in rows] == [("3", 0.0), ("3", 0.5), ("3", 1.0)]
    dist = [float(r[2]) for r in rows]
    assert dist[0] > 5 and dist[1] == pytest.approx(dist[0] / 2, rel=0.05) and dist[2] < 0.01  # crops placed as asked
    assert all(-1 <= float(r[3]) <= 1 and 0 <= float(r[4]) <= 100 for r in rows)
    whole = subprocess.run([sys.executable, "scripts/coloc_probe.py", *map(str, args[:-4]), "--fractions", "1", "--window", "1"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=True).stdout
    assert float(whole.splitlines()[1].split()[2]) < 0.01  # a whole-canvas window still moves all the way to its digit
    missing = subprocess.run([sys.executable, "scripts/coloc_probe.py", "--mnist", str(tmp_path / "none.npz")], cwd=ROOT,
                             env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "none.npz is missing" in missing.stderr


def test_coloc_seeds_reproduces_the_pipelines_run_and_varies_the_optimisers_draws(smoke):
    """scripts/coloc_seeds.py (docs/CHOICES.md's seeds table): image seed = optimiser seed is the pipeline's run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "scripts/coloc_seeds.py", "--results", str(smoke), "--variant", "TC",
                          "--digit", "8", "--image-seeds", "0", "--optimiser-seeds", "0", "1"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout.splitlines()
    assert out[0] == "variant digit image_seed optimiser_seed localised_% loss_last_6" and len(out) == 3
    run = json.loads((smoke / "runs" / "table5" / "TC" / "8" / "seed0" / "metrics.json").read_text())
    frames = json.loads((smoke / "runs" / "table5" / "TC" / "8" / "seed0" / "trajectory.json").read_text())["trajectory"]
    # the whole run's mean loss: its frames' (every 2 steps) means, weighted by the steps each covers
    assert out[1] == f"TC 8 0 0 {run['localised']:.0f} {sum(f['loss'] for f in frames[1:]) / 3:.3f}"
    assert out[2].startswith("TC 8 0 1 ") and 0 <= float(out[2].split()[-2]) <= 100 and float(out[2].split()[-1]) >= 0
    # a longer run read at the spec's own last step (6) is the pipeline's run again: every step up to it is the same
    longer = subprocess.run([sys.executable, "scripts/coloc_seeds.py", "--results", str(smoke), "--digit", "8",
                             "--optimiser-seeds", "0", "--steps", "8", "--at", "2", "6"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300, check=True).stdout.splitlines()
    assert longer[0] == "variant digit image_seed optimiser_seed at_2 at_6 localised_% loss_last_8"
    assert longer[1].split()[5] == f"{run['localised']:.0f}" and len(longer[1].split()) == 8
    wrong = subprocess.run([sys.executable, "scripts/coloc_seeds.py", "--results", str(smoke), "--at", "3"], cwd=ROOT,
                           env=env, capture_output=True, text=True)
    assert wrong.returncode != 0 and "--at [3]: the runs record every 2 steps up to 6" in wrong.stderr
    odd = subprocess.run([sys.executable, "scripts/coloc_seeds.py", "--results", str(smoke), "--loss-steps", "3"], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    assert odd.returncode != 0 and "--loss-steps 3: must be a positive multiple of the runs' record_every (2)" in odd.stderr
    missing = subprocess.run([sys.executable, "scripts/coloc_seeds.py", "--results", str(smoke / "none")], cwd=ROOT,
                             env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "table5.json is missing: run the pipeline first" in missing.stderr


def test_coloc_minima_scores_every_finished_table5_run(smoke):
    """scripts/coloc_minima.py (docs/CHOICES.md's eq. 8 at the true and the learnt boxes) reads the smoke run's Table 5."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "scripts/coloc_minima.py", "--results", str(smoke), "--draws", "2"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300, check=True).stdout
    spec = json.loads((smoke / "specs" / "table5.json").read_text())["grid"]
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [(v, d) for v in spec["datasets"] for d in spec["models"]]
    for r in rows:
        true, learnt, centre, spread_true = map(float, r[3:7])
        assert 0 <= true and 0 <= learnt and 0 <= centre and spread_true > 0


def _embedded(html: str, name: str):
    """A JSON value the Snakemake report embeds as `var <name> = ...;` in a script of that id."""
    m = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', html, re.S)
    assert m, f"no {name} in the report"
    return json.loads(m.group(1))


def test_report_holds_every_table_and_figure_by_paper_table(smoke, tmp_path):
    report = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", "config/smoke.yaml", "--config",
                           f"results={smoke}", "--report", str(report)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = report.read_text()
    results, categories = _embedded(html, "results"), _embedded(html, "categories")
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    for name, e in registry.EXPERIMENTS.items():
        expected = {str(smoke / p) for p in registry.outputs(cfg, name)}
        assert set(results) >= expected, sorted(expected - set(results))
        listed = {p for files in categories[e.title].values() for p in files}
        assert listed >= expected  # grouped under the paper table's title
        assert set(categories[e.title]) == {"tables", "figures"}
        for path in expected:
            assert results[path]["data_uri"].startswith("data:") and e.summary[:40] in results[path]["caption"]
    assert len(results) == sum(len(registry.outputs(cfg, n)) for n in registry.EXPERIMENTS)
    assert 'What the paper shows' in results[str(smoke / "tables" / "table1.html")]["caption"]


def test_result_files_are_readable_by_everyone_under_umask_022(smoke):
    files = [p for d in ("tables", "figures", "data", "runs", "specs") for p in (smoke / d).rglob("*") if p.is_file()]
    assert len(files) > 50
    modes = {p: p.stat().st_mode & 0o777 for p in files}
    assert {oct(m) for m in modes.values()} == {oct(0o644)}, [str(p) for p, m in modes.items() if m != 0o644][:5]


def test_lint_reports_nothing_but_the_missing_conda_environments():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--configfile", "config/smoke.yaml"], cwd=ROOT,
                          capture_output=True, text=True)
    lints = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip().startswith("* ")]
    assert lints and all(line.startswith("* Specify a conda environment or container") for line in lints), lints


def test_a_changed_setting_reruns_exactly_the_runs_it_selects(smoke, tmp_path):
    """job.json carries each run's resolved settings as a tracked parameter: one override changed,
    only the runs it selects (and what reads them) are scheduled again."""
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg["table1"]["train_overrides"] = [{"dataset": "RTS", "model": "CNN", "iterations": 7}]
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(path), "--config",
                           f"results={smoke}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    # R's override is gone (its 4 runs change) and RTS/CNN gains one; R/CNN is e() of table5, so its 2 runs follow
    assert counts["classification_run"] == 5 and counts["job_spec"] == 5 and counts["table5_run"] == 2
    assert "table4" not in counts and "volumetric_run" not in counts
