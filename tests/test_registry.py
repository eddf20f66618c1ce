"""The experiment registry is the one place that names experiments, data sets and the run layout."""
import copy
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from stn import settings
from stn.cli import parser
from stn.config import ConfigError, schema, validate
from stn.data import distort
from stn.experiments import module
from stn.paper import paper_number, registry

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.json"


def smoke():
    return yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())


@pytest.mark.parametrize("name", list(registry.EXPERIMENTS))
def test_every_experiment_has_its_module_rules_and_schema_part(name):
    m = module(name)
    for fn in ("build_data", "build_model", "run_job", "render"):
        assert callable(getattr(m, fn)), f"stn.experiments.{registry.EXPERIMENTS[name].module}.{fn}"
    assert (ROOT / "workflow" / "rules" / f"{name}.smk").exists()
    assert schema(SCHEMA)["properties"][name] == yaml.safe_load((SCHEMA.parent / f"{name}.schema.json").read_text())


def test_distorted_data_sets_name_their_generators():
    for name in registry.datasets("distort"):
        assert callable(getattr(distort, registry.DATASETS[name].generator)), name
    with pytest.raises(ValueError, match="unknown data set 'XYZ'"):
        distort.generate("XYZ", {}, 0)


def test_no_rule_cli_or_report_file_spells_out_names_or_the_run_layout():
    """Experiment and data-set names and the runs/ layout live in stn/paper/registry.py only."""
    names = [*registry.EXPERIMENTS, *registry.DATASETS]
    texts = {p: p.read_text() for p in [ROOT / "Snakefile", ROOT / "stn" / "cli.py", ROOT / "stn" / "report" / "readme.py",
                                        ROOT / "workflow" / "rules" / "common.smk", ROOT / "workflow" / "rules" / "setup.smk",
                                        ROOT / "workflow" / "rules" / "classification.smk",
                                        ROOT / "workflow" / "rules" / "data.smk"]}
    for path, text in texts.items():
        code = "\n".join(line.split("#")[0] for line in text.splitlines())  # comments may name them
        assert "runs/" not in code and "/seed{" not in code, path
        for n in names:
            assert not re.search(rf'["\']{re.escape(n)}["\']', code), (path, n)


def test_cli_choices_come_from_the_registry():
    p = parser()
    sub = next(a for a in p._actions if a.dest == "step").choices
    distort_name = next(a for a in sub["distort"]._actions if a.dest == "name")
    assert distort_name.choices == registry.datasets("distort")
    experiments = next(a for a in sub["mlflow-init"]._actions if a.dest == "experiments")
    assert experiments.choices == list(registry.EXPERIMENTS)


def test_readme_command_does_not_clash_with_the_step_name(capsys):
    """`stn readme --command ...` once overwrote the subcommand's name in error messages."""
    from stn.cli import main

    assert main(["readme", "--results", "/nonexistent", "--readme", "/nonexistent/README.md", "--command", "x y"]) == 1
    assert capsys.readouterr().err.startswith("stn readme: error:")


def test_a_missing_input_is_one_plain_line_naming_the_input(tmp_path, capsys):
    """A KeyError's message reaches the user as written, not quoted as str(KeyError) quotes it."""
    import json

    from stn.cli import main

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"experiment": "table5", "dataset": "TC", "model": "1", "seed": 0, "settings": {},
                               "extra": {"encoders": {"TC": {"TC": 1.0}}}, "results": str(tmp_path)}))
    assert main(["run", "--job", str(job)]) == 1
    assert capsys.readouterr().err == ("stn run: error: e() needs the CNN on TC: pass its model.pt as input encoder_TC=PATH "
                                       "(runs/table5/encoder_TC/)\n")


def test_training_keys_are_listed_once():
    keys = {f.name for f in fields(settings.TrainSettings)} - {"device"}
    assert set(settings.train_schema()["properties"]) == keys
    override = settings.override_schema(["R"], ["CNN"])
    assert set(override["properties"]) == keys | {"dataset", "model"} and "required" not in override
    full = schema(SCHEMA)
    assert full["$defs"]["train"] == settings.train_schema()
    assert full["$defs"]["table1_override"]["properties"]["dataset"] == {"enum": list(registry.EXPERIMENTS["table1"].datasets)}


