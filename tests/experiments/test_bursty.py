import re
import shlex
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from shared import cli, reference
from shared.experiments import bursty
from shared.experiments.trace import load_trace

TRACES = Path(__file__).resolve().parents[2] / "traces"
# file -> (the target mean, the target peak-to-mean) it was made for
MADE = {"bursty_p10.txt": (8, 10), "bursty_p30.txt": (3, 30), "bursty_off30.txt": (3.5, 20),
        "bursty_off120.txt": (3.5, 20), "mmpp_3state.txt": (23.5, 60 / 23.5), "azure_code_8x.txt": (20.5, 4.4),
        "mmpp_smooth.txt": (45, 60 / 45)}


def on_off_parts(mean, ratio, off, duration, seed, **kw):
    """The schedule and the arrivals of `bursty.on_off`, drawn the same way."""
    params = bursty.on_off_params(mean, ratio, off, **kw)
    rng = bursty.generator(seed)
    schedule = bursty.on_off_schedule(params, duration, rng)
    return params, schedule, bursty.arrivals(schedule, rng, "t")


def count_in(times, start, end):
    return int(np.searchsorted(times, end) - np.searchsorted(times, start))


def test_a_seed_fixes_the_trace():
    a, b = bursty.on_off(8, 10, 45, 400, seed=3), bursty.on_off(8, 10, 45, 400, seed=3)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.prompt_ids, b.prompt_ids)
    assert not np.array_equal(a.arrival_s[:50], bursty.on_off(8, 10, 45, 400, seed=4).arrival_s[:50])
    m, n = bursty.mmpp([1, 5, 20], 30, 300, seed=1), bursty.mmpp([1, 5, 20], 30, 300, seed=1)
    assert np.array_equal(m.arrival_s, n.arrival_s) and np.array_equal(m.prompt_ids, n.prompt_ids)
    assert np.all(np.diff(a.arrival_s) >= 0) and a.prompt_ids.min() >= 0 and a.prompt_ids.max() < bursty.PROMPTS
    assert bursty.PROMPTS == len(reference.prompts())


def test_the_long_run_mean_and_the_peak_are_what_was_asked():
    params, schedule, trace = on_off_parts(8, 10, 45, 20_000, seed=1)
    assert params.peak_qps == 80 and params.on_s == pytest.approx(45 * (7.9 / 79.9) / (1 - 7.9 / 79.9))
    assert len(trace) / 20_000 == pytest.approx(8, rel=0.15)
    on = [s for s in schedule if s.state == 1]
    on_time = sum(s.end_s - s.start_s for s in on)
    on_rate = sum(count_in(trace.arrival_s, s.start_s, s.end_s) for s in on) / on_time
    assert on_rate == pytest.approx(80, rel=0.03)
    assert on_rate / (len(trace) / 20_000) == pytest.approx(10, rel=0.15)


def test_off_periods_are_near_silent():
    params, schedule, trace = on_off_parts(8, 10, 45, 20_000, seed=2)
    off = [s for s in schedule if s.state == 0]
    off_rate = sum(count_in(trace.arrival_s, s.start_s, s.end_s) for s in off) / sum(s.end_s - s.start_s for s in off)
    assert params.base_qps == 0.1 and off_rate < 0.15
    assert bursty.describe(trace, 10)["silent_windows"] > 0.6
    assert schedule[0].state == 0 and schedule[0].rate_qps == params.base_qps  # a trace begins quiet


def test_bursts_begin_at_their_peak_within_a_second():
    params, schedule, trace = on_off_parts(8, 10, 45, 20_000, seed=3)
    starts = [on.start_s for off, on in pairwise(schedule)
              if on.state == 1 and on.end_s - on.start_s >= 1.0 and off.end_s - off.start_s >= 1.0]
    first_second = np.mean([count_in(trace.arrival_s, t, t + 1.0) for t in starts])
    before = np.mean([count_in(trace.arrival_s, t - 1.0, t) for t in starts])
    assert len(starts) > 100 and first_second == pytest.approx(params.peak_qps, rel=0.1) and before < 1


