"""Tables rendered from the runs' metrics.json files, our numbers beside the paper's."""
from __future__ import annotations

import csv
import html
import io
import statistics
from pathlib import Path
from typing import Callable

from ..io import write_text
from ..paper import TABLE1_PROTOCOL, display_name, paper_number, registry


def summarize(records: list[dict], key: str = "test_error") -> dict[tuple[str, str], tuple[float, float | None, int]]:
    groups: dict[tuple[str, str], list[float]] = {}
    for r in records:
        groups.setdefault((r["model"], r["dataset"]), []).append(r[key])
    out = {}
    for k, v in groups.items():
        out[k] = (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))
    return out


def protocol_changes(settings: dict, seeds: int, param_target: int, protocol: dict = TABLE1_PROTOCOL) -> list[str]:
    """What a config changed against the paper's protocol, as 'key ours (paper theirs)' phrases."""
    ours = {**{k: settings.get(k) for k in protocol if k in settings}, "seeds": seeds, "param_target": param_target}
    return [f"{k} {ours[k]} (paper {protocol[k]})" for k in protocol if k in ours and ours[k] != protocol[k]]


def override_phrases(overrides: list[dict], datasets: list[str]) -> list[str]:
    """'R: iterations 2600, loc_lr_mult 1.0' (or 'CNN: ...', 'RTS/CNN: ...') for every override of
    the table's data sets, each {"select": {dataset and/or model}, "settings": {...}}."""
    return ["/".join(o["select"].values()) + ": " + ", ".join(f"{k} {v}" for k, v in sorted(o["settings"].items()))
            for o in overrides if o["settings"] and o["select"].get("dataset") in (None, *datasets)]


def protocol_caption(title: str, config_name: str, settings: dict, seeds: int, param_target: int,
                     overrides: list[dict], datasets: list[str], protocol: dict = TABLE1_PROTOCOL) -> str:
    """"<title>, <config> config. Changed from the paper's protocol: ... . <override phrases>." """
    changes = protocol_changes(settings, seeds, param_target, protocol)
    return (f"{title}, {config_name} config. "
            + ("Changed from the paper's protocol: " + ", ".join(changes) + "." if changes else "The paper's protocol.")
            + "".join(f" {phrase}." for phrase in override_phrases(overrides, datasets)))


def _ours(stats) -> str:
    if not stats:
        return "—"
    mean, std, n = stats
    return f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def _theirs(paper, from_text) -> str:
    return "—" if paper is None else f"{paper:.1f}{'†' if from_text else ''}"


def render_table(records: list[dict], datasets: list[str], models: list[str], caption: str, out_dir: Path,
                 name: str, paper: Callable[[str, str], tuple[float | None, bool]] | None = None) -> dict[str, Path]:
    """results/tables/<name>.{csv,md,tex,html} for registered experiment `name`: rows = models,
    columns = data sets, 'ours (paper)'; the metric and row label come from the registry.

    A synthetic stand-in's column (registry Dataset.stands_in_for) holds our number alone; the paper's
    numbers for the data set it stands in for get their own, labelled columns."""
    e = registry.experiment(name)
    paper = paper or (lambda m, d: paper_number(name, m, d))
    stats = summarize(records, e.metric)
    standin = {d: registry.DATASETS[d].stands_in_for for d in datasets
               if d in registry.DATASETS and registry.DATASETS[d].stands_in_for}
    out_dir = Path(out_dir)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "dataset", "ours_mean", "ours_std", "seeds", "paper", "paper_from_text"]
               + (["stands_in_for", "paper_of_original"] if standin else []))
    for m in models:
        for d in datasets:
            s = stats.get((m, d))
            number, from_text = paper(m, d)
            shown = "" if number is None or d in standin else number
            w.writerow([m, d, f"{s[0]:.4f}" if s else "", f"{s[1]:.4f}" if s and s[1] is not None else "",
                        s[2] if s else 0, shown, int(from_text)]
                       + ([standin.get(d, ""), "" if number is None or d not in standin else number] if standin else []))
    csv_path = out_dir / f"{name}.csv"
    write_text(csv_path, buf.getvalue())

    header = [e.row_label, *datasets, *(f"paper: {o}" for o in standin.values())]
    rows = []
    for m in models:
        cells = [_ours(stats.get((m, d))) if d in standin else f"{_ours(stats.get((m, d)))} ({_theirs(*paper(m, d))})"
                 for d in datasets]
        rows.append([display_name(m), *cells, *(_theirs(*paper(m, d)) for d in standin)])
    if standin:
        notes = [f"Cells: our {e.metric_words} in %, mean ± std over seeds, on synthetic stand-ins built from MNIST "
                 f"({', '.join(f'{d} for {o}' for d, o in standin.items())}). The paper's numbers are on the real data, "
                 f"in their own columns for reference: they are not comparable with ours."]
    else:
        notes = [f"Cells: our {e.metric_words} in %, mean ± std over seeds (the paper's number in parentheses)."]
    if any(paper(m, d)[1] for m in models for d in datasets):
        notes.append("† TC: the paper reports one ST-FCN and one ST-CNN number in the text without naming the transform.")

    md = [f"**{caption}**", "", "| " + " | ".join(header) + " |", "|---|" + "---|" * (len(header) - 1)]
    md += ["| " + " | ".join(r) + " |" for r in rows] + [""] + notes
    md_path = out_dir / f"{name}.md"
    write_text(md_path, "\n".join(md) + "\n")

    tex = ["\\begin{table}", "\\centering", "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}", "\\hline",
           " & ".join(_tex_escape(h) for h in header) + " \\\\", "\\hline"]
    for r in rows:
        cells = [c.replace("±", "$\\pm$").replace("†", "$^\\dagger$").replace("—", "--") for c in r[1:]]
        tex.append(f"{r[0]} & " + " & ".join(cells) + " \\\\")
    tex += ["\\hline", "\\end{tabular}", f"\\caption{{{_tex_escape(caption)}}}", "\\end{table}"]
    tex_path = out_dir / f"{name}.tex"
    write_text(tex_path, "\n".join(tex) + "\n")

    body = "".join("<tr><th>" + html.escape(r[0]) + "</th>" + "".join(f"<td>{html.escape(c)}</td>" for c in r[1:])
                   + "</tr>\n" for r in rows)
    page = (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(name)}</title>\n<style>{_CSS}</style>"
            f"</head><body>\n<table>\n<caption>{html.escape(caption)}</caption>\n<thead><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead>\n<tbody>\n" + body
            + "</tbody>\n</table>\n" + "".join(f"<p>{html.escape(n)}</p>\n" for n in notes) + "</body></html>\n")
    html_path = out_dir / f"{name}.html"
    write_text(html_path, page)
    return {"csv": csv_path, "md": md_path, "tex": tex_path, "html": html_path}


