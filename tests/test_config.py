"""Config validation stops bad input before any job runs, naming the key."""
import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stn.config import ConfigError, load, validate

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.json"


@pytest.mark.parametrize("name", ["config", "smoke"])
def test_shipped_configs_are_valid(name):
    load(ROOT / "config" / f"{name}.yaml", SCHEMA)


def test_the_paper_config_needs_the_real_svhn_and_says_so(tmp_path):
    with pytest.raises(ConfigError, match="table2.svhn.path: table2.source is svhn but no path is set"):
        load(ROOT / "config" / "paper.yaml", SCHEMA)
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    cfg["table2"]["svhn"]["path"] = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="nowhere is not a directory"):
        validate(cfg, SCHEMA)
    cfg["table2"]["svhn"]["path"] = str(tmp_path)
    cfg["table3"]["source"] = "standin"
    cfg["table3"]["net"]["backbone"] = "small"
    validate(cfg, SCHEMA)


def test_the_paper_config_needs_cub_and_imagenet_weights_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    cfg["table2"]["svhn"]["path"] = str(tmp_path)
    with pytest.raises(ConfigError) as err:
        validate(cfg, SCHEMA)
    assert "table3.cub.path: table3.source is cub but no path is set" in str(err.value)
    assert "table3.cub.weights: hub, but torch's hub cache has no googlenet-1378be20.pth" in str(err.value)
    cfg["table3"]["cub"]["path"] = str(tmp_path / "nowhere")
    cfg["table3"]["cub"]["weights"] = str(tmp_path / "missing.pth")
    with pytest.raises(ConfigError) as err:
        validate(cfg, SCHEMA)
    assert "nowhere does not exist" in str(err.value) and "missing.pth is not a file" in str(err.value)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "googlenet-1378be20.pth").write_bytes(b"")
    cfg["table3"]["cub"].update(path=str(tmp_path), weights="hub")
    validate(cfg, SCHEMA)
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    smoke["table3"]["net"]["backbone"] = "googlenet"
    with pytest.raises(ConfigError, match="googlenet takes RGB images; the stand-in .* is grey"):
        validate(smoke, SCHEMA)


def test_unknown_key_is_named():
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    bad = copy.deepcopy(cfg)
    bad["table1"]["train"]["iteratons"] = 5
    with pytest.raises(ConfigError, match=r"table1.train: unknown key\(s\) \['iteratons'\]"):
        validate(bad, SCHEMA)


def test_bad_value_is_named():
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg["table1"]["datasets"] = ["R", "XYZ"]
    cfg["table1"]["train"]["lr"] = -1
    with pytest.raises(ConfigError) as err:
        validate(cfg, SCHEMA)
    assert "table1.datasets.1" in str(err.value) and "table1.train.lr" in str(err.value)


