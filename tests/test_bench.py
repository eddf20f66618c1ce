"""The benchmark command's output (what it prints, not how fast anything is)."""
import re

import pytest
import torch

from stn import bench


def test_time_method_reports_the_fastest_call_and_the_median(monkeypatch):
    ticks = iter([-9.0, -1.0, 0.0, 5.0, 10.0, 11.0, 20.0, 23.0, 30.0, 32.0])  # warm-up, then calls of 5, 1, 3 and 2 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    case = bench.Case(2, 1, (4, 4), (4, 4))
    fastest, median = bench.time_method(bench._baseline(case), case, bench.torch.device("cpu"), False, repeats=4)
    assert (fastest, median) == (1.0, 2.5)


def test_paired_speedup_is_the_median_of_back_to_back_ratios_in_alternating_order(monkeypatch):
    calls = []  # which method each timed call ran
    base = lambda x, theta: calls.append("base") or x * 1  # noqa: E731
    method = lambda x, theta: calls.append("method") or x * 1  # noqa: E731
    # per round (base, method) seconds: (4, 1), (2, 1), (9, 3); a round's calls come in alternating order
    durations = iter([4.0, 1.0, 1.0, 2.0, 9.0, 3.0])  # in call order: round 2 times the method first

    def fake_call_times(fn, device, repeats, warmup=2):
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            fn()
            out.append(next(durations))
        return 0.0, out
    monkeypatch.setattr(bench, "call_times", fake_call_times)
    case = bench.Case(2, 1, (4, 4), (4, 4))
    ratio = bench.paired_speedup(base, method, case, torch.device("cpu"), repeats=3)
    assert ratio == 3.0  # median of 4/1, 2/1 and 9/3
    assert calls[:4] == ["base", "base", "method", "method"]  # two warm-up calls each
    assert calls[4:] == ["base", "method", "method", "base", "base", "method"]