def test_mmpp_visits_every_state_for_equal_shares():
    rng = bursty.generator(5)
    schedule = bursty.mmpp_schedule([0.5, 10, 60], 40, 20_000, rng)
    trace = bursty.arrivals(schedule, rng, "t")
    shares = [sum(s.end_s - s.start_s for s in schedule if s.state == k) / 20_000 for k in range(3)]
    assert schedule[0].rate_qps == 0.5 and all(a.state != b.state for a, b in pairwise(schedule))
    assert min(shares) > 0.25 and len(trace) / 20_000 == pytest.approx(70.5 / 3, rel=0.15)
    stuck = bursty.mmpp_schedule([1, 2], 10, 100, bursty.generator(0), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert {s.state for s in stuck} == {0}


@pytest.mark.parametrize("call, message", [
    (lambda: bursty.on_off(8, 10, 45, 400, seed=1, on_s=10), "on_s=10 is inconsistent.*give on_s=4.9"),
    (lambda: bursty.on_off(8, 1, 45, 400, seed=1), "peak_to_mean must be above 1"),
    (lambda: bursty.on_off(-1, 10, 45, 400, seed=1), "mean_qps"),
    (lambda: bursty.on_off(8, 10, 0, 400, seed=1), "off_s"),
    (lambda: bursty.on_off(8, 10, 45, 400, seed=1, base_qps=9), "base_qps"),
    (lambda: bursty.on_off(8, 10, 45, 0, seed=1), "duration_s"),
    (lambda: bursty.on_off(8, 10, 45, 400, seed=-1), "seed"),
    (lambda: bursty.mmpp([5], 40, 400, seed=1), "at least 2 rates"),
    (lambda: bursty.mmpp([0, 0], 40, 400, seed=1), "not all 0"),
    (lambda: bursty.mmpp([1, 5], -1, 400, seed=1), "mean_holding_s"),
    (lambda: bursty.mmpp([1, 5], 40, 400, seed=1, transitions=np.ones((2, 2))), "rows sum to 1"),
    (lambda: bursty.describe(bursty.mmpp([1, 5], 40, 40, seed=1), 0), "window_s"),
])
def test_invalid_parameters_say_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()
    assert bursty.on_off(8, 10, 45, 50, seed=1, on_s=4.94).name  # within 1 % of the derived 4.937 s


def readme_rows() -> dict[str, dict[str, float]]:
    """The README's bursty table: file -> its numeric columns, by header."""
    lines = [line for line in (TRACES / "README.md").read_text().splitlines() if line.startswith("|")]
    header = next(line for line in lines if "peak-to-mean" in line)
    names = [cell.strip() for cell in header.strip("|").split("|")]
    rows = {}
    for line in lines[lines.index(header) + 2:]:
        cells = dict(zip(names, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        rows[cells["file"].strip("`")] = {name: float(re.sub(r"[^0-9.]", "", cells[name])) for name in
                                          ("mean (req/s)", "peak, 10 s (req/s)", "peak-to-mean", "duration")}
    return rows


def test_the_committed_traces_are_what_the_readme_says():
    rows = readme_rows()
    assert set(rows) == set(MADE)
    for name, (mean, ratio) in MADE.items():
        trace = load_trace(TRACES / name)
        seen, row = bursty.describe(trace, 10), rows[name]
        assert seen["mean_qps"] == pytest.approx(row["mean (req/s)"], abs=0.01), name
        assert seen["peak_qps"] == pytest.approx(row["peak, 10 s (req/s)"], abs=0.1), name
        assert seen["peak_to_mean"] == pytest.approx(row["peak-to-mean"], abs=0.05), name
        assert seen["duration_s"] == pytest.approx(row["duration"], abs=1), name
        assert seen["mean_qps"] == pytest.approx(mean, rel=0.2), name
        assert seen["peak_to_mean"] == pytest.approx(ratio, rel=0.25), name
        assert 300 <= seen["duration_s"] <= 600 and trace.prompt_ids.max() < bursty.PROMPTS, name
        if name not in ("azure_code_8x.txt", "mmpp_smooth.txt"):  # a real service's, and a busy one's
            assert count_in(trace.arrival_s, 0, 5) <= 3, name  # begins quiet, not with a burst at t=0


@pytest.mark.parametrize("name", [name for name in MADE if name != "azure_code_8x.txt"])
def test_the_header_command_makes_the_same_file_again(name, tmp_path, capsys):
    header = (TRACES / name).read_text().splitlines()[0]
    assert header.startswith("# hadis trace ")
    argv = shlex.split(header.removeprefix("# hadis ").split(" (")[0]) + ["--out", str(tmp_path / name)]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0 and '"jobs"' in capsys.readouterr().out
    assert (tmp_path / name).read_text() == (TRACES / name).read_text()


def test_the_command_writes_a_trace_load_trace_reads(tmp_path, capsys):
    out = tmp_path / "t.txt"
    with pytest.raises(SystemExit) as exit_:
        cli.main(["trace", "on-off", "--mean", "5", "--peak-to-mean", "12", "--off", "20", "--duration", "120",
                  "--seed", "9", "--out", str(out)])
    assert exit_.value.code == 0 and '"made"' in capsys.readouterr().out
    trace = load_trace(out)
    assert len(trace) > 0 and out.read_text().startswith("# hadis trace on-off --mean 5 --peak-to-mean 12")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["trace", "describe", str(out), "--window", "5"])
    assert exit_.value.code == 0 and f'"jobs": {len(trace)}' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["trace", "on-off", "--mean", "5", "--peak-to-mean", "12", "--off", "20", "--on", "99",
                  "--duration", "120", "--seed", "9", "--out", str(out)])
    assert exit_.value.code == 2 and "inconsistent" in capsys.readouterr().out
