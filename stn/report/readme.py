"""Copy the generated tables of a finished run into the README, between two marker lines.

The README's results section is never typed by hand: `stn readme` replaces what lies between
`<!-- results:begin -->` and `<!-- results:end -->` with results/tables/*.md and a line of
timings read from the run's own files.
"""
from __future__ import annotations

import csv
from pathlib import Path

from ..io import read_json, write_text
from ..paper import registry
from ..paper.registry import EXPERIMENTS
from ..settings import TrainSettings

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
TABLES = list(EXPERIMENTS)


GAP = 120.0  # s: jobs further apart than this ran in different sittings (a partial rerun)


def job_intervals(results: Path) -> list[tuple[float, float, Path]]:
    """(start, end, file) of every job that recorded a Snakemake benchmark file (results/benchmarks/**.tsv):
    its `s` column is the job's wall time; it ended when its run's metrics.json says it `finished`, or, for
    other jobs and runs from before that was recorded, when the benchmark file was written (its mtime, which
    `snakemake --touch` or a copy of results/ moves)."""
    out = []
    results = Path(results)
    top = results / Path(registry.BENCHMARK_FILE).parent
    for path in sorted(top.rglob("*" + Path(registry.BENCHMARK_FILE).suffix)):
        with path.open() as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if rows and rows[0].get("s"):
            run = registry.run_of_benchmark(results, path)
            metrics = run / "metrics.json" if run else None
            finished = read_json(metrics).get("finished") if metrics and metrics.exists() else None
            end = float(finished) if finished else path.stat().st_mtime
            out.append((end - float(rows[0]["s"]), end, path))
    return out


def sittings(intervals: list[tuple[float, float, Path]]) -> list[tuple[float, float]]:
    """The stretches of time in which some job was running, jobs less than GAP apart joined.

    A job rerun later keeps only its last benchmark file, so its first run leaves a hole in its sitting.
    A gap between two stretches that a later stretch's longest job could have filled is taken for such a
    hole and joined (a 4-minute job rerun once split a 98-minute run into 22 and 76 minutes)."""
    merged: list[list[float]] = []
    for start, end, _ in sorted(intervals, key=lambda i: i[0]):
        if merged and start <= merged[-1][1] + GAP:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    longest = [max((b - a for a, b, _ in intervals if a >= merged[i][0]), default=0.0) for i in range(len(merged))]
    joined = merged[:1]
    for i in range(1, len(merged)):
        later = longest[i + 1] if i + 1 < len(merged) else 0.0  # the longest job of the stretches after this one
        if merged[i][0] - joined[-1][1] <= max(GAP, later):
            joined[-1][1] = max(joined[-1][1], merged[i][1])
        else:
            joined.append(merged[i])
    return [(a, b) for a, b in joined]


def run_timing(results: Path) -> str:
    """The run's wall time from its jobs' Snakemake benchmark files (the time some job was running: a run in
    one sitting says when Table 1's runs were done; a run assembled over several sittings, a part rerun later
    or tables run on different days, gives each sitting's time and the tables whose runs it ran), and the
    summed time of the training and optimisation jobs (benchmarks/<table>/*.tsv)."""
    results = Path(results)
    intervals = job_intervals(results)
    runs = [(a, b, path) for a, b, path in intervals if path.parent.name in TABLES]
    if not runs:
        raise FileNotFoundError(f"{results} holds no finished run (no benchmarks/<table>/*.tsv); "
                                f"run `snakemake --cores all` first")
    spans = sittings(intervals)
    wall = sum(b - a for a, b in spans)
    minutes = lambda seconds: f"{seconds / 60:.0f} min" if seconds >= 30 else "<1 min"  # noqa: E731
    if len(spans) == 1:
        table1 = [b for _, b, path in runs if path.parent.name == TABLES[0]]
        table1_text = f" (Table 1's runs done after {minutes(max(table1) - spans[0][0])})" if table1 else ""
        text = f"Wall time of this run: {minutes(wall)}{table1_text}"
    else:  # say what each sitting ran: a run assembled over several sittings is not timed as a whole
        parts = []
        for a, b in spans:
            ran = sorted({path.parent.name for s, _, path in runs if a <= s <= b}, key=TABLES.index)
            parts.append(f"{minutes(b - a)} (" + (f"runs of {', '.join(ran)}" if ran else "re-rendering") + ")")
        text = (f"Wall time of this run, in {len(spans)} sittings: {', '.join(parts)}; {minutes(wall)} with jobs "
                f"running in all")
    per_table = {name: sum(b - a for a, b, path in runs if path.parent.name == name) for name in TABLES}
    split = ", ".join(f"{name} {seconds / 60:.0f}" for name, seconds in per_table.items() if seconds)
    text += (f"; its training and optimisation jobs took {sum(per_table.values()) / 60:.0f} min summed over jobs "
             f"({split}).")
    speed = yardstick(results)
    return f"{text} {speed}" if speed else text


def yardstick(results: Path) -> str:
    """How fast this machine trains, to set the wall time beside another machine's: the mean seconds per 100
    steps of registry.YARDSTICK's runs (training and validation, from their metrics.json), with the arithmetic of
    their steps (fp32 or bf16, from their job.json) where all agree; "" without such runs."""
    experiment, dataset, model = registry.YARDSTICK
    rates, precisions, pattern = [], set(), registry.run_dir(results, experiment, dataset, model, "*")
    for path in sorted(pattern.parent.glob(f"{pattern.name}/metrics.json")):
        metrics = read_json(path)
        if metrics.get("iterations") and metrics.get("seconds"):
            rates.append(100 * metrics["seconds"] / metrics["iterations"])
            job = path.with_name("job.json")  # its step arithmetic: a bf16 step is ~2x an fp32 one's speed
            precisions.add(read_json(job).get("settings", {}).get("precision", TrainSettings.precision)
                           if job.exists() else None)
    if not rates:
        return ""
    arithmetic = f" in {precisions.pop()}" if len(precisions) == 1 and None not in precisions else ""
    return (f"Speed of this machine: {experiment}'s {model} on {dataset} trained at {sum(rates) / len(rates):.1f} s "
            f"per 100 steps{arithmetic} (mean of {len(rates)} run{'s' if len(rates) > 1 else ''}).")


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
