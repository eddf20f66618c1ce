"""The paper's reported numbers (transcribed in results.yaml) and its training protocols (appendix A)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

# Appendix A.4: the distorted-MNIST protocol. Config values are compared against these to
# state in every caption what a run changed.
TABLE1_PROTOCOL = {
    "iterations": 150_000,
    "batch_size": 256,
    "lr": 0.01,
    "momentum": 0.0,
    "optimizer": "sgd",
    "lr_step": 50_000,
    "lr_gamma": 0.1,
    "weight_decay": 0.0,
    "seeds": 3,
    "param_target": 400_000,
}


@lru_cache(maxsize=None)
def results() -> dict:
    return yaml.safe_load((Path(__file__).parent / "results.yaml").read_text())


def paper_number(table: str, model: str, dataset: str) -> tuple[float | None, bool]:
    """The paper's number for a cell of a classification table ("table1" or "table4")."""
    if table == "table1":
        return table1_paper(model, dataset)
    if table == "table4":
        return results()["table4_mnist_addition"]["rows"].get(display_name(model)), False
    if table == "table5":
        return results()["table5_colocalisation"]["rows"].get(int(model), {}).get(dataset), False
    raise KeyError(f"no paper numbers for {table!r}")


def display_name(model: str) -> str:
    """Config name -> the paper's row name ("ST-CNN-Aff" -> "ST-CNN Aff")."""
    for t in ("Aff", "Proj", "TPS"):
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
