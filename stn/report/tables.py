"""Tables rendered from the runs' metrics.json files, our numbers beside the paper's."""
from __future__ import annotations

import csv
import html
import itertools
import statistics
from collections import Counter
from pathlib import Path
from typing import Callable

import pandas as pd

from ..io import write_text
from ..paper import TABLE1_PROTOCOL, display_name, paper_number, registry
from ..settings import LATE, STILL_LEARNING


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
    learning = still_learning(records)
    odd, code_note = mixed_code(records)
    mark = lambda m, d: ("‡" if (m, d) in learning else "") + ("§" if (m, d) in odd else "")  # noqa: E731
    cell_versions = {}
    for r in records:
        cell_versions.setdefault((r["model"], r["dataset"]), set()).add(version_of(r))
    csv_rows = []
    for m in models:
        for d in datasets:
            s = stats.get((m, d))
            number, from_text = paper(m, d)
            csv_rows.append({"model": m, "dataset": d, "ours_mean": f"{s[0]:.4f}" if s else None,
                             "ours_std": f"{s[1]:.4f}" if s and s[1] is not None else None, "seeds": s[2] if s else 0,
                             "paper": None if d in standin else number, "paper_from_text": int(from_text),
                             "still_learning": int((m, d) in learning),
                             "code_versions": " ".join(sorted(cell_versions.get((m, d), ()))),
                             **({"stands_in_for": standin.get(d, ""),
                                 "paper_of_original": number if d in standin else None} if standin else {})})
    csv_path = out_dir / f"{name}.csv"
    write_text(csv_path, pd.DataFrame(csv_rows, dtype=object).to_csv(index=False, lineterminator="\n"))

    header = [e.row_label, *datasets, *(f"paper: {o}" for o in standin.values())]
    rows = []
    for m in models:
        ours = lambda d: _ours(stats.get((m, d))) + mark(m, d)  # noqa: E731
        cells = [ours(d) if d in standin else f"{ours(d)} ({_theirs(*paper(m, d))})" for d in datasets]
        rows.append([display_name(m), *cells, *(_theirs(*paper(m, d)) for d in standin)])
    if standin:
        notes = [f"Cells: our {e.metric_words} in %, mean ± std over seeds, on synthetic stand-ins built from MNIST "
                 f"({', '.join(f'{d} for {o}' for d, o in standin.items())}). The paper's numbers are on the real data, "
                 f"in their own columns for reference: they are not comparable with ours."]
    else:
        notes = [f"Cells: our {e.metric_words} in %, mean ± std over seeds (the paper's number in parentheses)."]
    if learning:
        notes.append(f"‡ Still learning: in at least one seed the validation error fell by more than {STILL_LEARNING:g} "
                     f"points over the last {LATE:.0%} of the run's steps (`late_fall` in its metrics.json), so the "
                     "number is not where the run was heading.")
    if code_note:
        notes.append(code_note)
    if any(paper(m, d)[1] for m in models for d in datasets):
        notes.append("† TC: the paper reports one ST-FCN and one ST-CNN number in the text without naming the transform.")
    if order := order_note(beside_paper(csv_rows), name, e.column_label):
        notes.append(order)

    md_path = out_dir / f"{name}.md"
    write_text(md_path, f"**{caption}**\n\n" + markdown_table(header, rows) + "\n" + "\n".join(notes) + "\n")
    frame = pd.DataFrame(rows, columns=header)
    tex_path = out_dir / f"{name}.tex"
    write_text(tex_path, latex_table(frame, caption))
    html_path = out_dir / f"{name}.html"
    # the table's own name as the element ids' prefix (Styler's default is a random one): the same runs give the same bytes
    table = frame.style.set_uuid(name).hide(axis="index").format(escape="html").format_index(escape="html", axis=1) \
        .set_caption(html.escape(caption)).to_html(doctype_html=False)
    write_text(html_path, f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(name)}</title>\n"
                          f"<style>{_CSS}</style></head><body>\n{table}\n"
                          + "".join(f"<p>{html.escape(n)}</p>\n" for n in notes) + "</body></html>\n")
    return {"csv": csv_path, "md": md_path, "tex": tex_path, "html": html_path}


