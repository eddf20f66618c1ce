"""A table's rendered outputs into MLflow, beside its runs, so that `mlflow ui` shows each paper table with the
paper's numbers printed beside ours:

- every file the render step wrote, as an artifact of the table's parent run ("table1: every run"), under
  `tables/` and `figures/` (the MLflow UI previews the PNG figures and the HTML tables);
- the table's markdown (its caption, ours beside the paper's numbers, its notes, then its companion tables
  while they fit) as the description (`mlflow.note.content`) of that parent run and of the table's
  experiment: the UI shows it at the top of the run's page and of the experiment's;
- on each of the table's runs, the paper's number for its cell as the metric `paper_<metric>` (for Table 1,
  `paper_test_error` beside `test_error`), so the runs view and its charts set the two side by side. Only
  cells with a comparable paper number get one: a synthetic stand-in's cells (Tables 2 and 3) get none;
- on every run of the experiment, the tag `table_cell`: `yes` on exactly the runs the table reads, `superseded`
  on an earlier run of one of its cells (MLflow keeps a run when its cell is rerun), `no` on the rest, so the
  search `tags.table_cell = "yes"` shows the table's runs and nothing else.

MLflow is a sink: the files under results/ are the source of truth, and a store that cannot be reached, or a
table whose experiment was never created there, costs one line in the render step's log, never the render.

    publish(Path("results"), "table1", Path("results/mlflow/experiments/table1.json"), paths,
            table_cells(Path("results"), "table1", registry.Grid(**spec["grid"])))
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from .. import tracking
from ..io import first_line, read_json
from ..paper import registry

NOTE_TAG = "mlflow.note.content"  # the description the MLflow UI shows (and edits) on a run's or experiment's page
RUN_NOTE_LIMIT = 8000  # MLflow's longest run tag value (mlflow.utils.validation.MAX_TAG_VAL_LENGTH)
CLOSING_ROOM = 200  # characters kept free for the line naming the tables left out


def description(paths: list[Path], limit: int = RUN_NOTE_LIMIT) -> str:
    """The markdown tables among `paths` joined, the first (the table itself) always, each later one while the
    whole stays within `limit` characters; a last line says where the ones left out are."""
    tables = [p for p in paths if p.suffix == ".md"]
    if not tables:
        return ""
    text, left_out = tables[0].read_text()[: limit - CLOSING_ROOM], []
    for p in tables[1:]:
        part = "\n\n" + p.read_text()
        if len(text) + len(part) + CLOSING_ROOM <= limit:
            text += part
        else:
            left_out.append(p.name)
    if left_out:
        text += f"\n\n(Also in this run's artifacts, under tables/: {', '.join(left_out)}.)"
    return text


def paper_numbers(paths: list[Path], experiment: str) -> dict[tuple[str, str], float]:
    """(data set, model) -> the paper's number, from the table's CSV among `paths` (its `paper` column: empty
    where the paper has none or the data set stands in for the paper's)."""
    table = next((p for p in paths if p.name == f"{experiment}.csv"), None)
    if table is None:
        return {}
    with open(table, newline="") as f:
        return {(row["dataset"], row["model"]): float(row["paper"]) for row in csv.DictReader(f) if row.get("paper")}


CELL_TAG = "table_cell"  # on each run of a table's experiment: which runs the table reads (label_runs)


def table_cells(results: Path, experiment: str, grid: registry.Grid) -> dict[str, tuple[str, str]]:
    """MLflow run id -> (data set, model) of every run the table reads: the runs its config declares
    (stn.experiments.run_records), each by the run id its metrics.json records."""
    from ..experiments import run_records

    return {r["run_id"]: (r["dataset"], str(r["model"])) for r in run_records(results, experiment, grid)
            if r.get("run_id")}


def label_runs(client, experiment_id: str, parent: str, cells: dict[str, tuple[str, str]],
               numbers: dict[tuple[str, str], float], key: str) -> dict[str, int]:
    """Tag every run of the experiment but the parent with CELL_TAG: "yes" on the table's runs (`cells`, run id ->
    (data set, model)); "superseded" on a run named like one of them (the same data set, model and seed) that a
    rerun replaced; "no" on the rest (another config's runs, or runs the table reads only through others, such as
    Table 5's encoders). Log each table run's paper number (`numbers`) as metric `key` unless it already holds that
    value. Tags and metrics are written only where they change. Returns how many runs got each tag, and
    "paper": how many runs hold the paper's number."""
    runs = [r for r in tracking._retry(lambda: client.search_runs([experiment_id], max_results=50000))
            if r.info.run_id != parent]
    current = {r.info.run_name for r in runs if r.info.run_id in cells}
    counts = {"yes": 0, "superseded": 0, "no": 0, "paper": 0}
    for run in runs:
        rid = run.info.run_id
        tag = "yes" if rid in cells else "superseded" if run.info.run_name in current else "no"
        counts[tag] += 1
        if run.data.tags.get(CELL_TAG) != tag:
            tracking._retry(lambda: client.set_tag(rid, CELL_TAG, tag))
        value = numbers.get(cells[rid]) if tag == "yes" else None
        if value is None:
            continue
        if run.data.metrics.get(key) != value:
            tracking._retry(lambda: client.log_metric(rid, key, value))
        counts["paper"] += 1
    return counts


def publish(results: Path, experiment: str, experiments_file: Path, paths: list[Path],
            cells: dict[str, tuple[str, str]], log: Callable[[str], None] = print) -> int:
    """Log `paths` (files under `results`) to the parent run of `experiment` recorded in `experiments_file`
    (written by `stn mlflow-init`), set the descriptions and label the runs (`label_runs`: `cells` are the
    table's runs, `table_cells`); returns how many files were logged (0 where the store or the run is not
    there, with one line to `log` saying why)."""
    uri = tracking.tracking_uri(results)
    ids = read_json(experiments_file) if Path(experiments_file).is_file() else {}
    exp_id, parent = ids.get(experiment), ids.get("parents", {}).get(experiment)
    if not exp_id or not parent:
        log(f"MLflow: {experiments_file} records no experiment and parent run for {experiment} (the store was "
            f"unreachable when they were made); the tables and figures are in {results} only")
        return 0
    try:
        client = tracking.client(uri)
        note = description(paths)
        for path in paths:
            folder = Path(path).resolve().relative_to(Path(results).resolve()).parent.as_posix()
            tracking._retry(lambda: client.log_artifact(parent, str(path), artifact_path=folder))
        if note:
            tracking._retry(lambda: client.set_tag(parent, NOTE_TAG, note))
            tracking._retry(lambda: client.set_experiment_tag(exp_id, NOTE_TAG, note))
        key = f"paper_{registry.EXPERIMENTS[experiment].metric}"
        counts = label_runs(client, exp_id, parent, cells, paper_numbers(paths, experiment), key)
    except Exception as exc:
        log(f"warning: MLflow at {uri} did not take {experiment}'s tables and figures ({first_line(exc)}); "
            f"they are in {results} (rerun `stn render` to send them)")
        return 0
    log(f"MLflow: {len(paths)} tables and figures logged to the parent run of {experiment} ({parent}) at {uri}; "
        f"tag {CELL_TAG}: {counts['yes']} runs the table reads (yes), {counts['superseded']} superseded by a rerun, "
        f"{counts['no']} others (no); {counts['paper']} runs carry the paper's number as {key}")
    return len(paths)
