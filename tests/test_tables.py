"""Table rendering from metrics records."""
import json
import os

import pytest

from stn.paper import TABLE1_PROTOCOL, table1_paper
from stn.report.tables import (
    override_phrases, protocol_changes, ranked_alike, render_table, render_versus_paper, summarize)


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


def test_ranked_alike_counts_the_pairs_the_paper_ranks_apart_that_ours_rank_the_same_way():
    # (ours, the paper's): 2 < 5 and 1 < 3 agree; 2 < 9 and 5 > 3 do not; 7 vs 5 (the paper's tie) does not count
    assert ranked_alike([(2.0, 1.0), (5.0, 3.0), (9.0, 3.0)]) == (2, 2)
    assert ranked_alike([(2.0, 1.0), (1.0, 3.0)]) == (0, 1)
    assert ranked_alike([(2.0, 1.0), (2.0, 3.0)]) == (0, 1)  # a tie of ours is not the paper's order
    assert ranked_alike([(2.0, 1.0)]) == (0, 0)


def test_ours_beside_the_papers_as_a_note_and_a_figure_from_the_tables_csv(tmp_path):
    recs = records() + [{"model": "FCN", "dataset": "RTS", "seed": 1, "test_error": 9.0}]
    md = render_table(recs, ["RTS"], ["FCN", "CNN", "ST-CNN-Aff"], "c", tmp_path / "tables", "table1")["md"].read_text()
    # the paper: FCN 5.2 > CNN 0.8 > ST-CNN-Aff 0.5; ours 9.0 > 2.0 > 0.5: all 3 pairs in its order
    assert "Order: of the 3 pairs of cells in one data set whose paper numbers differ, ours rank 3 the same way (RTS 3/3" in md
    (png,) = render_versus_paper(tmp_path, "table1")
    assert png == tmp_path / "figures" / "table1_vs_paper.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert png.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"
    # a stand-in's cells have no comparable paper number: no note, no figure
    seq = [{"model": "CNN", "dataset": "SEQ64", "seed": 1, "test_error": 19.3}]
    md = render_table(seq, ["SEQ64"], ["CNN"], "c", tmp_path / "tables", "table2")["md"].read_text()
    assert "Order:" not in md and render_versus_paper(tmp_path, "table2") == []


def test_protocol_changes_lists_only_differences():
    settings = {k: v for k, v in TABLE1_PROTOCOL.items() if k not in ("seeds", "param_target")}
    assert protocol_changes(settings, 3, 400_000) == []
    settings["iterations"] = 1500
    assert protocol_changes(settings, 2, 400_000) == ["iterations 1500 (paper 150000)", "seeds 2 (paper 3)"]
    del settings["precision"]  # a config that leaves precision at its default (fp32) says nothing of it
    assert protocol_changes(settings, 3, 400_000) == ["iterations 1500 (paper 150000)"]
    assert protocol_changes({**settings, "precision": "bf16"}, 3, 400_000)[-1] == "precision bf16 (paper fp32)"


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


def _benchmark(results, name, seconds, end):
    path = results / "benchmarks" / f"{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:00\t10\n")
    os.utime(path, (end, end))