def render_versus_paper(results: Path, name: str) -> list[Path]:
    """registry.VERSUS_PAPER for table `name`, drawn from its rendered CSV (results/tables/<name>.csv): every
    cell with our mean and a comparable paper number (none on a stand-in: its `paper` column is empty), one
    panel per data set; [] where there is no such cell (registry.paper_cells says which tables have them)."""
    e = registry.experiment(name)
    with open(Path(results) / "tables" / f"{name}.csv", newline="") as f:
        beside = beside_paper(list(csv.DictReader(f)))
    if not beside:
        return []
    from .figures import versus_paper

    return [versus_paper(beside, Path(results) / registry.VERSUS_PAPER.format(name=name), e.title, e.metric_words)]


def beside_paper(rows: list[dict]) -> dict[str, list[tuple[str, float, float | None, float]]]:
    """Data set -> (row label, our mean, our std or None, the paper's number) of every cell of a table's CSV rows
    (as `render_table` writes them, or as csv.DictReader reads them back) with both our mean and a paper number
    (none on a stand-in: its `paper` column is empty)."""
    beside: dict[str, list[tuple]] = {}
    for r in rows:
        if r["ours_mean"] in (None, "") or r["paper"] in (None, ""):
            continue
        std = None if r["ours_std"] in (None, "") else float(r["ours_std"])
        beside.setdefault(r["dataset"], []).append(
            (display_name(r["model"]), float(r["ours_mean"]), std, float(r["paper"])))
    return beside


def ranked_alike(cells: list[tuple[float, float]]) -> tuple[int, int]:
    """Of the pairs of cells (ours, the paper's) whose paper numbers differ, (how many ours order the same way,
    how many there are): 1.2 < 3.4 in the paper and 2.0 < 5.1 here is one pair in the paper's order; a tie of
    ours is not."""
    pairs = [(a, b) for a, b in itertools.combinations(cells, 2) if a[1] != b[1]]
    return sum((a[0] - b[0]) * (a[1] - b[1]) > 0 for a, b in pairs), len(pairs)


def order_note(beside: dict[str, list[tuple]], name: str, column: str) -> str | None:
    """How far each column of table `name` orders its rows as the paper does (`ranked_alike` per column of
    `beside`: data set -> (row, our mean, our std, the paper's number) for every cell with both); None with no
    pair to compare."""
    counts = {d: ranked_alike([(c[1], c[3]) for c in cells]) for d, cells in beside.items()}
    counts = {d: n for d, n in counts.items() if n[1]}
    if not counts:
        return None
    same, total = (sum(n[i] for n in counts.values()) for i in (0, 1))
    return (f"Order: of the {total} pairs of cells in one {column} whose paper numbers differ, ours rank {same} the "
            f"same way ({', '.join(f'{d} {a}/{b}' for d, (a, b) in counts.items())}; "
            f"`{registry.VERSUS_PAPER.format(name=name)}` draws them).")


UNRECORDED = "unrecorded"  # a run from before metrics.json recorded its code_version


def version_of(record: dict) -> str:
    """A run's code_version (stn.experiments.code_version), or UNRECORDED."""
    return record.get("code_version") or UNRECORDED


def mixed_code(records: list[dict]) -> tuple[set[tuple[str, str]], str | None]:
    """Whether a table's runs come from more than one version of the library's code (`code_version` in their
    metrics.json; stn.experiments.code_version): the (model, data set) cells holding a run of any version but the
    most common one, and a note naming every version with its number of runs. Runs of one version only: (set(),
    None). Snakemake reruns a job when its config changes, not when the code does, so a results directory can hold
    runs of several versions; determinism holds within a version, not across versions."""
    counts = Counter(map(version_of, records))
    if len(counts) < 2:
        return set(), None
    main = max(counts, key=lambda v: (counts[v], v != UNRECORDED))
    cells = {(r["model"], r["dataset"]) for r in records if version_of(r) != main}
    names = ", ".join(f"{'from before versions were recorded' if v == UNRECORDED else v}: {n} run{'s' * (n > 1)}"
                      for v, n in counts.most_common())
    return cells, (f"§ Mixed code: this table's runs come from {len(counts)} versions of the stn library ({names}); "
                   "cells marked § hold runs not of the most common one. Runs of different versions can differ with "
                   "the same seed: rerun those cells (`snakemake --forcerun` with their runs' metrics.json) to "
                   "compare like with like.")


