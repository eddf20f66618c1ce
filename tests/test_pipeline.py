"""End to end: the smoke config through Snakemake into a temporary directory."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stn import tracking

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    results = tmp_path_factory.mktemp("smoke") / "results"
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "config/smoke.yaml",
         "--config", f"results={results}"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results


def test_dry_run_shows_the_whole_dag(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", f"results={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for rule in ["mnist", "build_extension", "mlflow_experiments", "distort", "classification_params",
                 "classification_train", "classification_table", "table1_figures", "table4_figure", "figure1",
                 "colocalise", "table5", "volumes", "train_3d", "volumetric_report"]:
        assert rule in proc.stdout
    counts = {line.split()[0]: int(line.split()[1]) for line in proc.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["classification_train"] == 5 * 8 * 2 + 8  # default config: Table 1 (data x models x seeds), Table 4
    assert counts["colocalise"] == 20 and counts["train_3d"] == 2


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
    assert {"model.pt", "transforms.png"} <= names
    history = client.get_metric_history(st_run.info.run_id, "val_error")
    assert [h.step for h in sorted(history, key=lambda h: h.step)] == [15, 30]


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
    t5_runs = [json.loads(p.read_text()) for p in (smoke / "runs" / "table5").rglob("metrics.json")]
    assert len(t5_runs) == len(done) and all(m["seconds"] > 0 for m in t5_runs)  # counted in the README's job time
    metrics = [json.loads(p.read_text()) for p in (smoke / "runs" / "volumetric").rglob("metrics.json")]
    assert {m["model"] for m in metrics} == {"ST3D", "baseline"}
    assert all(m["peak_rss_gib"] < 8 for m in metrics)
    for fig in ["figure1.png", "table4_transformers.png", "figure5_3d.png", "table5_TC_8_steps.png"]:
        assert (smoke / "figures" / fig).read_bytes()[:4] == b"\x89PNG"
    assert (smoke / "figures" / "table5_TC_8.gif").read_bytes()[:3] == b"GIF"
    for experiment, n in [("table4", 3), ("table5", 2), ("volumetric", 2)]:
        runs = tracking.find_runs(tracking.default_uri(smoke), experiment)
        assert len(runs) == n and all(r.info.status == "FINISHED" for r in runs)


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