def test_readme_gets_the_generated_tables_and_the_run_time_from_benchmark_files(tmp_path):
    from stn.report.readme import update_readme

    results = tmp_path / "results"
    (results / "tables").mkdir(parents=True)
    (results / "tables" / "table1.md").write_text("| Model | R |\n|---|---|\n| CNN | 1.2 (1.2) |\n")
    t0 = 1_000_000
    _benchmark(results, "mnist", 60, t0 + 60)                      # the run starts at t0
    _benchmark(results, "table1/R_CNN_seed1", 45 * 60, t0 + 46 * 60)
    _benchmark(results, "table1/R_FCN_seed1", 20 * 60, t0 + 30 * 60)  # in parallel with the CNN
    _benchmark(results, "table1_render", 60, t0 + 47 * 60)
    readme = tmp_path / "README.md"
    readme.write_text("# T\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\n## After\n")
    update_readme(readme, results, "snakemake --cores all")
    text = readme.read_text()
    assert "| CNN | 1.2 (1.2) |" in text and "old" not in text and text.endswith("## After\n")
    assert "Wall time of this run: 47 min (Table 1's runs done after 46 min); its training and optimisation jobs " \
           "took 65 min summed over jobs (table1 65)." in text
    assert "Speed of this machine" not in text  # no TC CNN run: no yardstick
    update_readme(readme, results, "snakemake --cores all")  # idempotent
    assert readme.read_text() == text
    # a table rerun a day later adds its own stretch, and the line says what it was
    _benchmark(results, "table2/SEQ64_CNN_seed1", 9 * 60, t0 + 86_400 + 9 * 60)
    _benchmark(results, "table2_render", 30, t0 + 86_400 + 10 * 60)
    _benchmark(results, "table1_render", 10, t0 + 2 * 86_400)
    update_readme(readme, results, "snakemake --cores all")
    # (the re-render replaced the first render's benchmark file, so the first sitting ends with the last run)
    assert ("Wall time of this run, in 3 sittings: 46 min (runs of table1), 10 min (runs of table2), <1 min "
            "(re-rendering); 56 min with jobs running in all; its training") in readme.read_text()
    # a job of the first sitting rerun later leaves a hole there, which its later run's length explains
    from stn.io import write_json
    from stn.paper import registry
    for seed, seconds in ((1, 390.0), (2, 410.0)):  # the yardstick: Table 1's TC CNN, seconds per 100 steps
        write_json(registry.run_dir(results, "table1", "TC", "CNN", seed) / "metrics.json",
                   {"iterations": 1300, "seconds": seconds})
    update_readme(readme, results, "snakemake --cores all")
    assert ("took 74 min summed over jobs (table1 65, table2 9). Speed of this machine: table1's CNN on TC trained "
            "at 30.8 s per 100 steps (mean of 2 runs).") in readme.read_text()
    for seed, precision in ((1, "bf16"), (2, "bf16")):  # the runs' step arithmetic, from their job.json
        write_json(registry.run_dir(results, "table1", "TC", "CNN", seed) / "job.json", {"settings": {"precision": precision}})
    update_readme(readme, results, "snakemake --cores all")
    assert "trained at 30.8 s per 100 steps in bf16 (mean of 2 runs)." in readme.read_text()
    write_json(registry.run_dir(results, "table1", "TC", "CNN", 2) / "job.json", {"settings": {}})  # fp32, the default
    update_readme(readme, results, "snakemake --cores all")
    assert "trained at 30.8 s per 100 steps (mean of 2 runs)." in readme.read_text()  # mixed: no arithmetic named
    hole = tmp_path / "hole"
    _benchmark(hole, "table1/R_CNN_seed1", 10 * 60, t0 + 10 * 60)
    _benchmark(hole, "table1/R_FCN_seed1", 10 * 60, t0 + 25 * 60)  # 5 min after: where TC's CNN first ran
    _benchmark(hole, "table1/TC_CNN_seed1", 6 * 60, t0 + 3_600 + 6 * 60)  # its rerun, an hour later
    from stn.report.readme import run_timing
    assert run_timing(hole).startswith("Wall time of this run, in 2 sittings: 25 min (runs of table1), 6 min (runs of "
                                       "table1); 31 min")
    # a run's metrics.json says when it finished: touching or copying its benchmark file does not move it
    write_json(registry.run_dir(hole, "table1", "TC", "CNN", 1) / "metrics.json", {"finished": t0 + 15 * 60})
    assert run_timing(hole).startswith("Wall time of this run: 25 min (Table 1's runs done after 25 min)")
    os.utime(hole / "benchmarks" / "table1" / "TC_CNN_seed1.tsv", (t0 + 9_000, t0 + 9_000))  # snakemake --touch
    assert run_timing(hole).startswith("Wall time of this run: 25 min (Table 1's runs done after 25 min)")
    assert registry.run_of_benchmark(hole, hole / "benchmarks" / "table5" / "TC_9_seed0.tsv") == \
        registry.run_dir(hole, "table5", "TC", "9", 0)
    assert registry.run_of_benchmark(hole, hole / "benchmarks" / "table5" / "encoder_TC.tsv") is None
    assert registry.run_of_benchmark(hole, hole / "benchmarks" / "distort_TC.tsv") is None
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
    text = render_transform_table(records, ["TC"], ["CNN", "ST-CNN-Aff"], "What they learnt", tmp_path, "table1",
                                  "a digit exactly has 0.5").read_text()
    assert "| ST-CNN Aff | 0.60 / 0.20 |" in text and "CNN |" not in text.replace("ST-CNN", "")
    assert text.startswith("**What they learnt**") and "(from" not in text
    assert "a window that frames a digit exactly has 0.5)" in text
    for r in records[:2]:
        r["start_zoom"] = 0.6
    text = render_transform_table(records, ["TC"], ["CNN", "ST-CNN-Aff"], "What they learnt", tmp_path, "table1",
                                  "a digit exactly has 0.5").read_text()
    assert "| ST-CNN Aff | 0.60 / 0.20 (from 0.60) |" in text and "started at zoom s (`start_zoom`)" in text


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