def still_learning(records: list[dict]) -> set[tuple[str, str]]:
    """(model, data set) of every cell with a run whose validation error fell by more than STILL_LEARNING points
    over its last LATE of steps (runs from before `late_fall` was recorded count as settled)."""
    return {(r["model"], r["dataset"]) for r in records if (r.get("late_fall") or 0.0) > STILL_LEARNING}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A pipe table, one line per row. Kept by hand rather than DataFrame.to_markdown: tabulate pads every cell
    to its column's width, so one wider number would rewrite every line of the README's copy of the table."""
    return "\n".join(["| " + " | ".join(header) + " |", "|---|" + "---|" * (len(header) - 1),
                      *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"


_TEX_SYMBOLS = [("±", "$\\pm$"), ("†", "$^\\dagger$"), ("‡", "$^\\ddagger$"), ("§", "\\S{}"),
                ("≈", "$\\approx$"), ("—", "--"), ("×", "$\\times$"), ("√", "$\\surd$")]


def _tex_symbols(s: str) -> str:
    for a, b in _TEX_SYMBOLS:
        s = s.replace(a, b)
    return s


_TEX_SPECIAL = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_",
                "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}"}


def tex_escape(s: str) -> str:
    """Text made safe for LaTeX: its ten special characters, as Styler.format(escape="latex") escapes cells (by
    hand here because Styler leaves a caption as given), then the symbols the tables use."""
    return _tex_symbols("".join(_TEX_SPECIAL.get(ch, ch) for ch in s))


def latex_table(frame: pd.DataFrame, caption: str) -> str:
    """A table float (pandas Styler.to_latex: escaped cells, headers and caption; its rules need
    \\usepackage{booktabs})."""
    sty = frame.style.hide(axis="index").format(_tex_symbols, escape="latex") \
        .format_index(_tex_symbols, escape="latex", axis=1)
    return sty.to_latex(caption=tex_escape(caption), hrules=True, position_float="centering",
                        column_format="l" + "c" * (frame.shape[1] - 1), environment="table")


_CSS = ("body{font-family:sans-serif;margin:1em} table{border-collapse:collapse} caption{caption-side:top;text-align:left;"
        "max-width:60em;padding-bottom:.5em;font-weight:bold} th,td{border:1px solid #bbb;padding:.25em .6em;text-align:right}"
        " th:first-child{text-align:left} p{color:#444;font-size:90%;max-width:60em}")


def net_phrase(net: dict) -> str:
    """The caption's words for a classification table's `net` where it differs from PyTorch's defaults."""
    words = (["He initialisation"] if net["init"] == "he" else []) + (
        ["standardised inputs to the classifier and localisation nets"] if net["standardise"] else [])
    return f" {', '.join(words).capitalize()} (the paper names neither)." if words else ""


def render_transform_table(records: list[dict], datasets: list[str], models: list[str], caption: str, out_dir: Path,
                           name: str, frame: str) -> Path:
    """results/tables/<name>_transforms.md: per affine-ST model and data set, the mean zoom √|det A| and the
    mean translation |t| of its transformers over the test set (means over seeds), from the runs' metrics.
    `frame` completes the note's sentence "a window that frames ... exactly has": the zoom that would frame
    the object on each data set, so a reader can tell a transformer that zooms in from one that stays put."""
    affine = [r for r in records if "zoom" in r]
    zoom, shift = summarize(affine, "zoom"), summarize(affine, "shift")
    start = {(r["model"], r["dataset"]): r["start_zoom"] for r in affine if "start_zoom" in r}
    rows = [m for m in models if any((m, d) in zoom for d in datasets)]

    def cell(m: str, d: str) -> str:
        if (m, d) not in zoom:
            return "—"
        return f"{zoom[m, d][0]:.2f} / {shift[m, d][0]:.2f}" + (f" (from {start[m, d]:.2f})" if (m, d) in start else "")

    cells = [[display_name(m), *(cell(m, d) for d in datasets)] for m in rows]
    lines = [f"**{caption}**", "", markdown_table(["Model", *datasets], cells)]
    lines += ["Cells: zoom / shift. Zoom is √|det A| of the affine transform from output to input coordinates "
              f"(1 = the identity's scale; below 1 the transformer zooms in; a window that frames {frame}). Shift is "
              "the length of the translation in half-canvas units (0 = centred)."
              + (" (from s): the run's transformers started at zoom s (`start_zoom`), not at the identity." if start else "")]
    path = Path(out_dir) / f"{name}_transforms.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


