"""Figures and a summary table for experiment runs.

A run folder holds `report.json` (totals) and `timeseries.csv` (one row per time window).

- `plot_run` draws one run's timeline: demand (QPS), FID per window (lower is better) and the
  SLO violation ratio per window, stacked on a shared time axis.
- `plot_comparison` takes a folder of sibling runs on the same trace (one per policy) and draws the
  same three panels with one line per policy, bar charts of mean FID, SLO violation ratio and p99
  latency per policy, each policy as a point of (SLO violation ratio, mean FID) with the Pareto
  front, and writes a Markdown table of the totals (with each run's share of the oracle's gain,
  shared/experiments/oracle.py).
- `plot_classes` draws, for a run with a batch backlog, each class's share of GPU-time over time.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from shared.experiments.band import Band, Point, agrees

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

POLICY_ORDER = ("hadis", "hadis-paper", "router-only", "disc-only", "diffserve", "proteus",
                "infaas-acc", "clipper-light", "clipper-heavy", "planned-static", "best-static", "oracle")
TEXT_COLUMNS = {"light_model", "heavy_model"}
MARKERS = "osD^v<>pPX*h"
STYLE: dict[RcKeyType, float] = {"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 10,
                                  "xtick.labelsize": 11, "ytick.labelsize": 11}
TIMELINE_SIZE = (10, 8)


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """The run's report, and its time-series rows with numeric fields as float (None if empty)."""
    run_dir = Path(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    with open(run_dir / "timeseries.csv", newline="") as f:
        rows = [{key: text if key in TEXT_COLUMNS else _number(text) for key, text in row.items()}
                for row in csv.DictReader(f)]
    return report, rows


def plot_run(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    report, rows = load_run(run_dir)
    with plt.rc_context(STYLE):
        fig, axes = _timeline_axes()
        _plot_demand(axes[0], rows)
        _plot_policy(axes, rows, report["policy"], _style(report["policy"]))
        fig.suptitle(f"{report['policy']} · {_setup(report)}")
        return _save(fig, run_dir / "timeline.png")


def plot_comparison(parent: Path) -> list[Path]:
    parent = Path(parent)
    runs = _find_runs(parent)
    if not runs:
        raise ValueError(f"no run folder with a report.json under {parent}")
    with plt.rc_context(STYLE):
        paths = [_comparison_timeline(parent, runs), _comparison_bars(parent, runs), _comparison_front(parent, runs)]
    paths.append(_comparison_table(parent, runs))
    return paths


def plot_classes(run_dir: Path) -> Path:
    """`classes.png` from a run's `classes.csv` (a run with a batch backlog, docs/classes.md): each
    class's share of the fleet's GPU-time per window, stacked (the batch share's lost steps
    hatched), and the batch jobs done per window with the GPUs reserved for batch."""
    run_dir = Path(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    with open(run_dir / "classes.csv", newline="") as f:
        rows = [{key: _number(text) for key, text in row.items()} for row in csv.DictReader(f)]
    t = [row["t_s"] for row in rows]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, 1, sharex=True, figsize=TIMELINE_SIZE, height_ratios=(2, 1))
        shares = [[(row[key] or 0.0) * 100.0 for row in rows] for key in ("interactive_share", "batch_share")]
        axes[0].stackplot(t, *shares, labels=("interactive", "batch"), colors=("tab:blue", "tab:orange"), alpha=0.8,
                          step="post")
        axes[0].fill_between(t, shares[0], [a + (row["batch_lost_share"] or 0.0) * 100.0
                                            for a, row in zip(shares[0], rows, strict=True)],
                             step="post", facecolor="none", edgecolor="black", hatch="//", linewidth=0,
                             label="batch steps lost (yield)")
        axes[0].set_ylabel("share of GPU-time (%)")
        axes[0].set_ylim(0, 100)
        axes[0].legend(loc="upper right", frameon=False)
        axes[1].step(t, [row["batch_done"] or 0 for row in rows], where="post", color="tab:orange",
                     label="batch jobs done per window")
        axes[1].step(t, [row["batch_reserved"] or 0 for row in rows], where="post", color="black",
                     linestyle="--", label="GPUs reserved for batch")
        axes[1].set_xlabel("time (s)")
        axes[1].legend(loc="upper right", frameon=False)
        for ax in axes:
            ax.grid(alpha=0.3)
        mode = (report.get("classes") or {}).get("batch_settings", {}).get("yield")
        title = "single-queue FIFO, no classes" if mode == "fifo" else f"service classes, yield {mode}"
        fig.suptitle(f"{report['policy']} · {title} · {_setup(report)}")
        return _save(fig, run_dir / "classes.png")


def _number(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


def _find_runs(parent: Path) -> list[tuple[dict, list[dict]]]:
    runs = [load_run(d) for d in sorted(parent.iterdir()) if (d / "report.json").is_file()]
    return sorted(runs, key=lambda run: _order_key(run[0]["policy"]))


def _order_key(policy: str) -> tuple[int, str]:
    return (POLICY_ORDER.index(policy) if policy in POLICY_ORDER else len(POLICY_ORDER), policy)


def _style(policy: str, index: int = 0) -> dict:
    slot = POLICY_ORDER.index(policy) if policy in POLICY_ORDER else len(POLICY_ORDER) + index
    is_hadis = policy == "hadis"
    return {"color": plt.get_cmap("tab10")(slot % 10), "marker": MARKERS[slot % len(MARKERS)],
            "linewidth": 2.8 if is_hadis else 1.5, "zorder": 5 if is_hadis else 3}


def _setup(report: dict) -> str:
    return f"{report.get('trace')} · {report.get('gpus')} GPUs · SLO {report.get('slo_s'):g} s"


def _series(rows: list[dict], key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    """Windows with no value (nothing completed or ended) are left out, so the line bridges them."""
    points = [(row["t_s"], row[key] * scale) for row in rows if row[key] is not None]
    return [t for t, _ in points], [v for _, v in points]


def _timeline_axes():
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=TIMELINE_SIZE)
    axes[0].set_ylabel("demand (QPS)")
    axes[1].set_ylabel("FID (lower is better)")
    axes[2].set_ylabel("SLO violation ratio (%)")
    axes[2].set_xlabel("time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def _plot_demand(ax, rows: list[dict]) -> None:
    ax.plot(*_series(rows, "demand_qps"), color="black", linewidth=1.8)


def _plot_policy(axes, rows: list[dict], label: str, style: dict) -> None:
    every = max(1, len(rows) // 15)
    for ax, key, scale in ((axes[1], "fid", 1.0), (axes[2], "violation_ratio", 100.0)):
        ax.plot(*_series(rows, key, scale), label=label, markevery=every, markersize=5, **style)


def _comparison_timeline(parent: Path, runs: list[tuple[dict, list[dict]]]) -> Path:
    fig, axes = _timeline_axes()
    _plot_demand(axes[0], runs[0][1])
    for index, (report, rows) in enumerate(runs):
        _plot_policy(axes, rows, report["policy"], _style(report["policy"], index))
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.suptitle(_setup(runs[0][0]))
    return _save(fig, parent / "comparison_timeline.png")


def _comparison_bars(parent: Path, runs: list[tuple[dict, list[dict]]]) -> Path:
    reports = [report for report, _ in runs]
    policies = [report["policy"] for report in reports]
    colors = [_style(policy, i)["color"] for i, policy in enumerate(policies)]
    panels = (("mean FID (lower is better)", "mean_fid", 1.0),
              ("SLO violation ratio (%)", "slo_violation_ratio", 100.0),
              ("p99 latency (s), dashed: SLO", "p99_latency_s", 1.0))
    fig, axes = plt.subplots(1, 3, figsize=(max(12, 2.4 * len(runs)), 5))
    for ax, (title, key, scale) in zip(axes, panels, strict=True):
        values = [None if r.get(key) is None else r[key] * scale for r in reports]
        bars = ax.bar(policies, [0.0 if v is None else v for v in values], color=colors)
        ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.2f}" for v in values], fontsize=9)
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=45)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)
    axes[2].axhline(reports[0]["slo_s"], color="red", linestyle="--", linewidth=1.5)
    fig.suptitle(_setup(reports[0]))
    return _save(fig, parent / "comparison_bars.png")


def _comparison_front(parent: Path, runs: list[tuple[dict, list[dict]]]) -> Path:
    """Each policy as a point (SLO violation ratio, mean FID): down and left is better, and the
    Pareto front is drawn through the points no other policy beats in both."""
    points = [(r["policy"], r["slo_violation_ratio"] * 100.0, r["mean_fid"]) for r, _ in runs
              if r.get("mean_fid") is not None]
    fig, ax = plt.subplots(figsize=(8, 6))
    for index, (policy, violations, fid) in enumerate(points):
        style = _style(policy, index)
        ax.scatter(violations, fid, color=style["color"], marker=style["marker"], s=140 if policy == "hadis" else 70,
                   zorder=3, label=policy)
        ax.annotate(policy, (violations, fid), textcoords="offset points", xytext=(6, 4), fontsize=9)
    front = sorted((v, f) for _, v, f in points if not any(v2 <= v and f2 <= f and (v2, f2) != (v, f)
                                                            for _, v2, f2 in points))
    ax.plot([v for v, _ in front], [f for _, f in front], color="grey", linestyle="--", linewidth=1, zorder=2)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("SLO violation ratio (%), symlog")
    ax.set_ylabel("mean FID (lower is better)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{_setup(runs[0][0])}; dashed: Pareto front")
    return _save(fig, parent / "comparison_front.png")


def worst_window(rows: list[dict]) -> float | None:
    """The highest violation ratio of any time-series window (None without windows)."""
    ratios = [row["violation_ratio"] for row in rows if row.get("violation_ratio") is not None]
    return max(ratios, default=None)


def _comparison_table(parent: Path, runs: list[tuple[dict, list[dict]]]) -> Path:
    lines = ["| policy | SLO violation ratio | worst window | mean FID | oracle gain share | p99 latency (s) "
             "| heavy share | submitted | lost |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for report, rows in runs:
        cells = [report["policy"], _fmt(report.get("slo_violation_ratio"), 100.0, "%"),
                 _fmt(worst_window(rows), 100.0, "%"), _fmt(report.get("mean_fid")),
                 _fmt(report.get("oracle_gain_share"), 100.0, "%"), _fmt(report.get("p99_latency_s")),
                 _fmt(report.get("heavy_share")), _fmt_int(report.get("submitted")),
                 _fmt_int(report.get("lost"))]
        lines.append("| " + " | ".join(cells) + " |")
    path = parent / "comparison.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def differences_table(folder: Path, against: Path) -> Path:
    """`folder/differences.md`: per policy in both folders, the SLO violation ratio and mean FID
    of each and the difference (folder minus against), e.g. experiment minus simulator. Where the
    other folder's run has a band.json (`hadis simulate --band`), the band too, and whether this
    folder's run agrees with it (shared/experiments/band.py)."""
    ours = {report["policy"]: report for report, _ in _find_runs(Path(folder))}
    theirs = {report["policy"]: report for report, _ in _find_runs(Path(against))}
    bands = _bands(Path(against))
    name, other = Path(folder).name, Path(against).name
    lines = [f"| policy | violations ({name}) | violations ({other}) | difference (points) "
             f"| mean FID ({name}) | mean FID ({other}) | difference |"
             + (f" violations, band of {other} | mean FID, band of {other} | agrees |" if bands else ""),
             "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---|" if bands else "")]
    for policy in sorted(ours.keys() & theirs.keys(), key=_order_key):
        a, b = ours[policy], theirs[policy]
        fid_difference = None if a["mean_fid"] is None or b["mean_fid"] is None else a["mean_fid"] - b["mean_fid"]
        line = (f"| {policy} | {_fmt(a['slo_violation_ratio'], 100, '%')} "
                f"| {_fmt(b['slo_violation_ratio'], 100, '%')} "
                f"| {_fmt(a['slo_violation_ratio'] - b['slo_violation_ratio'], 100)} | {_fmt(a['mean_fid'])} "
                f"| {_fmt(b['mean_fid'])} | {_fmt(fid_difference)} |")
        band = bands.get(policy)
        if band is not None:
            fid_band = "–" if band.fid is None else f"{band.fid[0]:.2f}–{band.fid[1]:.2f}"
            verdict = "yes" if agrees(Point(a["slo_violation_ratio"], a["mean_fid"]), band) else "no"
            line += (f" {band.violations[0] * 100:.2f}–{band.violations[1] * 100:.2f} % | {fid_band} "
                     f"| {verdict} ({band.runs} runs) |")
        elif bands:
            line += " – | – | – |"
        lines.append(line)
    path = Path(folder) / "differences.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _bands(parent: Path) -> dict:
    """The band.json of each run under `parent`, by policy."""
    bands = {}
    for run in sorted(parent.iterdir()):
        if (run / "report.json").is_file() and (run / "band.json").is_file():
            policy = json.loads((run / "report.json").read_text())["policy"]
            bands[policy] = Band.from_json(json.loads((run / "band.json").read_text()))
    return bands


def _fmt(value: float | None, scale: float = 1.0, suffix: str = "") -> str:
    return "–" if value is None else f"{value * scale:.2f}{suffix}"


def _fmt_int(value: int | None) -> str:
    return "–" if value is None else str(value)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