def test_tex_escapes_latex_specials_in_cells_headers_and_caption(tmp_path):
    from stn.report.tables import latex_table, tex_escape

    assert tex_escape("a$b{c}~d^e\\f&g%h#i_j ± †") == (
        "a\\$b\\{c\\}\\textasciitilde{}d\\textasciicircum{}e\\textbackslash{}f\\&g\\%h\\#i\\_j $\\pm$ $^\\dagger$")
    import pandas as pd

    tex = latex_table(pd.DataFrame([["ST_x", "1.0 ± 0.2 (2.0†)"]], columns=["Model", "R_{1}"]), "cap $5 ~ 50%")
    assert "ST\\_x & 1.0 $\\pm$ 0.2 (2.0$^\\dagger$)" in tex and "R\\_\\{1\\}" in tex
    assert "\\caption{cap \\$5 \\textasciitilde{} 50\\%}" in tex and "\\toprule" in tex and "\\centering" in tex
    paths = render_table(records(), ["RTS"], ["CNN"], "x_y", tmp_path, "table1")
    html = paths["html"].read_text()
    assert "<caption>x_y</caption>" in html and "2.0 ± 1.4 (0.8)" in html and html.startswith("<!doctype html>")
    again = render_table(records(), ["RTS"], ["CNN"], "x_y", tmp_path / "again", "table1")["html"].read_text()
    assert again == html and 'id="T_table1_' in html  # element ids from the table's name, not random


def test_late_fall_is_the_drop_over_the_last_fifth_of_steps():
    from stn.settings import late_fall

    curve = [{"iteration": i, "val_error": e} for i, e in [(200, 80.0), (400, 60.0), (800, 30.0), (1000, 27.5)]]
    assert late_fall(curve, 1000) == 2.5  # from step 800 (the last evaluation at or before 80%) to the end
    assert late_fall(curve[-1:], 1000) is None  # nothing measured before the last fifth
    assert late_fall([], 1000) is None


def test_cells_of_runs_still_learning_are_marked(tmp_path):
    recs = records()
    recs[0]["late_fall"], recs[1]["late_fall"], recs[2]["late_fall"] = 0.5, 6.0, 1.9  # CNN seed 2 still learning
    paths = render_table(recs, ["RTS"], ["CNN", "ST-CNN-Aff"], "c", tmp_path, "table1")
    md = paths["md"].read_text()
    assert "| CNN | 2.0 ± 1.4‡ (0.8) |" in md and "| ST-CNN Aff | 0.5 (0.5) |" in md
    assert "‡ Still learning: in at least one seed the validation error fell by more than 2 points over the last 20%" in md
    lines = paths["csv"].read_text().splitlines()
    assert lines[0].endswith(",still_learning,code_versions")
    assert lines[1].endswith(",1,unrecorded") and lines[2].endswith(",0,unrecorded")
    assert "2.0 $\\pm$ 1.4$^\\ddagger$ (0.8)" in paths["tex"].read_text()
    assert "Still learning" not in render_table(records(), ["RTS"], ["CNN"], "c", tmp_path, "table1")["md"].read_text()


