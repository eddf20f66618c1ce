"""stn.report.publish: a table's rendered files reach its MLflow parent run, its markdown the run's and the
experiment's description; a store or experiment that is not there costs one line, never the render."""
from pathlib import Path

from stn import tracking
from stn.io import write_json
from stn.report.publish import CELL_TAG, NOTE_TAG, description, publish


def _outputs(results: Path) -> list[Path]:
    (results / "tables").mkdir(parents=True)
    (results / "figures").mkdir()
    table = results / "tables" / "table1.md"
    table.write_text("**Table 1: test error (%)**\n\n| Model | R |\n|---|---|\n| CNN | 1.2 (1.2) |\n")
    extra = results / "tables" / "table1_transforms.md"
    extra.write_text("| Model | R |\n|---|---|\n| ST-CNN Aff | 0.70 / 0.10 |\n")
    figure = results / "figures" / "table1_curves.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    cells = results / "tables" / "table1.csv"  # R/CNN has a paper number; SEQ64 stands for another data set: none
    cells.write_text("model,dataset,ours_mean,paper\nCNN,R,1.2000,1.2\nCNN,SEQ64,19.3000,\n")
    return [cells, table, extra, figure]


def test_the_outputs_go_to_the_tables_parent_run_and_its_markdown_is_the_description(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the results directory's own store
    results = tmp_path / "results"
    paths = _outputs(results)
    ids = tracking.init_experiments(results, ["table1"])
    ids = {**ids, "parents": tracking.init_parent_runs(results, ids)}
    write_json(results / "mlflow" / "experiments" / "table1.json", ids)
    c = tracking.client(tracking.default_uri(results))
    parent = ids["parents"]["table1"]
    names = ("R/CNN/seed1", "R/CNN/seed2", "SEQ64/CNN/seed1", "R/CNN/seed1", "R/FCN/seed3")
    created = [c.create_run(ids["table1"], run_name=name, tags={"mlflow.parentRunId": parent}).info.run_id
               for name in names]
    runs = dict(zip(names[:3], created[1:4]))  # the table's runs; created[0] is an earlier run of R/CNN/seed1
    cells = {created[1]: ("R", "CNN"), created[2]: ("R", "CNN"), created[3]: ("SEQ64", "CNN")}
    lines = []
    assert publish(results, "table1", results / "mlflow" / "experiments" / "table1.json", paths, cells,
                   lines.append) == 4
    assert [a.path for a in c.list_artifacts(parent, "tables")] == [
        "tables/table1.csv", "tables/table1.md", "tables/table1_transforms.md"]
    assert [a.path for a in c.list_artifacts(parent, "figures")] == ["figures/table1_curves.png"]
    note = c.get_run(parent).data.tags[NOTE_TAG]
    assert note.startswith("**Table 1") and "| CNN | 1.2 (1.2) |" in note and "0.70 / 0.10" in note
    assert c.get_experiment(ids["table1"]).tags[NOTE_TAG] == note
    assert "4 tables and figures logged" in lines[-1] and "2 runs carry the paper's number as paper_test_error" in lines[-1]
    assert "3 runs the table reads (yes), 1 superseded by a rerun, 1 others (no)" in lines[-1]
    metrics = {name: c.get_run(run_id).data.metrics for name, run_id in runs.items()}
    assert metrics["R/CNN/seed1"] == metrics["R/CNN/seed2"] == {"paper_test_error": 1.2}
    assert metrics["SEQ64/CNN/seed1"] == {}  # a stand-in's cell is never given the paper's number
    assert [c.get_run(r).data.tags.get(CELL_TAG) for r in created] == ["superseded", "yes", "yes", "yes", "no"]
    assert c.get_run(created[0]).data.metrics == {}  # a superseded run is not given the paper's number
    assert CELL_TAG not in c.get_run(parent).data.tags
    found = c.search_runs([ids["table1"]], f"tags.{CELL_TAG} = 'yes'")
    assert sorted(r.info.run_id for r in found) == sorted(cells)  # the UI's search shows the table's runs only
    # rendering again replaces the files (one artifact per name) and adds no second point to a metric
    paths[1].write_text("**Table 1: test error (%)**\n\n| Model | R |\n|---|---|\n| CNN | 0.9 (1.2) |\n")
    publish(results, "table1", results / "mlflow" / "experiments" / "table1.json", paths, cells, lines.append)
    assert "| CNN | 0.9 (1.2) |" in c.get_run(parent).data.tags[NOTE_TAG]
    assert len(c.list_artifacts(parent, "tables")) == 3
    assert len(c.get_metric_history(runs["R/CNN/seed1"], "paper_test_error")) == 1


def test_without_the_experiment_or_with_an_unreachable_store_the_render_loses_only_the_logging(tmp_path, monkeypatch):
    results = tmp_path / "results"
    paths = _outputs(results)
    lines = []
    offline = results / "mlflow" / "experiments" / "table1.json"
    write_json(offline, {"table1": None, "parents": {}})  # what mlflow-init writes when the server was down
    assert publish(results, "table1", offline, paths, {}, lines.append) == 0
    assert "records no experiment and parent run for table1" in lines[-1] and str(results) in lines[-1]
    write_json(offline, {"table1": "1", "parents": {"table1": "abc"}})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert publish(results, "table1", offline, paths, {}, lines.append) == 0
    assert lines[-1].startswith("warning: MLflow at http://127.0.0.1:9 did not take table1's tables and figures")


def test_the_description_keeps_the_table_and_names_what_did_not_fit(tmp_path):
    paths = _outputs(tmp_path / "results")
    assert description(paths[3:]) == ""
    whole = description(paths)
    assert whole.index("**Table 1") < whole.index("ST-CNN Aff")
    short = description(paths, limit=len(paths[1].read_text()) + 210)
    assert "ST-CNN Aff" not in short and short.endswith("under tables/: table1_transforms.md.)")