_CSS = ("body{font-family:sans-serif;margin:1em} table{border-collapse:collapse} caption{caption-side:top;text-align:left;"
        "max-width:60em;padding-bottom:.5em;font-weight:bold} th,td{border:1px solid #bbb;padding:.25em .6em;text-align:right}"
        " th:first-child{text-align:left} p{color:#444;font-size:90%;max-width:60em}")


def _tex_escape(s: str) -> str:
    for a, b in [("%", "\\%"), ("_", "\\_"), ("&", "\\&"), ("#", "\\#"), ("≈", "$\\approx$"), ("±", "$\\pm$")]:
        s = s.replace(a, b)
    return s


def net_phrase(net: dict) -> str:
    """The caption's words for a classification table's `net` where it differs from PyTorch's defaults."""
    words = (["He initialisation"] if net["init"] == "he" else []) + (
        ["standardised inputs to the classifier and localisation nets"] if net["standardise"] else [])
    return f" {', '.join(words).capitalize()} (the paper names neither)." if words else ""


def render_transform_table(records: list[dict], datasets: list[str], models: list[str], caption: str, out_dir: Path,
                           name: str) -> Path:
    """results/tables/<name>_transforms.md: per affine-ST model and data set, the mean zoom √|det A| and the
    mean translation |t| of its transformers over the test set (means over seeds), from the runs' metrics."""
    affine = [r for r in records if "zoom" in r]
    zoom, shift = summarize(affine, "zoom"), summarize(affine, "shift")
    rows = [m for m in models if any((m, d) in zoom for d in datasets)]
    lines = [f"**{caption}**", "", "| Model | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for m in rows:
        cells = [f"{zoom[m, d][0]:.2f} / {shift[m, d][0]:.2f}" if (m, d) in zoom else "—" for d in datasets]
        lines.append(f"| {display_name(m)} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: zoom / shift. Zoom is √|det A| of the affine transform from output to input coordinates "
              "(1 = the identity's scale; below 1 the transformer zooms in; a window that frames a 28 px digit exactly "
              "has 28/42 ≈ 0.67 on RTS's 42 px canvas at scale 1 and 28/60 ≈ 0.47 on TC's 60 px canvas). Shift is the "
              "length of the translation in half-canvas units (0 = centred)."]
    path = Path(out_dir) / f"{name}_transforms.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def render_param_table(table: dict, models: list[str], out_dir: Path, name: str) -> Path:
    """Markdown table of parameter counts and widths per data set (out-of-range widths marked *)."""
    datasets = list(table)
    lines = [f"**Learnable parameters per model (target per data set in the header; * = width outside the paper's range)**", "",
             "| Model | " + " | ".join(f"{d} (target {table[d]['target']:,})" for d in datasets) + " |",
             "|---|" + "---|" * len(datasets)]
    for m in models:
        cells = []
        for d in datasets:
            e = table[d]["models"][m]
            widths = "/".join(str(v) for v in e["widths"].values())
            cells.append(f"{e['params']:,} [{widths}]{'' if e['in_paper_range'] else '*'}")
        lines.append(f"| {display_name(m)} | " + " | ".join(cells) + " |")
    lines += ["", "Widths in brackets: hidden units (FCN) or conv1/conv2 filters (CNN)."]
    net = next(iter(table.values())).get("net")  # one per table: `stn params` builds every data set with it
    if net:
        lines.append(f"Initialisation: {net['init']}; inputs standardised: {'yes' if net['standardise'] else 'no'}.")
    path = Path(out_dir) / f"{name}.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def relative_spread(table: dict) -> float:
    """Largest relative deviation of any model's count from its data set's target."""
    return max(abs(e["params"] - t["target"]) / t["target"] for t in table.values() for e in t["models"].values())

