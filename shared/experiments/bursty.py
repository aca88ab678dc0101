"""Bursty arrival traces: on/off and Markov-modulated Poisson processes, and what a trace realises.

The published traces (traces/README.md) change their rate smoothly over minutes, so a controller
that follows a demand EWMA keeps up with them. Production arrivals also come in bursts: the rate
jumps by 10-30x within a second, holds for seconds, and falls back to near silence. These
generators make such traces, reproducibly, in the `arrival_ms,prompt_id` format of
`shared.experiments.trace`, so that the controller can be tried against them.

Every generator draws a *schedule* first (segments of constant rate, `Segment`) and then the
arrivals of a Poisson process with that piecewise-constant rate: a rate change is a step at a
segment's start, so a burst begins at its full rate at once (a sudden onset, as in production),
not over a ramp. Everything is drawn from one `numpy.random.Generator(PCG64(seed))`, so a seed and
the parameters fix the trace; prompt ids are drawn uniformly from [0, 5000), the reference prompts,
from the same generator, after the arrivals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.experiments.trace import Trace

PROMPTS = 5000  # reference.prompts() holds 5,000 lines; the tests check that the two agree
BASE_FRACTION, BASE_CAP_QPS = 0.01, 0.1  # on_off's default OFF rate: 1 % of the peak, at most 0.1 req/s


@dataclass(frozen=True)
class Segment:
    """`rate_qps` arrivals per second, Poisson, over [start_s, end_s); `state` is the regime (on_off:
    0 OFF, 1 ON; mmpp: the index into its rates)."""
    start_s: float
    end_s: float
    rate_qps: float
    state: int


@dataclass(frozen=True)
class OnOff:
    """An on/off process's rates and mean period lengths, derived from what the caller gives."""
    mean_qps: float
    peak_qps: float
    base_qps: float
    on_s: float
    off_s: float

    @property
    def fraction_on(self) -> float:
        return self.on_s / (self.on_s + self.off_s)


def on_off_params(mean_qps: float, peak_to_mean: float, off_s: float, on_s: float | None = None,
                  base_qps: float | None = None) -> OnOff:
    """The on/off process whose long-run mean is `mean_qps` with ON at `mean_qps * peak_to_mean`.

    The long-run mean is base + (peak - base) * on / (on + off), so with the mean, the peak, the
    base and the OFF mean fixed, the ON mean is determined: on = off * f / (1 - f), f = (mean - base)
    / (peak - base). `on_s` is therefore optional; when given it must agree with that value within
    1 %, and a ValueError says which value would. `base_qps` (the OFF rate, near silence) defaults to
    1 % of the peak, at most 0.1 req/s, so that OFF windows are nearly empty at every scale.
    """
    if not (np.isfinite(mean_qps) and mean_qps > 0):
        raise ValueError(f"mean_qps must be a finite rate above 0, got {mean_qps!r}")
    if not (np.isfinite(peak_to_mean) and peak_to_mean > 1):
        raise ValueError(f"peak_to_mean must be above 1 (the ON rate over the mean), got {peak_to_mean!r}")
    if not (np.isfinite(off_s) and off_s > 0):
        raise ValueError(f"off_s (the mean OFF period) must be above 0 seconds, got {off_s!r}")
    peak = mean_qps * peak_to_mean
    base = min(BASE_FRACTION * peak, BASE_CAP_QPS) if base_qps is None else float(base_qps)
    if not 0 <= base < mean_qps:
        raise ValueError(f"base_qps (the OFF rate) must be in [0, mean_qps={mean_qps:g}), got {base:g}")
    fraction = (mean_qps - base) / (peak - base)
    derived = off_s * fraction / (1 - fraction)
    if on_s is not None and not abs(on_s - derived) <= 0.01 * derived:
        raise ValueError(f"on_s={on_s:g} is inconsistent: mean {mean_qps:g}, peak-to-mean {peak_to_mean:g}, "
                         f"base {base:g} req/s and off_s={off_s:g} give on_s={derived:.4g} (leave it out to derive it)")
    return OnOff(mean_qps, peak, base, derived, off_s)