def test_resolve_job_applies_overrides_in_order_and_checks_the_run():
    cfg = smoke()
    cfg["table1"]["train_overrides"] = [{"dataset": "R", "iterations": 20, "lr": 0.5}, {"dataset": "R", "model": "CNN", "lr": 0.1}]
    job = settings.resolve_job(cfg, "table1", "R", "CNN", 1)
    assert job["settings"]["iterations"] == 20 and job["settings"]["lr"] == 0.1 and job["settings"]["device"] == "auto"
    assert settings.resolve_job(cfg, "table1", "R", "FCN", 1)["settings"]["lr"] == 0.5
    assert settings.resolve_job(cfg, "table1", "TC", "FCN", 1)["settings"]["lr"] == cfg["table1"]["train"]["lr"]
    assert settings.resolve_job(cfg, "table4", "ADD", "FCN", 1)["extra"] == {"pairings": cfg["table4"]["pairings"]}
    assert settings.resolve_job(cfg, "table5", "TC", "8", cfg["data"]["seed"])["settings"] == cfg["table5"]["optimise"]
    with pytest.raises(settings.SettingsError, match="table1 has no run P/CNN/seed1"):
        settings.resolve_job(cfg, "table1", "P", "CNN", 1)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["table1"].update(figure_datasets=["P"]), "table1.figure_datasets: 'P' is not among"),
    (lambda c: c["table1"].update(figure_model="ST-FCN-TPS"), "table1.figure_model: 'ST-FCN-TPS' is not among"),
    (lambda c: c["table1"].update(figure_model="CNN"), "table1.figure_model: 'CNN' does not match '^ST-'"),
    (lambda c: c["table4"].update(figure_model="2xST-FCN-TPS"), "table4.figure_model: '2xST-FCN-TPS' is not among"),
    (lambda c: c["table5"].update(figure_digit=3), "table5.figure_digit: 3 is not among [8]"),
    (lambda c: c["table5"]["encoders"]["TC"].update(E=1.0), "table5.encoders (their Table 1 CNNs make e()): 'E' is not among"),
    (lambda c: c["table5"]["encoders"].pop("T"), "table5.variants (each needs its e() in table5.encoders): 'T' is not among"),
    (lambda c: c["table5"]["encoder_training"].update(RTS={}), "table5.encoder_training (for a data set of table5.encoders): 'RTS'"),
    (lambda c: c["table5"]["optimise"].update(encoder_start={"P": 5}),
     "table5.optimise.encoder_start (for a data set of table5.encoders): 'P' is not among"),
    (lambda c: c["table1"]["train_overrides"].append({"dataset": "ADD", "lr": 1.0}), "table1.train_overrides.1.dataset"),
])
def test_references_between_sections_are_checked_before_any_job(edit, message):
    cfg = copy.deepcopy(smoke())
    edit(cfg)
    with pytest.raises(ConfigError) as err:
        validate(cfg, SCHEMA)
    assert message in str(err.value)


def test_paper_numbers_of_every_registered_table():
    assert paper_number("table4", "2xST-FCN-TPS", "ADD") == (5.8, False)
    assert paper_number("table5", "3", "TC") == (75, False)
    assert paper_number("volumetric", "ST3D", "MNIST3D") == (None, False)
    assert paper_number("table1", "ST-CNN-Aff", "TC") == (1.7, True)


def test_outputs_follow_the_config():
    cfg = smoke()
    assert registry.outputs(cfg, "table1") == [
        "tables/table1.csv", "tables/table1.md", "tables/table1.tex", "tables/table1.html",
        "tables/table1_transforms.md", "figures/table1_data.png", "figures/table1_curves.png", "figures/table1_RTS_st_vs_cnn.png", "figures/figure1.png",
        "figures/table1_vs_paper.png", "figures/table1_data.pdf", "figures/table1_curves.pdf",
        "figures/table1_RTS_st_vs_cnn.pdf", "figures/figure1.pdf", "figures/table1_vs_paper.pdf"]
    assert registry.outputs(cfg, "table5")[-5:] == [  # no gif twin
        "figures/table5_TC_8_steps.png", "figures/table5_TC_8.gif", "figures/table5_vs_paper.png",
        "figures/table5_TC_8_steps.pdf", "figures/table5_vs_paper.pdf"]
    # ours beside the paper's only where a cell has a comparable paper number: not on a stand-in, not for A.3
    assert "figures/table2_vs_paper.png" not in registry.outputs(cfg, "table2")  # SEQ64/SEQ128 stand in for SVHN
    assert "figures/volumetric_vs_paper.png" not in registry.outputs(cfg, "volumetric")  # the paper gives no number
    grid = registry.Grid(["SVHN64", "SEQ64"], ["CNN", "ST-CNN-Multi"], [1])
    assert registry.paper_cells("table2", grid) == [("SVHN64", "CNN"), ("SVHN64", "ST-CNN-Multi")]
    cfg["table1"]["datasets"] = ["R", "RTS"]
    assert "figures/figure1.png" not in registry.outputs(cfg, "table1")
    assert str(registry.run_dir("res", "table5", "TC", "8", 0)) == "res/runs/table5/TC/8/seed0"


def test_version_names_the_package_and_commit(capsys):
    from stn.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("stn 0.1.0 (git ") and "Python 3." in out


def test_every_cli_option_says_what_it_does_and_every_step_shows_an_example():
    import argparse

    from stn.cli import parser

    steps = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    undocumented = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, sp in steps.items() for a in sp._actions
                    if not isinstance(a, argparse._HelpAction) and not a.help]
    assert undocumented == []
    assert [name for name, sp in steps.items() if f"stn {name}" not in (sp.epilog or "")] == []


def test_the_speed_yardstick_names_a_run_of_the_registry():
    experiment, dataset, model = registry.YARDSTICK
    e = registry.experiment(experiment)
    assert dataset in e.datasets and model in e.models
