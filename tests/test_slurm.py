"""The pipeline under a real Slurm (issue #19): scripts/slurm_local.sh starts a one-node Slurm on
localhost, runs a slice of the smoke config (every rule that goes to Slurm) through profiles/slurm and
compares each table cell with the local smoke run's.

It installs packages and starts daemons as root, and takes ~6 minutes on two cores, so it runs only
when asked: STN_SLURM_TEST=1 (and root, and apt-get or Slurm already installed)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import compare_results  # noqa: E402

PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"


def test_slurm_profile_covers_every_job_rule_and_fits_one_small_node():
    from stn.paper import registry

    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm" and profile["rerun-incomplete"] is True and profile["retries"] >= 1
    rules = set(profile["set-resources"])
    runs = {f"{name}_run" for name in registry.EXPERIMENTS if name not in ("table1", "table4")} | {"classification_run"}
    assert runs <= rules, runs - rules
    assert set(registry.EXPERIMENTS) <= rules  # every render rule
    for rule, res in profile["set-resources"].items():  # the local check's node: 2 CPUs, ~20 GB
        assert res.get("cpus_per_task", 1) <= 2 and res.get("mem_mb", 0) <= 16000, rule
        assert res["runtime"] >= 15, rule


def _local_and_slurm_rules() -> tuple[set[str], set[str]]:
    """The rules of workflow/rules/*.smk that run beside Snakemake (`localrule: True`), and the others."""
    import re

    local, remote = set(), set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for m in re.finditer(r"^rule (\w+):\n((?:    .*\n|\n)*)", smk.read_text(), re.M):
            (local if re.search(r"^    localrule: True", m.group(2), re.M) else remote).add(m.group(1))
    return local, remote


def test_the_bookkeeping_rules_run_beside_snakemake_and_every_other_rule_goes_to_slurm():
    """Under Slurm a local rule skips the queue: the MLflow store and experiments and the widths come before
    every training job, so as Slurm jobs they put two or three queue waits in front of all training."""
    local, remote = _local_and_slurm_rules()
    assert local == {"job_spec", "experiment_spec", "mlflow_store", "mlflow_experiment", "classification_params",
                     "table5_encoder_spec", "table5_encoder_from_table1"}, local
    profile = yaml.safe_load(PROFILE.read_text())
    assert not local & set(profile["set-resources"])  # resources of a rule Slurm never sees would mislead
    assert {"classification_run", "table1", "distort", "build_extension"} <= remote


def test_every_profile_runs_the_bookkeeping_run_blocks_in_threads():
    """Snakemake spawns a whole new Snakemake (Snakefile parsed, torch imported: 6-8 s) for each job of a rule
    with a `run:` block unless told to use threads; the default run has ~170 such jobs."""
    import re

    run_rules = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        run_rules |= {m.group(1) for m in re.finditer(r"^rule (\w+):\n(?:    .*\n|\n)*?    run:", smk.read_text(), re.M)}
    assert {"job_spec", "experiment_spec"} <= run_rules, run_rules
    for profile in sorted((ROOT / "profiles").glob("*/config.yaml")):
        assert yaml.safe_load(profile.read_text()).get("force-use-threads") is True, profile


def test_the_local_profile_does_not_replan_every_second():
    """Snakemake's default (100 jobs / 1 s) re-plans every second while jobs wait for cores, statting every
    waiting job's inputs: 38% of a core in the default run. The profile must keep it rare, and must not
    throttle the ~170 bookkeeping jobs that become ready at once."""
    from snakemake.settings.types import MaxJobsPerTimespan

    value = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())["max-jobs-per-timespan"]
    limit = MaxJobsPerTimespan.parse_choice(value)
    assert 5 <= limit.timespan <= 30 and limit.max_jobs >= 500, value


def _results(tmp_path, name, cells, extra=None):
    d = tmp_path / name
    (d / "tables").mkdir(parents=True)
    (d / "tables" / "table1.csv").write_text("model,R\n" + "".join(f"{m},{v}\n" for m, v in cells))
    run = d / "runs" / "table1" / "R" / "CNN" / "seed1"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(__import__("json").dumps({"test_error": 1.0, **(extra or {})}))
    return d


def test_compare_results_finds_a_changed_cell_and_an_unlabelled_run(tmp_path, capsys):
    ref = _results(tmp_path, "ref", [("CNN", "3.4")])
    same = _results(tmp_path, "same", [("CNN", "3.4")], {"slurm_job_id": "12"})
    assert compare_results.differences(same, ref, slurm=False) == []
    changed = _results(tmp_path, "changed", [("CNN", "3.5")])
    problems = compare_results.differences(changed, ref, slurm=True)
    assert any("table1.csv differs" in p and "3.5" in p for p in problems)
    assert any("1 of 1 runs recorded no Slurm job" in p for p in problems)
    assert compare_results.main([str(changed), str(ref)]) == 1
    assert "DIFFERENT" in capsys.readouterr().out


def test_compare_results_subset_takes_fewer_rows_but_never_a_changed_or_foreign_one(tmp_path):
    ref = _results(tmp_path, "ref", [("CNN", "3.4"), ("FCN", "7.1")])
    part = _results(tmp_path, "part", [("CNN", "3.4")])
    assert compare_results.differences(part, ref, slurm=False, subset=True) == []
    assert any("2 rows" in p for p in compare_results.differences(part, ref, slurm=False))  # without --subset: differs
    changed = _results(tmp_path, "changed", [("CNN", "3.5")])
    assert any("3.5" in p for p in compare_results.differences(changed, ref, slurm=False, subset=True))
    foreign = _results(tmp_path, "foreign", [("ST-CNN-Aff", "2.0")])
    assert any("no such row" in p for p in compare_results.differences(foreign, ref, slurm=False, subset=True))
    extra_run = foreign / "runs" / "table1" / "TC" / "CNN" / "seed1"
    extra_run.mkdir(parents=True)
    (extra_run / "metrics.json").write_text("{}")
    assert any("runs only in" in p and "TC" in p for p in compare_results.differences(foreign, ref, slurm=False, subset=True))
    (part / "tables" / "table1.csv").unlink()
    assert any("holds no table CSV" in p for p in compare_results.differences(part, ref, slurm=False, subset=True))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("STN_SLURM_TEST") != "1", reason="set STN_SLURM_TEST=1 to start a local Slurm (root)")
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="starting slurmctld/slurmd needs root")
@pytest.mark.skipif(shutil.which("slurmctld") is None and shutil.which("apt-get") is None,
                    reason="no Slurm and no apt-get to install it")
def test_smoke_run_under_a_local_slurm_equals_the_local_run(smoke, tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh"), "check", str(smoke)], cwd=ROOT, capture_output=True,
                          text=True, timeout=3600, env={**os.environ, "WORK": str(tmp_path), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "every run was a Slurm job and every table cell equals the local run's" in proc.stdout
    # the check's slice of the smoke config still sent every rule that goes to Slurm there (--slurm-keep-successful-logs)
    ran, slurm_rules = {p.name.removeprefix("rule_") for p in (tmp_path / "slurm-logs").iterdir()}, _local_and_slurm_rules()[1]
    assert ran == slurm_rules, ran ^ slurm_rules
    # stop takes its slurm.conf with it: left behind, with no controller, it held every later Snakemake start 9 s
    conf = Path("/etc/slurm/slurm.conf")
    assert not (conf.exists() and "managed by stn" in conf.read_text())