def on_off_schedule(params: OnOff, duration_s: float, rng: np.random.Generator) -> list[Segment]:
    """Alternating OFF and ON periods over [0, duration_s), starting OFF (so the first burst is never at
    t=0), each period's length exponential with its mean: exponential, because it makes the on/off
    process a two-state MMPP (memoryless, the textbook bursty source) and because its long tail gives
    the occasional long burst that production traces show."""
    _check_duration(duration_s)
    segments: list[Segment] = []
    start, on = 0.0, False
    while start < duration_s:
        end = min(start + rng.exponential(params.on_s if on else params.off_s), duration_s)
        segments.append(Segment(start, end, params.peak_qps if on else params.base_qps, int(on)))
        start, on = end, not on
    return segments


def on_off(mean_qps: float, peak_to_mean: float, off_s: float, duration_s: float, seed: int,
           on_s: float | None = None, base_qps: float | None = None) -> Trace:
    """An on/off trace: Poisson at the peak during ON, at `base_qps` during OFF (`on_off_params` derives
    the peak and the ON mean, `on_off_schedule` draws the periods)."""
    rng = generator(seed)
    params = on_off_params(mean_qps, peak_to_mean, off_s, on_s, base_qps)
    name = f"on_off(mean={mean_qps:g},peak_to_mean={peak_to_mean:g},off={off_s:g},seed={seed})"
    return arrivals(on_off_schedule(params, duration_s, rng), rng, name)


def mmpp_schedule(rates_qps: list[float] | np.ndarray, mean_holding_s: float | list[float] | np.ndarray,
                  duration_s: float, rng: np.random.Generator, transitions: np.ndarray | None = None,
                  initial_state: int | None = None) -> list[Segment]:
    """A Markov-modulated schedule over K states: state k holds for an exponential time of mean
    `mean_holding_s` (one for all states, or one per state), then jumps to j with probability
    transitions[k, j]. The default matrix is uniform over the *other* states (a jump always changes the
    rate, so the mean holding time is the mean time at a rate); the default first state is the slowest,
    so a trace begins quiet, like on_off's."""
    rates = _check_rates(rates_qps)
    k = len(rates)
    holding = np.broadcast_to(np.asarray(mean_holding_s, dtype=float), (k,))
    if not np.all(np.isfinite(holding) & (holding > 0)):
        raise ValueError(f"mean_holding_s must be above 0 seconds (one, or one per state), got {mean_holding_s!r}")
    matrix = (np.ones((k, k)) - np.eye(k)) / (k - 1) if transitions is None else np.asarray(transitions, dtype=float)
    if matrix.shape != (k, k) or np.any(matrix < 0) or not np.allclose(matrix.sum(axis=1), 1):
        raise ValueError(f"transitions must be a {k}x{k} matrix of probabilities whose rows sum to 1")
    state = int(np.argmin(rates)) if initial_state is None else initial_state
    if not 0 <= state < k:
        raise ValueError(f"initial_state must be in [0, {k}), got {initial_state!r}")
    _check_duration(duration_s)
    segments: list[Segment] = []
    start = 0.0
    while start < duration_s:
        end = min(start + rng.exponential(holding[state]), duration_s)
        segments.append(Segment(start, end, float(rates[state]), state))
        start, state = end, int(rng.choice(k, p=matrix[state]))
    return segments


def mmpp(rates_qps: list[float] | np.ndarray, mean_holding_s: float | list[float] | np.ndarray, duration_s: float,
         seed: int, transitions: np.ndarray | None = None) -> Trace:
    """A Markov-modulated Poisson trace (see `mmpp_schedule`): with the uniform matrix and one holding
    time, each state gets the same share of time in the long run, so the mean is the mean of the rates."""
    rng = generator(seed)
    schedule = mmpp_schedule(rates_qps, mean_holding_s, duration_s, rng, transitions)
    name = f"mmpp(rates={','.join(f'{r:g}' for r in np.asarray(rates_qps, dtype=float))},seed={seed})"
    return arrivals(schedule, rng, name)


