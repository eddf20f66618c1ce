"""Copy the generated tables of a finished run into the README, between two marker lines.

The README's results section is never typed by hand: `stn readme` replaces what lies between
`<!-- results:begin -->` and `<!-- results:end -->` with results/tables/*.md and a line of
timings read from the run's own files.
"""
from __future__ import annotations

from pathlib import Path

from ..io import read_json, write_text
from ..paper.registry import EXPERIMENTS, RUN_DIR

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
TABLES = list(EXPERIMENTS)


def run_timing(results: Path) -> str:
    """Wall time from the first data file to the last run's metrics.json (file times: a table re-rendered
    later does not stretch it), Table 1's alone, and the summed job times."""
    results = Path(results)
    first = results / "data" / "mnist.npz"
    runs = results / RUN_DIR.split("/", 1)[0]
    metrics = list(runs.rglob("metrics.json"))
    if not first.exists() or not metrics:
        raise FileNotFoundError(f"{results} holds no finished run (need data/mnist.npz and finished runs); "
                                f"run `snakemake --cores all` first")
    start = first.stat().st_mtime
    wall = max(p.stat().st_mtime for p in metrics) - start
    job_seconds = sum(read_json(p).get("seconds", 0.0) or 0.0 for p in metrics)
    table1 = [p.stat().st_mtime for p in (runs / TABLES[0]).rglob("metrics.json")]
    table1_text = f" (Table 1 alone: {(max(table1) - start) / 60:.0f} min)" if table1 else ""
    return (f"Wall time of this run, from the MNIST download to the last run's end: {wall / 60:.0f} min{table1_text}; "
            f"training and optimisation jobs took {job_seconds / 60:.0f} min summed over jobs.")


def generated_section(results: Path, command: str) -> str:
    results = Path(results)
    parts = [f"Produced by `{command}`, copied from `{results}/tables/*.md` by `stn readme`.", "",
             run_timing(results)]
    for name in TABLES:
        for stem in [name, *(f"{name}_{extra}" for extra in EXPERIMENTS[name].extra_tables)]:
            path = results / "tables" / f"{stem}.md"
            if path.exists():
                parts += ["", path.read_text().strip()]
    return "\n".join(parts)


def update_readme(readme: Path, results: Path, command: str) -> None:
    text = Path(readme).read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{readme} must contain the lines {BEGIN} and {END}, once each and in that order")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    new = f"{head}{BEGIN}\n{generated_section(results, command)}\n{END}{tail}"
    write_text(readme, new)
