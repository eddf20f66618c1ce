"""A table's rendered outputs into MLflow, beside its runs, so that `mlflow ui` shows each paper table with the
paper's numbers printed beside ours:

- every file the render step wrote, as an artifact of the table's parent run ("table1: every run"), under
  `tables/` and `figures/` (the MLflow UI previews the PNG figures and the HTML tables);
- the table's markdown (its caption, ours beside the paper's numbers, its notes, then its companion tables
  while they fit) as the description (`mlflow.note.content`) of that parent run and of the table's
  experiment: the UI shows it at the top of the run's page and of the experiment's;
- on each of the table's runs, the paper's number for its cell as the metric `paper_<metric>` (for Table 1,
  `paper_test_error` beside `test_error`), so the runs view and its charts set the two side by side. Only
  cells with a comparable paper number get one: a synthetic stand-in's cells (Tables 2 and 3) get none.

MLflow is a sink: the files under results/ are the source of truth, and a store that cannot be reached, or a
table whose experiment was never created there, costs one line in the render step's log, never the render.

    publish(Path("results"), "table1", Path("results/mlflow/experiments/table1.json"), paths)
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


def label_paper_numbers(client, experiment_id: str, parent: str, numbers: dict[tuple[str, str], float],
                        key: str) -> int:
    """Log each number as metric `key` on the runs under `parent` whose name is "<data set>/<model>/seed<n>"
    (stn.experiments.tracker), unless it already holds that value; returns how many runs hold it."""
    runs = tracking._retry(lambda: client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50000))
    labelled = 0
    for run in runs:
        dataset, model, *_ = (run.info.run_name or "").split("/") + ["", ""]
        value = numbers.get((dataset, model))
        if value is None:
            continue
        if run.data.metrics.get(key) != value:
            tracking._retry(lambda: client.log_metric(run.info.run_id, key, value))
        labelled += 1
    return labelled


def publish(results: Path, experiment: str, experiments_file: Path, paths: list[Path],
            log: Callable[[str], None] = print) -> int:
    """Log `paths` (files under `results`) to the parent run of `experiment` recorded in `experiments_file`
    (written by `stn mlflow-init`) and set the descriptions; returns how many files were logged (0 where the
    store or the run is not there, with one line to `log` saying why)."""
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
        labelled = label_paper_numbers(client, exp_id, parent, paper_numbers(paths, experiment), key)
    except Exception as exc:
        log(f"warning: MLflow at {uri} did not take {experiment}'s tables and figures ({first_line(exc)}); "
            f"they are in {results} (rerun `stn render` to send them)")
        return 0
    log(f"MLflow: {len(paths)} tables and figures logged to the parent run of {experiment} ({parent}) at {uri}; "
        f"{labelled} runs carry the paper's number as {key}")
    return len(paths)