def arrivals(schedule: list[Segment], rng: np.random.Generator, name: str) -> Trace:
    """The Poisson arrivals of a piecewise-constant rate: per segment a Poisson count, placed uniformly
    (the conditional law of a Poisson process given its count), then uniform prompt ids."""
    times = []
    for segment in schedule:
        count = rng.poisson(segment.rate_qps * (segment.end_s - segment.start_s))
        times.append(np.sort(rng.uniform(segment.start_s, segment.end_s, count)))
    arrival_s = np.concatenate(times) if times else np.zeros(0)
    return Trace(name, arrival_s, rng.integers(0, PROMPTS, len(arrival_s)))


def describe(trace: Trace, window_s: float = 10.0, silent_fraction: float = 0.1) -> dict:
    """What a trace realises, to compare with what it was made for. The duration is the last arrival
    (a trace file holds nothing else); the peak is the most arrivals in any `window_s` interval
    (sliding, starting at an arrival, so a burst that straddles two fixed windows still counts whole);
    a whole fixed window [i w, (i+1) w) is near silent when its rate is under `silent_fraction` of the mean;
    the longest silence is the longest gap between arrivals, the start counted as one."""
    if not window_s > 0:
        raise ValueError(f"window_s must be above 0, got {window_s!r}")
    times = np.asarray(trace.arrival_s, dtype=float)
    duration = float(times[-1]) if len(times) else 0.0
    if len(times) == 0 or duration <= 0:
        return {"jobs": len(times), "duration_s": duration, "window_s": window_s, "mean_qps": 0.0, "peak_qps": 0.0,
                "peak_to_mean": 0.0, "silent_windows": 1.0, "longest_silence_s": duration}
    mean = len(times) / duration
    peak = float(np.max(np.searchsorted(times, times + window_s, side="left") - np.arange(len(times)))) / window_s
    full = max(1, int(duration // window_s))  # whole windows only: a partial last one would look quiet
    counts = np.bincount((times // window_s).astype(int), minlength=full)[:full]
    return {"jobs": len(times), "duration_s": round(duration, 3), "window_s": window_s,
            "mean_qps": round(mean, 3), "peak_qps": round(peak, 3), "peak_to_mean": round(peak / mean, 3),
            "silent_windows": round(float(np.mean(counts / window_s < silent_fraction * mean)), 3),
            "longest_silence_s": round(float(np.max(np.diff(times, prepend=0.0))), 3)}


def write_trace(trace: Trace, path: str | Path, header: str) -> Path:
    """`# header` (the command and parameters that made it, so it can be made again), then
    `arrival_ms,prompt_id` per line in time order, milliseconds to 0.1 ms (load_trace reads it back)."""
    if "\n" in header:
        raise ValueError("the header is one comment line: no newlines")
    path = Path(path)
    lines = [f"# {header}"] + [f"{ms:.1f},{int(p)}" for ms, p in zip(trace.arrival_s * 1000.0, trace.prompt_ids,
                                                                      strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def generator(seed: int) -> np.random.Generator:
    """The one random source of a trace: PCG64 seeded by a non-negative integer (numpy's default bit
    generator, stable across numpy versions for a given seed)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return np.random.Generator(np.random.PCG64(int(seed)))


def _check_duration(duration_s: float) -> None:
    if not (np.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be above 0 seconds, got {duration_s!r}")


def _check_rates(rates_qps: list[float] | np.ndarray) -> np.ndarray:
    rates = np.asarray(rates_qps, dtype=float)
    if rates.ndim != 1 or len(rates) < 2:
        raise ValueError(f"rates_qps must list at least 2 rates (one per state), got {rates_qps!r}")
    if not np.all(np.isfinite(rates) & (rates >= 0)) or not np.any(rates > 0):
        raise ValueError(f"rates_qps must be finite, >= 0 and not all 0, got {rates_qps!r}")
    return rates
