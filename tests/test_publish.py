"""stn.report.publish: a table's rendered files reach its MLflow parent run, its markdown the run's and the
experiment's description; a store or experiment that is not there costs one line, never the render."""
from pathlib import Path

from stn import tracking
from stn.io import write_json
from stn.report.publish import NOTE_TAG, description, publish


def _outputs(results: Path) -> list[Path]:
    (results / "tables").mkdir(parents=True)
    (results / "figures").mkdir()
    table = results / "tables" / "table9.md"
    table.write_text("**Table 9: test error (%)**\n\n| Model | R |\n|---|---|\n| CNN | 1.2 (1.2) |\n")
    extra = results / "tables" / "table9_transforms.md"
    extra.write_text("| Model | R |\n|---|---|\n| ST-CNN Aff | 0.70 / 0.10 |\n")
    figure = results / "figures" / "table9_curves.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    return [table, extra, figure]


def test_the_outputs_go_to_the_tables_parent_run_and_its_markdown_is_the_description(tmp_path):
    results = tmp_path / "results"
    paths = _outputs(results)
    ids = tracking.init_experiments(results, ["table9"])
    ids = {**ids, "parents": tracking.init_parent_runs(results, ids)}
    write_json(results / "mlflow" / "experiments" / "table9.json", ids)
    lines = []
    assert publish(results, "table9", results / "mlflow" / "experiments" / "table9.json", paths, lines.append) == 3
    c = tracking.client(tracking.default_uri(results))
    parent = ids["parents"]["table9"]
    assert [a.path for a in c.list_artifacts(parent, "tables")] == ["tables/table9.md", "tables/table9_transforms.md"]
    assert [a.path for a in c.list_artifacts(parent, "figures")] == ["figures/table9_curves.png"]
    note = c.get_run(parent).data.tags[NOTE_TAG]
    assert note.startswith("**Table 9") and "| CNN | 1.2 (1.2) |" in note and "0.70 / 0.10" in note
    assert c.get_experiment(ids["table9"]).tags[NOTE_TAG] == note
    assert "3 tables and figures logged" in lines[-1]
    # rendering again replaces the files (one artifact per name), it does not add copies
    paths[0].write_text("**Table 9: test error (%)**\n\n| Model | R |\n|---|---|\n| CNN | 0.9 (1.2) |\n")
    publish(results, "table9", results / "mlflow" / "experiments" / "table9.json", paths, lines.append)
    assert "| CNN | 0.9 (1.2) |" in c.get_run(parent).data.tags[NOTE_TAG]
    assert len(c.list_artifacts(parent, "tables")) == 2


def test_without_the_experiment_or_with_an_unreachable_store_the_render_loses_only_the_logging(tmp_path, monkeypatch):
    results = tmp_path / "results"
    paths = _outputs(results)
    lines = []
    offline = results / "mlflow" / "experiments" / "table9.json"
    write_json(offline, {"table9": None, "parents": {}})  # what mlflow-init writes when the server was down
    assert publish(results, "table9", offline, paths, lines.append) == 0
    assert "records no experiment and parent run for table9" in lines[-1] and str(results) in lines[-1]
    write_json(offline, {"table9": "1", "parents": {"table9": "abc"}})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert publish(results, "table9", offline, paths, lines.append) == 0
    assert lines[-1].startswith("warning: MLflow at http://127.0.0.1:9 did not take table9's tables and figures")


def test_the_description_keeps_the_table_and_names_what_did_not_fit(tmp_path):
    paths = _outputs(tmp_path / "results")
    assert description(paths[2:]) == ""
    whole = description(paths)
    assert whole.index("**Table 9") < whole.index("ST-CNN Aff")
    short = description(paths, limit=len(paths[0].read_text()) + 210)
    assert "ST-CNN Aff" not in short and short.endswith("under tables/: table9_transforms.md.)")
