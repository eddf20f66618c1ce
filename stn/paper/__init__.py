"""The paper's reported numbers (transcribed in results.yaml) and its experiments (`registry`)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

from .registry import DATASETS, EXPERIMENTS, MNIST_PROTOCOL, RUN_DIR, experiment, run_dir  # noqa: F401

# Appendix A.4's protocol; config values are compared against it to state in every caption what a run changed.
TABLE1_PROTOCOL = MNIST_PROTOCOL


@lru_cache(maxsize=None)
def results() -> dict:
    return yaml.safe_load((Path(__file__).parent / "results.yaml").read_text())


def paper_number(table: str, model: str, dataset: str) -> tuple[float | None, bool]:
    """The paper's number for a cell (row `model`, column `dataset`) of a registered experiment's
    table, and whether it comes from the text rather than the table; (None, False) where the paper
    has none."""
    if table == "table1":
        return table1_paper(model, dataset)
    e = experiment(table)
    rows = results().get(e.paper, {}).get("rows", {})
    name = e.paper_rows.get(model, display_name(model))
    column = DATASETS[dataset].paper_column if dataset in DATASETS and DATASETS[dataset].paper_column else dataset
    if f"{name} {column}" in rows:  # Table 3 names the input size in the row: "2xST-CNN 448px"
        return rows[f"{name} {column}"], False
    row = rows.get(name, rows.get(int(model)) if str(model).isdigit() else None)
    return (row.get(column) if isinstance(row, dict) else row), False


def display_name(model: str) -> str:
    """Config name -> the paper's row name ("ST-CNN-Aff" -> "ST-CNN Aff")."""
    for t in ("Aff", "Proj", "TPS", "Single", "Multi"):
        model = model.replace(f"-{t}", f" {t}")
    return model


def table1_paper(model: str, dataset: str) -> tuple[float | None, bool]:
    """Paper error for (model, dataset) and whether it comes from the text rather than the table
    (TC: one unnamed ST variant per family)."""
    t = results()["table1_distorted_mnist"]
    row = t["rows"].get(display_name(model), {})
    if dataset in row:
        return row[dataset], False
    if dataset == "TC":
        family = "ST-CNN" if model.startswith("ST-CNN") else "ST-FCN" if model.startswith("ST-FCN") else None
        if family:
            return t["tc_text"][family], True
    return None, False