def test_cells_of_runs_from_another_code_version_are_marked_and_the_versions_named(tmp_path):
    recs = records()
    for r, version in zip(recs, ["aaa111", "bbb222", "aaa111"]):  # CNN seed 2 from other code
        r["code_version"] = version
    paths = render_table(recs, ["RTS"], ["CNN", "ST-CNN-Aff"], "c", tmp_path, "table1")
    md = paths["md"].read_text()
    assert "| CNN | 2.0 ± 1.4§ (0.8) |" in md and "| ST-CNN Aff | 0.5 (0.5) |" in md
    assert ("§ Mixed code: this table's runs come from 2 versions of the stn library (aaa111: 2 runs, bbb222: 1 run); "
            "cells marked § hold runs not of the most common one.") in md
    lines = paths["csv"].read_text().splitlines()
    assert lines[1].endswith(",aaa111 bbb222") and lines[2].endswith(",aaa111")
    assert "2.0 $\\pm$ 1.4\\S{} (0.8)" in paths["tex"].read_text()
    recs[1]["code_version"] = "aaa111"  # one version: nothing said
    assert "§" not in render_table(recs, ["RTS"], ["CNN", "ST-CNN-Aff"], "c", tmp_path, "table1")["md"].read_text()
    old = records()  # all from before versions were recorded: nothing said either
    assert "§" not in render_table(old, ["RTS"], ["CNN", "ST-CNN-Aff"], "c", tmp_path, "table1")["md"].read_text()
    old[2]["code_version"] = "ccc333"  # one rerun among older runs: the rerun's cell is the odd one
    md = render_table(old, ["RTS"], ["CNN", "ST-CNN-Aff"], "c", tmp_path, "table1")["md"].read_text()
    assert "| ST-CNN Aff | 0.5§ (0.5) |" in md and "| CNN | 2.0 ± 1.4 (0.8) |" in md
    assert "(from before versions were recorded: 2 runs, ccc333: 1 run)" in md


def test_code_version_hashes_the_source_a_run_depends_on(tmp_path):
    from stn.experiments import code_version

    files = {"train.py": "a = 1\n", "ops/csrc/cpu/k.cpp": "int k;\n", "report/tables.py": "t = 1\n",
             "bench_train.py": "b = 1\n", "cli.py": "c = 1\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    version = code_version.__wrapped__(tmp_path)
    assert len(version) == 12 and int(version, 16) >= 0
    for name in ["report/tables.py", "bench_train.py", "cli.py"]:  # rendering, benchmarks, command line: same version
        (tmp_path / name).write_text("changed = 2\n")
        assert code_version.__wrapped__(tmp_path) == version, name
    for name in ["train.py", "ops/csrc/cpu/k.cpp"]:
        (tmp_path / name).write_text("changed = 2\n")
        assert code_version.__wrapped__(tmp_path) != version, name
        version = code_version.__wrapped__(tmp_path)


def test_every_run_records_the_code_version_in_its_metrics(tmp_path):
    from stn.experiments import code_version, write_metrics

    written = write_metrics(tmp_path, {"test_error": 1.5})
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == written and on_disk["code_version"] == code_version() and on_disk["test_error"] == 1.5


def test_focus_table_gives_each_channels_spread_and_what_each_transformer_holds(tmp_path):
    from stn.report.tables import render_focus_table

    focus = {"2xST-FCN-Aff": {"input": [6.5, 6.4], "ST1": [0.9, 11.4], "ST2": [9.6, 0.8]},
             "2xST-FCN-TPS": {"input": [6.5, 6.4], "ST1": [5.0, 6.0], "ST2": [0.9, 8.4]}}
    md = render_focus_table(focus, "cap", tmp_path, "table4").read_text()
    assert md.startswith("**cap**\n\n| Model | input | ST1 | ST2 | held in place |\n")
    assert "| 2xST-FCN Aff | 6.5 / 6.4 | 0.9 / 11.4 | 9.6 / 0.8 | ST1: ch1, ST2: ch2 |" in md
    assert "| 2xST-FCN TPS | 6.5 / 6.4 | 5.0 / 6.0 | 0.9 / 8.4 | ST1: none, ST2: ch1 |" in md
    assert "less than 0.5× as much as in the input" in md
    empty = render_focus_table({}, "cap", tmp_path, "table4").read_text()
    assert empty == "**cap**\n\nNo model of this config has parallel transformers.\n"