def test_snakemake_refuses_a_bad_config_before_running(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "config/smoke.yaml",
         "--config", "devise=cpu"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "unknown key(s) ['devise']" in proc.stdout + proc.stderr


def test_an_override_must_select_runs_the_table_has(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg["table4"]["train_overrides"] = [{"iterations": 5, "lr": 0.1}]  # selects nothing
    with pytest.raises(ConfigError, match=r"table4.train_overrides.0"):
        validate(cfg, SCHEMA)
    cfg["table4"]["train_overrides"] = [{"model": "CNN", "iterations": 5}]  # valid, but not a Table 4 model here
    path = tmp_path / "cnn.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(path),
                           "--config", f"results={tmp_path / 'results'}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "table4.train_overrides names model CNN, which is not in table4.models" in proc.stdout + proc.stderr


def test_table5_encoder_job_trains_table1s_cnn_with_its_own_data_and_inputs():
    from stn import settings

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["table5"]["encoders"]["TC"] = {"P": 0.25, "TC": 1.0}
    assert settings.encoder_datasets(cfg) == ["P", "TC"]
    job = settings.encoder_job(cfg, "P")
    assert (job["experiment"], job["dataset"], job["model"], job["seed"]) == ("table5", "P", "encoder", cfg["table1"]["seeds"][0])
    table1 = settings.resolve_job(cfg, "table1", "P", "CNN", cfg["table1"]["seeds"][0])["settings"]
    # Table 1's P CNN drops its rate 10x at step 900 and trains in bf16; e() keeps the recipe's encoder, trained
    # without a drop and in fp32 (bf16-trained encoders lost TC's classes 1 and 9), which a job spec leaves out
    assert table1["lr_step"] == 900 and table1["precision"] == "bf16"
    assert job["settings"] == {**{k: v for k, v in table1.items() if k != "precision"}, "lr_step": 50000}
    assert job["extra"]["encoder"] == {"projective_corners": "independent", "standardise": False,
                                       "train": {"lr_step": 50000, "precision": "fp32"}}
    assert list(job) == sorted(job)  # canonical, so a re-dumped YAML reruns nothing
    # a data set without an encoder_training entry: trained exactly as Table 1's CNN (its reading, inputs, settings)
    tc = settings.encoder_job(cfg, "TC")
    assert tc["settings"] == settings.resolve_job(cfg, "table1", "TC", "CNN", cfg["table1"]["seeds"][0])["settings"]
    assert tc["extra"]["encoder"] == {"standardise": cfg["table1"]["net"]["standardise"], "train": {}}
    # ... which is Table 1's own first-seed run, so the pipeline copies that run rather than training it again
    assert [settings.encoder_from_table1(cfg, d) for d in ("P", "TC")] == [False, True]
    assert settings.encoder_datasets(cfg, from_table1=True) == ["TC"] and settings.encoder_datasets(cfg, False) == ["P"]
    run = f"{cfg['results']}/runs/table1/TC/CNN/seed{cfg['table1']['seeds'][0]}"
    assert settings.encoder_table1_files(cfg, "TC") == {"model": f"{run}/model.pt", "metrics": f"{run}/metrics.json"}


def test_an_unknown_key_in_the_encoders_training_settings_is_refused_by_name():
    from stn import config as stn_config

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["table5"]["encoder_training"]["P"]["train"] = {"lr_stepp": 900}
    with pytest.raises(stn_config.ConfigError, match=r"table5.encoder_training.P.train: unknown key\(s\) \['lr_stepp'\]"):
        stn_config.validate(cfg, ROOT / "workflow" / "schemas" / "config.schema.json")


def test_a_random_bank_is_a_count_of_patches():
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["table5"]["optimise"]["random_bank"] = 16
    validate(copy.deepcopy(cfg), SCHEMA)
    cfg["table5"]["optimise"]["random_bank"] = -1
    with pytest.raises(ConfigError, match=r"table5.optimise.random_bank: -1 is less than the minimum of 0"):
        validate(copy.deepcopy(cfg), SCHEMA)


def test_e_may_be_made_of_any_table1_data_sets_cnns_and_nothing_else():
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["table5"]["encoders"]["TC"] = {"P": 0.25, "TC": 1.0}  # the TC CNN sees each crop in a blank 60x60 canvas
    validate(copy.deepcopy(cfg), SCHEMA)
    cfg["table5"]["encoders"]["TC"] = {"SVHN64": 1.0}
    with pytest.raises(ConfigError, match=r"table5.encoders.TC: 'SVHN64' is not one of \['R', 'RTS', 'P', 'E', 'TC'\]"):
        validate(copy.deepcopy(cfg), SCHEMA)
    cfg["table5"]["encoders"]["TC"] = {"P": 0}
    with pytest.raises(ConfigError, match=r"table5.encoders.TC.P: 0 is less than or equal to the minimum of 0"):
        validate(cfg, SCHEMA)


def test_a_named_config_file_missing_a_key_is_refused_by_name(tmp_path):
    """--configfile is layered on config/config.yaml: a key missing from the user's file must not come from it."""
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    del cfg["table1"]["train"]["eval_every"]
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(partial),
                           "--config", f"results={tmp_path / 'r'}"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0
    assert f"{partial} is not a complete config on its own" in proc.stderr + proc.stdout
    assert "table1.train: 'eval_every' is a required property" in proc.stderr + proc.stdout
    ok = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "config/smoke.yaml",
                         "--config", f"results={tmp_path / 'r'}"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_results_that_is_a_file_or_read_only_is_named(tmp_path):
    import os

    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    (tmp_path / "afile").write_text("x")
    cfg["results"] = str(tmp_path / "afile")
    with pytest.raises(ConfigError, match="results: .*afile is a file, not a directory"):
        validate(cfg, SCHEMA)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cfg["results"] = str(locked)
    try:
        if os.access(locked, os.W_OK):  # root may write anywhere: nothing to check
            pytest.skip("this user can write a 0500 directory (root)")
        with pytest.raises(ConfigError, match="locked is not writable by this user"):
            validate(cfg, SCHEMA)
    finally:
        locked.chmod(0o700)


def test_yaml_errors_name_the_file_and_line_and_the_default_is_only_read_without_configfile(tmp_path):
    from stn.config import read_config, with_default

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nresults: [oops\ndevice: cpu\n")
    with pytest.raises(ConfigError, match=r'bad.yaml is not valid YAML: .*bad.yaml", line 3'):
        read_config(bad)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        read_config(tmp_path / "list.yaml")
    default = ROOT / "config" / "config.yaml"
    merged = with_default({"results": "/tmp/elsewhere", "table3": {"seeds": [7]}}, [], default)
    assert merged["results"] == "/tmp/elsewhere" and merged["table3"]["seeds"] == [7]
    assert merged["table3"]["models"] == read_config(default)["table3"]["models"]  # the rest from the default
    assert with_default({"name": "mine"}, ["mine.yaml"], default) == {"name": "mine"}  # a named file replaces it


def test_check_config_names_the_line_that_snakemake_does_not(tmp_path, capsys):
    """Snakemake reads a --configfile before the Snakefile and reports a YAML error without file or line;
    `stn check-config` (which the README points to) names both, and passes the shipped configs."""
    from stn.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nresults: [oops\ndevice: cpu\n")
    assert main(["check-config", str(bad), "--schema", str(SCHEMA)]) == 1
    assert re.search(r'stn check-config: error: .*bad.yaml is not valid YAML: .*bad.yaml", line 3', capsys.readouterr().err)
    assert main(["check-config", str(ROOT / "config" / "smoke.yaml"), str(ROOT / "config" / "config.yaml"), "--schema", str(SCHEMA)]) == 0
    partial = tmp_path / "partial.yaml"
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    del cfg["table1"]["train"]["eval_every"]
    partial.write_text(yaml.safe_dump(cfg))
    assert main(["check-config", str(partial), "--schema", str(SCHEMA)]) == 1
    assert "partial.yaml is not a complete config on its own" in capsys.readouterr().err
    assert main(["check-config", str(bad), "--schema", str(tmp_path / "none.json")]) == 1
    assert "run this from the repository's root or pass --schema" in capsys.readouterr().err


def test_an_override_of_a_data_set_the_table_does_not_train_is_named():
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    cfg["table1"]["train_overrides"] = [{"dataset": "E", "iterations": 3}]
    cfg["table1"]["datasets"] = [d for d in cfg["table1"]["datasets"] if d != "E"]
    with pytest.raises(ConfigError, match=r"table1.train_overrides names data set E, which table1 does not train"):
        validate(cfg, SCHEMA)


def test_snakemake_names_the_file_and_line_of_a_yaml_error_in_a_configfile(tmp_path):
    """Snakemake reads a --configfile before the Snakefile runs and on its own says only "Config file is not
    valid JSON or YAML"; the hook that ./setup.sh installs (stn/snakemake_errors.py) makes that error name
    the file, line and column, for the console script and for `python -m snakemake`."""
    from stn import snakemake_errors

    assert snakemake_errors.pth_path().read_text() == snakemake_errors.PTH_LINE, \
        "run ./setup.sh: it installs stn-snakemake-errors.pth into the environment"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nresults: [oops\ndevice: cpu\n")
    script = Path(sys.executable).with_name("snakemake")
    for command in ([str(script)], [sys.executable, "-m", "snakemake"]):
        proc = subprocess.run([*command, "-n", "--cores", "1", "--configfile", str(bad)], cwd=ROOT,
                              capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        assert re.search(rf'Config file {re.escape(str(bad))} is not valid YAML: .*bad.yaml", line 3, column \d+', out), out
        assert "snakemake_errors.py" not in out  # the error itself, re-raised: no traceback line of the hook
    proc = subprocess.run([str(script), "-n", "--cores", "1", "--configfile", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "STN_SNAKEMAKE_ERRORS": "0"})
    assert "Config file is not valid JSON or YAML" in proc.stdout + proc.stderr  # Snakemake's own, hook off


def test_the_snakemake_hook_wraps_only_the_yaml_error_and_only_in_snakemake(tmp_path):
    from snakemake.common import configfile
    from snakemake_interface_common.exceptions import WorkflowError

    from stn.snakemake_errors import naming_the_file, started_as_snakemake

    load = naming_the_file(getattr(configfile._load_configfile, "__wrapped__", configfile._load_configfile))
    bad = tmp_path / "tabs.yaml"
    bad.write_text("a:\n\tb: 1\n")
    with pytest.raises(WorkflowError, match=rf"Config file {re.escape(str(bad))} is not valid YAML: .*line 2"):
        load(bad)
    with pytest.raises(FileNotFoundError):  # other errors pass through as Snakemake raises them
        load(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("{not json")
    with pytest.raises(WorkflowError, match=rf"{re.escape(str(listing))} is not valid YAML: .*line 1"):
        load(listing)
    good = tmp_path / "good.yaml"
    good.write_text("a: {b: 1}\n")
    assert load(good) == {"a": {"b": 1}}
    assert started_as_snakemake(["/env/bin/python", "/env/bin/snakemake", "-n"])
    assert started_as_snakemake(["python3", "-X", "dev", "-m", "snakemake", "--cores", "1"])
    assert not started_as_snakemake(["python", "-m", "pytest", "snakemake"])
    assert not started_as_snakemake(["/env/bin/pip", "install", "snakemake"])


def test_stn_snakemake_hook_writes_and_removes_the_pth(tmp_path, monkeypatch, capsys):
    from stn import snakemake_errors
    from stn.cli import main

    pth = tmp_path / snakemake_errors.PTH_NAME
    monkeypatch.setattr(snakemake_errors, "pth_path", lambda: pth)
    assert main(["snakemake-hook"]) == 0 and pth.read_text() == snakemake_errors.PTH_LINE
    assert main(["snakemake-hook", "--remove"]) == 0 and not pth.exists()
    assert f"removed {pth}" in capsys.readouterr().out