HELD = 0.5  # a transformer holds a channel whose content moves less than this fraction of the input's


def held_channels(focus: dict[str, list[float]]) -> dict[str, int | None]:
    """Per transformer ("ST1", ...), the 0-based channel it holds in place (`channel_focus`): the one whose centroid
    spread is smallest, if below HELD times that channel's spread in the input; else None."""
    held = {}
    for name, spreads in focus.items():
        if name == "input":
            continue
        j = min(range(len(spreads)), key=spreads.__getitem__)
        held[name] = j if spreads[j] < HELD * focus["input"][j] else None
    return held


def render_focus_table(focus: dict[str, dict[str, list[float]]], caption: str, out_dir: Path, name: str) -> Path:
    """results/tables/<name>_focus.md: per model with parallel transformers ({model: `channel_focus`}), how much
    each channel's content moves in the input and in each transformer's output, and which channel each holds."""
    path = Path(out_dir) / f"{name}_focus.md"
    if not focus:
        write_text(path, f"**{caption}**\n\nNo model of this config has parallel transformers.\n")
        return path
    columns = list(next(iter(focus.values())))
    cells = []
    for model, f in focus.items():
        held = held_channels(f)
        words = ", ".join(f"{st}: {'none' if j is None else f'ch{j + 1}'}" for st, j in held.items())
        cells.append([display_name(model), *(" / ".join(f"{v:.1f}" for v in f[c]) for c in columns), words])
    channels = len(next(iter(focus.values()))["input"])
    lines = [f"**{caption}**", "", markdown_table(["Model", *columns, "held in place"], cells)]
    lines += [f"Cells: {' / '.join(f'ch{j + 1}' for j in range(channels))}, the RMS distance in pixels of a channel's "
              f"ink centroid from its mean over the test images, in the input and in each transformer's output. A "
              f"transformer holds a channel (last column) whose content moves less than {HELD:g}× as much as in the "
              f"input: it has taken that digit and puts it in one place, as the paper's transformers \"co-adapt to "
              f"focus on a single channel each\"."]
    write_text(path, "\n".join(lines) + "\n")
    return path


def render_param_table(table: dict, models: list[str], out_dir: Path, name: str) -> Path:
    """Markdown table of parameter counts and widths per data set (out-of-range widths marked *)."""
    datasets = list(table)

    def cell(e: dict) -> str:
        return f"{e['params']:,} [{'/'.join(str(v) for v in e['widths'].values())}]{'' if e['in_paper_range'] else '*'}"

    rows = [[display_name(m), *(cell(table[d]["models"][m]) for d in datasets)] for m in models]
    lines = [f"**Learnable parameters per model (target per data set in the header; * = width outside the paper's range)**", "",
             markdown_table(["Model", *(f"{d} (target {table[d]['target']:,})" for d in datasets)], rows)]
    lines += ["Widths in brackets: hidden units (FCN) or conv1/conv2 filters (CNN)."]
    net = next(iter(table.values())).get("net")  # one per table: `stn params` builds every data set with it
    if net:
        lines.append(f"Initialisation: {net['init']}; inputs standardised: {'yes' if net['standardise'] else 'no'}.")
    path = Path(out_dir) / f"{name}.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def relative_spread(table: dict) -> float:
    """Largest relative deviation of any model's count from its data set's target."""
    return max(abs(e["params"] - t["target"]) / t["target"] for t in table.values() for e in t["models"].values())

