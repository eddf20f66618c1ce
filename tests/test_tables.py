"""Table rendering from metrics records."""
import json
import os

import pytest

from stn.paper import TABLE1_PROTOCOL, table1_paper
from stn.report.tables import override_phrases, protocol_changes, render_table, summarize


def records():
    out = []
    for seed, err in [(1, 1.0), (2, 3.0)]:
        out.append({"model": "CNN", "dataset": "RTS", "seed": seed, "test_error": err})
    out.append({"model": "ST-CNN-Aff", "dataset": "RTS", "seed": 1, "test_error": 0.5})
    return out


def test_mean_and_std_over_seeds():
    s = summarize(records())
    assert s[("CNN", "RTS")] == (2.0, 2 ** 0.5, 2)
    assert s[("ST-CNN-Aff", "RTS")] == (0.5, None, 1)


def test_rendered_cells_carry_paper_numbers(tmp_path):
    paths = render_table(records(), ["RTS"], ["CNN", "ST-CNN-Aff"], "caption here", tmp_path, "table1")
    md = paths["md"].read_text()
    assert "| CNN | 2.0 ± 1.4 (0.8) |" in md
    assert "| ST-CNN Aff | 0.5 (0.5) |" in md
    assert "caption here" in paths["tex"].read_text()
    assert paths["csv"].read_text().splitlines()[1].startswith("CNN,RTS,2.0000,1.4142,2,0.8,0")


def test_protocol_changes_lists_only_differences():
    settings = {k: v for k, v in TABLE1_PROTOCOL.items() if k not in ("seeds", "param_target")}
    assert protocol_changes(settings, 3, 400_000) == []
    settings["iterations"] = 1500
    assert protocol_changes(settings, 2, 400_000) == ["iterations 1500 (paper 150000)", "seeds 2 (paper 3)"]


def test_override_phrases_name_what_each_override_selects_with_its_own_settings():
    overrides = [{"select": {"dataset": "R"}, "settings": {"loc_lr_mult": 1.0, "iterations": 2600}},
                 {"select": {"dataset": "E"}, "settings": {}},
                 {"select": {"model": "CNN"}, "settings": {"iterations": 1500}},
                 {"select": {"dataset": "TC", "model": "CNN"}, "settings": {"lr": 0.02}},
                 {"select": {"dataset": "P"}, "settings": {"lr": 0.5}}]  # not a data set of this table
    assert override_phrases(overrides, ["R", "RTS", "E", "TC"]) == [
        "R: iterations 2600, loc_lr_mult 1.0", "CNN: iterations 1500", "TC/CNN: lr 0.02"]


def test_paper_lookup():
    assert table1_paper("ST-FCN-TPS", "E") == (2.4, False)
    assert table1_paper("ST-FCN-Aff", "TC") == (2.0, True)
    assert table1_paper("CNN", "TC") == (3.5, False)


def test_table4_paper_numbers(tmp_path):
    recs = [{"model": "2xST-FCN-TPS", "dataset": "ADD", "seed": 1, "test_error": 7.0}]
    md = render_table(recs, ["ADD"], ["2xST-FCN-TPS"], "t4", tmp_path, "table4")["md"].read_text()
    assert "| 2xST-FCN TPS | 7.0 (5.8) |" in md and "†" not in md


def test_readme_gets_the_generated_tables(tmp_path):
    from stn.report.readme import update_readme

    results = tmp_path / "results"
    (results / "data").mkdir(parents=True)
    (results / "tables").mkdir()
    (results / "runs" / "table1" / "R" / "CNN" / "seed1").mkdir(parents=True)
    (results / "data" / "mnist.npz").write_bytes(b"x")
    (results / "tables" / "table1.md").write_text("| Model | R |\n|---|---|\n| CNN | 1.2 (1.2) |\n")
    (results / "runs" / "table1" / "R" / "CNN" / "seed1" / "metrics.json").write_text(json.dumps({"seconds": 120.0}))
    os.utime(results / "data" / "mnist.npz", (1000, 1000))
    os.utime(results / "runs" / "table1" / "R" / "CNN" / "seed1" / "metrics.json", (1000 + 46 * 60, 1000 + 46 * 60))
    os.utime(results / "tables" / "table1.md", (1000 + 99 * 60, 1000 + 99 * 60))  # re-rendered later: not counted
    readme = tmp_path / "README.md"
    readme.write_text("# T\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\n## After\n")
    update_readme(readme, results, "snakemake --cores all")
    text = readme.read_text()
    assert "| CNN | 1.2 (1.2) |" in text and "old" not in text and text.endswith("## After\n")
    assert "from the MNIST download to the last run's end: 46 min (Table 1 alone: 46 min)" in text
    assert "took 2 min summed" in text
    update_readme(readme, results, "snakemake --cores all")  # idempotent
    assert readme.read_text() == text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="must contain the lines <!-- results:begin -->"):
        update_readme(readme, results, "x")
    readme.write_text(text)
    with pytest.raises(FileNotFoundError, match="holds no finished run"):
        update_readme(readme, tmp_path / "nothing", "x")


def test_transform_table_shows_zoom_and_shift_means_of_affine_models_only(tmp_path):
    from stn.report.tables import render_transform_table

    records = [{"model": "ST-CNN-Aff", "dataset": "TC", "test_error": 3.0, "zoom": z, "shift": 0.2, "seed": s}
               for s, z in ((1, 0.5), (2, 0.7))] + [{"model": "CNN", "dataset": "TC", "test_error": 4.0, "seed": 1}]
    text = render_transform_table(records, ["TC"], ["CNN", "ST-CNN-Aff"], "What they learnt", tmp_path, "table1").read_text()
    assert "| ST-CNN Aff | 0.60 / 0.20 |" in text and "CNN |" not in text.replace("ST-CNN", "")
    assert text.startswith("**What they learnt**")


def test_a_table_reads_only_the_runs_its_config_declares(tmp_path):
    """A leftover seed-2 run of an earlier config never enters a cell of a one-seed table (#18)."""
    import json

    from stn.experiments import run_records
    from stn.paper import registry
    from stn.report.tables import render_table

    for seed, err in ((1, 10.0), (2, 30.0)):
        d = registry.run_dir(tmp_path, "table1", "R", "CNN", seed)
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"dataset": "R", "model": "CNN", "seed": seed, "test_error": err}))
    records = run_records(tmp_path, "table1", registry.Grid(["R"], ["CNN"], [1]))
    assert [r["seed"] for r in records] == [1]
    csv_text = render_table(records, ["R"], ["CNN"], "c", tmp_path, "table1")["csv"].read_text()
    assert "CNN,R,10.0000,,1," in csv_text
    with pytest.raises(FileNotFoundError, match="1 run\\(s\\) of this config have not finished"):
        run_records(tmp_path, "table1", registry.Grid(["R"], ["CNN"], [1, 3]))
