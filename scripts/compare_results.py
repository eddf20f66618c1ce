"""Do two pipeline results directories hold the same results? (scripts/slurm_local.sh uses it.)

    python scripts/compare_results.py [--slurm] [--subset] RESULTS REFERENCE

Compares every table CSV (results/tables/*.csv) cell for cell and the set of runs (metrics.json) of the
two directories; with --subset RESULTS may hold fewer (a slice of REFERENCE's config: fewer models or data
sets), but each of its tables, table rows (by model and data set) and runs must be in REFERENCE, with
equal cells. With --slurm also checks that every run of RESULTS recorded the Slurm job that ran it, in
its metrics.json (`slurm_job_id`) and as the tag of its MLflow run. Prints each difference; exits 1 if
there is one.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def tables(results: Path) -> dict[str, list[dict]]:
    return {p.name: list(csv.DictReader(p.open())) for p in sorted((results / "tables").glob("*.csv"))}


def runs(results: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(results)): json.loads(p.read_text()) for p in (results / "runs").rglob("metrics.json")}


def _key(row: dict) -> tuple:
    return row.get("model"), row.get("dataset")


def differences(results: Path, reference: Path, slurm: bool, subset: bool = False) -> list[str]:
    problems = []
    ours, theirs = tables(results), tables(reference)
    for side, found in ((reference, theirs), (results, ours)):
        if not found:
            problems.append(f"{side}/tables holds no table CSV")
    for name in sorted(set(ours) if subset else set(ours) | set(theirs)):  # a subset may leave tables out
        if name not in ours or name not in theirs:
            problems.append(f"{name}: only in {reference if name in theirs else results}")
        elif subset:
            rows = {_key(row): row for row in theirs[name]}
            for row in ours[name]:
                if rows.get(_key(row)) != row:
                    problems.append(f"{name} differs: {row} against {rows.get(_key(row), 'no such row')}")
        elif ours[name] != theirs[name]:
            diff = next((a, b) for a, b in zip(ours[name], theirs[name]) if a != b) if len(ours[name]) == len(theirs[name]) \
                else (f"{len(ours[name])} rows", f"{len(theirs[name])} rows")
            problems.append(f"{name} differs: {diff[0]} against {diff[1]}")
    mine, reference_runs = runs(results), runs(reference)
    extra = set(mine) - set(reference_runs) if subset else set(mine) ^ set(reference_runs)
    if extra:
        problems.append(f"runs {'only in ' + str(results) if subset else 'differ'}: {sorted(extra)[:5]}")
    if slurm:
        unlabelled = [name for name, m in mine.items() if not str(m.get("slurm_job_id", "")).isdigit()]
        if unlabelled:
            problems.append(f"{len(unlabelled)} of {len(mine)} runs recorded no Slurm job, e.g. {unlabelled[0]}")
        problems += _mlflow_problems(results, mine)
    return problems


def _mlflow_problems(results: Path, metrics: dict[str, dict]) -> list[str]:
    from stn import tracking

    client = tracking.client(tracking.default_uri(results))
    problems = []
    for name, m in metrics.items():
        if not m.get("run_id"):
            continue
        tag = client.get_run(m["run_id"]).data.tags.get("slurm_job_id")
        if tag != str(m.get("slurm_job_id")):
            problems.append(f"{name}: MLflow tag slurm_job_id {tag!r}, metrics.json {m.get('slurm_job_id')!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("reference", type=Path)
    ap.add_argument("--slurm", action="store_true", help="also check that every run of RESULTS ran as a Slurm job")
    ap.add_argument("--subset", action="store_true", help="RESULTS may hold fewer tables, rows and runs than REFERENCE")
    a = ap.parse_args(argv)
    problems = differences(a.results, a.reference, a.slurm, a.subset)
    for p in problems:
        print(p)
    n_runs, n_tables = len(runs(a.results)), len(tables(a.results))
    print(f"{'DIFFERENT' if problems else 'same'}: {n_tables} tables, {n_runs} runs ({a.results} vs {a.reference})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