def test_sampler_benchmark_prints_every_method_with_a_ratio_against_the_baseline(capsys):
    assert bench.main(["sampler", "--device", "cpu", "--part", "step", "--cases", "0", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "fastest of 2 calls" in out
    rows = [line for line in out.splitlines() if line.startswith("256x1x42x42->42x42")]
    methods = [re.split(r"\s{2,}", r)[1] for r in rows]
    assert methods[0] == "torch affine_grid+grid_sample"
    assert "stn reference" in methods
    baseline = rows[0].split()
    assert baseline[-8] == baseline[-6] == baseline[-4] == "1.00"  # the baseline's own ratios (fwd, fwd+bwd, paired)
    assert all(float(r.split()[-4]) > 0 for r in rows)
    assert all(re.search(r"~[\d.]+[sm]$", r) for r in rows)  # the time left, last
    assert "% copy = fwd+bwd bandwidth against a copy's" in out


def test_batch_size_option_replaces_every_case_n(capsys):
    assert bench.main(["sampler", "--device", "cpu", "--part", "step", "--cases", "0,1", "--n", "3", "--repeats", "1"]) == 0
    labels = {line.split()[0] for line in capsys.readouterr().out.splitlines() if "->" in line}
    assert labels == {"3x1x42x42->42x42", "3x1x60x60->30x30"}


def test_fwdbwd_bytes_counts_three_input_and_two_output_passes():
    case = bench.Case(2, 3, (4, 5), (6, 7))
    assert case.fwdbwd_bytes(4) == 4 * (3 * 2 * 3 * 20 + 2 * 2 * 3 * 42)


def test_bad_cases_and_batch_sizes_are_named(capsys):
    for argv, message in [(["--cases", "9"], "--cases takes indices 0-4"), (["--n", "0"], "--n must be a positive")]:
        with pytest.raises(SystemExit):
            bench.main(["sampler", "--device", "cpu", *argv])
        assert message in capsys.readouterr().err


def test_rows_are_printed_as_they_are_measured_without_profiler_noise(capfd, monkeypatch):
    printed_before = []  # what stdout held when each measurement began
    out = []
    real = bench.time_method

    def spy(method, case, device, backward, repeats):
        captured = capfd.readouterr()
        out.append(captured.out)
        printed_before.append("".join(out))
        assert "USDT" not in captured.err and "profiler_st" not in captured.err
        return real(method, case, device, backward, repeats)

    monkeypatch.setattr(bench, "time_method", spy)
    assert bench.main(["sampler", "--device", "cpu", "--part", "sampler", "--cases", "0", "--repeats", "1"]) == 0
    rest = capfd.readouterr()
    assert "USDT" not in rest.err and "profiler_st" not in rest.err
    # two measurements (fwd, fwd+bwd) per method: the first method's row is out before the second's start
    assert "torch grid_sample" not in printed_before[1] and "torch grid_sample" in printed_before[2]


def test_train_benchmark_prints_steps_per_second_and_the_protocol_hours(capsys):
    """One model, one mode, on the smoke config: its row, and a total that counts the table's runs (seeds) and
    their steps (the smoke config trains RTS's runs 30 steps at batch 32; R's override, 20)."""
    argv = ["train", "--config", "config/smoke.yaml", "--datasets", "RTS,R", "--models", "CNN", "--modes", "none",
            "--steps", "2", "--warmup", "1", "--device", "cpu"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("table1 ")]
    assert [(r[1], r[6]) for r in rows] == [("RTS", "fp32"), ("RTS", "bf16"), ("R", "fp32"), ("R", "bf16")]
    for fp32, bf16 in (rows[:2], rows[2:]):
        table, dataset, model, params, batch, mode, precision, warm, ms, rate, hours, speed = fp32
        assert (table, model, mode) == ("table1", "CNN", "none") and bf16[:6] == fp32[:6]
        assert int(params) > 0 and float(ms) > 0 and abs(float(rate) - 1000 / float(ms)) < 0.1 * float(rate)
        assert float(speed) == 1.0  # the baseline: eager fp32
        # speed = base ms / its ms, within what printing both ms to 2 decimals (±0.005) and the speed to 2 can change
        speed_bf16, ms_base, ms_bf16 = float(bf16[-1]), float(ms), float(bf16[8])
        rounding = speed_bf16 * (0.005 / ms_base + 0.005 / ms_bf16) + 0.005
        assert speed_bf16 == pytest.approx(ms_base / ms_bf16, abs=rounding + 1e-9)
    assert rows[0][4] == "32" and float(rows[0][10]) == pytest.approx(30 * float(rows[0][8]) / 1000 / 3600, abs=0.01)
    totals = [line for line in out.splitlines() if line.startswith("table1: 2 runs, 50 training steps:")]
    assert [(" in fp32 " in t, " in bf16 " in t) for t in totals] == [(True, False), (False, True)]
    assert totals[0].endswith("(1.00x base)") and totals[1].endswith("x base)")


def test_train_benchmark_times_with_cudnn_autotuning_when_asked(capsys, monkeypatch):
    """--cudnn-benchmark: cuDNN's autotuning is on while the steps are timed, says so in the header, and is off
    again afterwards."""
    from stn import bench_train

    seen = []
    timed = bench_train.step_times
    monkeypatch.setattr(bench_train, "step_times", lambda *a, **k: (seen.append(torch.backends.cudnn.benchmark),
                                                                     timed(*a, **k))[1])
    argv = ["train", "--config", "config/smoke.yaml", "--datasets", "RTS", "--models", "FCN", "--modes", "none",
            "--precisions", "fp32", "--steps", "1", "--warmup", "1", "--device", "cpu"]
    before = torch.backends.cudnn.benchmark
    assert bench.main([*argv, "--cudnn-benchmark"]) == 0 and bench.main(argv) == 0
    assert seen == [True, False] and torch.backends.cudnn.benchmark == before
    first, second = capsys.readouterr().out.split("\n== ")
    assert "cuDNN autotuning on" in first and "cuDNN autotuning" not in second


def assert_refused(subcommand: str, cases: list, capsys) -> None:
    """Each (extra argv, message) of `cases` makes `python -m stn.bench <subcommand>` (smoke config, CPU) exit,
    its message on stderr."""
    for argv, message in cases:
        with pytest.raises(SystemExit):
            bench.main([subcommand, "--config", "config/smoke.yaml", "--device", "cpu", *argv])
        assert message in capsys.readouterr().err


def test_train_benchmark_names_what_it_cannot_cost(capsys):
    assert_refused("train", [(["--tables", "table2"], "builds the classification tables"),
                             (["--modes", "fast"], "--modes: ['fast'] not among"),
                             (["--precisions", "fp16"], "--precisions: ['fp16'] not among ['fp32', 'bf16']"),
                             (["--datasets", "P"], "['P'] not trained by table1")], capsys)


def test_share_benchmark_prints_the_total_rate_of_k_jobs_against_one(capsys):
    """One job, then two at once (--jobs 2 runs k = 1 first): each row's total is k jobs' steps per second and
    its ratio that total over one job's; the summary names the k with the highest total."""
    argv = ["share", "--config", "config/smoke.yaml", "--dataset", "RTS", "--models", "ST-FCN-Aff", "--jobs", "2",
            "--seconds", "1", "--warmup", "1", "--device", "cpu"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("ST-FCN-Aff ")]
    assert [(r[1], r[2]) for r in rows] == [("1", "1"), ("2", "2")]
    (_, _, _, each1, total1, x1), (_, _, _, each2, total2, x2) = rows
    assert float(each1) == float(total1) > 0 and float(x1) == 1.0
    assert 0 < float(each2) <= float(total2) and float(x2) == pytest.approx(float(total2) / float(total1), abs=0.01)
    best = max((float(total1), 1), (float(total2), 2))[1]
    assert f"ST-FCN-Aff: most runs per hour with {best} {'job' if best == 1 else 'jobs'} per device" in out


def test_share_benchmark_trains_several_runs_in_each_job(capsys):
    """--streams 2: one job of one run (the base) first, then each k with two runs per job, the runs column k × 2
    and the total the sum of every run's rate."""
    argv = ["share", "--config", "config/smoke.yaml", "--dataset", "RTS", "--models", "FCN", "--jobs", "1,2",
            "--streams", "2", "--seconds", "0.5", "--warmup", "1", "--device", "cpu"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("FCN ")]
    assert [(r[1], r[2]) for r in rows] == [("1", "1"), ("1", "2"), ("2", "4")]
    for _, _, runs, each, total, _ in rows[1:]:  # each run of a job steps as often as its partners
        assert float(total) == pytest.approx(int(runs) * float(each), rel=0.02)
    assert "2 runs of one model each, on as many CUDA streams" in out
    assert_refused("share", [(["--streams", "0"], "--streams at least 1")], capsys)


def test_share_benchmark_names_bad_input_and_a_failing_job(capsys):
    from stn.bench_share import shared_rate

    assert_refused("share", [(["--jobs", "0"], "--jobs takes positive integers"),
                             (["--jobs", "two"], "--jobs takes positive integers"),
                             (["--models", "ST-CNN-TPS"], "['ST-CNN-TPS'] on RTS not trained by table1"),
                             (["--table", "table2"], "only the classification tables"),
                             (["--mode", "fast"], "--mode must be one of")], capsys)
    # a job that cannot build its model stops the benchmark with its error (its partner does not wait on)
    spec = {"config": "config/smoke.yaml", "table": "table1", "dataset": "NOPE", "model": "CNN", "mode": "none",
            "precision": "fp32", "device": "cpu", "seconds": 1.0, "warmup": 1, "threads": 1, "streams": 1}
    with pytest.raises(SystemExit, match="share: a job of CNN failed: .*NOPE"):
        shared_rate(spec, 2)


@pytest.mark.parametrize("sub", ["train", "share", "coloc"])
def test_benchmarks_name_a_missing_config_in_one_line(sub, capsys):
    assert bench.main([sub, "--config", "config/nope.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == f"python -m stn.bench {sub}: error: config file config/nope.yaml does not exist\n"


def test_pool_benchmark_prints_ratios_against_torch_for_every_case(capsys, monkeypatch):
    from stn import bench_pool

    monkeypatch.setattr(bench_pool, "CASES", [("small", (2, 1, 8, 8), 2, False), ("small CL", (2, 3, 4, 4), 2, True)])
    monkeypatch.setattr(bench_pool, "MAX_CASES", [("small max", (2, 3, 6, 6), True, torch.bfloat16)])
    monkeypatch.setattr(bench_pool, "FOLD_CASES", [("small fold", (2, 2 * 9, 4 * 4), 6, 3, 0)])
    # per pooling case: torch fwd, ours fwd, torch fwd+bwd, ours fwd+bwd; then the fold's torch and ours
    times = iter([4e-3, 1e-3, 9e-3, 3e-3] * 3 + [6e-3, 1e-3])
    results = []
    monkeypatch.setattr(bench_pool, "fastest", lambda fn, device, repeats: (results.append(fn()), next(times))[-1])
    assert bench.main(["pool", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("small")]
    assert "2x1x8x8 k2" in rows[0] and "2x3x4x4 CL k2" in rows[1] and "2x3x6x6 CL" in rows[2] and len(results) == 14
    for r in rows[:3]:
        assert r.split()[-6:] == ["4.000", "1.000", "4.00", "9.000", "3.000", "3.00"]
    assert "2x18x16" in rows[3] and rows[3].split()[-3:] == ["6.000", "1.000", "6.00"]
    assert "geometric mean speed-up 3.75x over 7 measurements" in out
    # the max-pooling case compares the same function: torch's pair and the fused op, forward and gradient
    assert torch.equal(results[8], results[9]) and torch.equal(results[10][0], results[11][0])
    assert results[12].shape == (2, 2, 6, 6) and torch.equal(results[12], results[13])  # the fold: the same map


def test_grid_benchmark_prints_ratios_against_the_autograd_reference(capsys, monkeypatch):
    from stn import bench_grid
    from stn.transforms import Projective, ThinPlateSpline

    monkeypatch.setattr(bench_grid, "CASES", [("proj", Projective(), 2, 5), ("tps", ThinPlateSpline(3), 3, 4)])
    times = iter([2e-3, 1e-3, 8e-3, 2e-3] * 2)  # per case: reference fwd, ours fwd, reference fwd+bwd, ours fwd+bwd
    results = []
    monkeypatch.setattr(bench_grid, "fastest", lambda fn, device, repeats: (results.append(fn()), next(times))[-1])
    assert bench.main(["grid", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("proj", "tps"))]
    assert "Projective 5²" in rows[0] and "ThinPlateS 4²" in rows[1]
    for r in rows:
        assert r.split()[-6:] == ["2.000", "1.000", "2.00", "8.000", "2.000", "4.00"]
    # the two forwards of each case are the same grid, and the two backwards the same gradient
    for ref, ours in (results[0:2], results[2:4], results[4:6], results[6:8]):
        ref, ours = (r if isinstance(r, torch.Tensor) else r[0] for r in (ref, ours))
        torch.testing.assert_close(ref.reshape(ours.shape), ours)
    assert "geometric mean speed-up 2.83x over 4 measurements" in out


def test_coloc_benchmark_costs_a_class_under_the_schedule_and_the_bank(capsys, monkeypatch):
    from stn import bench_coloc

    # (fresh, bank) seconds per step per set of CNNs in use (smoke: TC's e() is R + TC); the bank builds in 3 s, once
    seconds = {(0, 1): (2.0, 1.0), (0,): (0.5, 0.25)}
    builds = []
    monkeypatch.setattr(bench_coloc, "step_seconds", lambda encoder, settings, only, rounds: seconds[only])
    monkeypatch.setattr(bench_coloc, "bank_seconds", lambda encoder, settings, size: builds.append(size) or 3.0)
    windows = []  # e()'s TC CNN on the padded canvas (the baseline), then computed where the crops reach
    monkeypatch.setattr(bench_coloc, "window_seconds", lambda canvas, windowed, settings, rounds:
                        windows.append([type(c).__name__ for c in (*canvas.cnns, *windowed.cnns)]) or (0.9, 0.6))
    monkeypatch.setattr(bench_coloc, "side_seconds", lambda encoder, settings, side, rounds: (0.6, 0.6 * side / 28))
    assert bench.main(["coloc", "--config", "config/smoke.yaml", "--variants", "TC", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "a bank of 2 patches per image; encoder_start {'TC': 2}" in out  # the smoke config's
    assert ("resolution native: a step with 60 px crops (the anneal's first steps) 1286 ms, with 28 px crops (from "
            "the end of the anneal) 600 ms: 2.14x") in out  # the smoke config's resolution
    assert windows == [["Sequential", "Sequential", "Sequential", "PaddedCrop"]]  # R's CNN (28 px) is as it is
    assert ("e() on the zero-padded canvas (baseline) 900 ms a step (fresh patches), computed only where the crops "
            "reach (co.PaddedCrop, what runs) 600 ms: 1.50x") in out
    rows = [line.split() for line in out.splitlines() if line.startswith("TC ") and "per class" not in line
            and "canvas" not in line and "resolution" not in line]
    assert rows == [["TC", "R+TC", "4", "2000", "1000", "2.00"], ["TC", "R", "2", "500", "250", "2.00"]]
    assert builds == [2]  # one bank per variant, of the config's size
    # 6 steps: 6 x 2 s with every CNN and fresh patches; 4 x 2 + 2 x 0.5 on the schedule; 3 + 4 x 1 + 2 x 0.25 with the bank
    assert ("per class: fresh patches, every CNN from step 0 (baseline) 12 s; this schedule 9 s (1.33x); "
            "with the bank (3.0 s to build) 8 s (1.60x)") in out
    bench.main(["coloc", "--config", "config/smoke.yaml", "--variants", "TC", "--start", "--bank", "4"])
    out = capsys.readouterr().out
    assert "a bank of 4 patches per image; encoder_start none" in out and "this schedule 12 s (1.00x)" in out
    assert builds == [2, 4]
