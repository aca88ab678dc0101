"""Build the quality tables and the planner's Pareto tables under profiles/quality/ from the
team's reference data (run once; the outputs are committed). See docs/planner.md.

  hadis-imagenet.quality.json  FID of every (pair, r, d) of the four HADIS models
                               (diffserve-2/discriminator/config_results_hybrid.csv)
  diffserve.quality.json       FID of DiffServe's three judge-only cascades
                               (derived/diffserve_fid_vs_light_ratio.csv)
  <profile>.pareto.json        the Pareto table of a profile: paper-l40s, paper-l40s-x10 and h200
                               use hadis-imagenet, diffserve-a100 uses diffserve

It stops if the data disagree with what it expects (the CSV's heavy share or latency columns do
not follow from r, d and the paper's latencies), and prints how the paper-l40s table compares
with the paper's published 49-row `hybrid` table.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.policies.pareto import (  # noqa: E402
    QUALITY_DIR,
    ParetoTable,
    QualityRow,
    QualityTable,
    build_table,
    heavy_share,
    quality_path,
    row_cost_s,
    table_json,
    table_path,
)
from shared.profiles import load_profile  # noqa: E402

HYBRID_CSV = "diffserve/diffserve-2/discriminator/config_results_hybrid.csv"
PAPER_TABLES = "diffserve/derived/hadis_cascade_tables.csv"
DIFFSERVE_FID = "diffserve/derived/diffserve_fid_vs_light_ratio.csv"
HADIS_MODELS = ("sdxl-lightning", "sd35-large-turbo", "sd35-medium", "sd35-large")  # reference_index 0..3
# DiffServe's cascade key -> (light, heavy) profile names (docs/profiles.md, diffserve-a100).
DIFFSERVE_CASCADES = {
    "sdturbo": ("sd-turbo", "sd-v15"),
    "sdxs": ("sdxs", "sd-v15"),
    "sdxlltn": ("sdxl-lightning", "sdxl"),
}
DIFFSERVE_MODELS = ("sdxs", "sd-turbo", "sdxl-lightning", "sd-v15", "sdxl")
# Which quality table each profile plans with: FIDs from different prompt sets and references
# are not comparable, so a profile uses exactly one. tiny-cpu has none (random weights).
PROFILE_QUALITY = {
    "paper-l40s": "hadis-imagenet",
    "paper-l40s-x10": "hadis-imagenet",
    "h200": "hadis-imagenet",
    "diffserve-a100": "diffserve",
}


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cite(data: Path, relative: str) -> str:
    return f"../shared/data/{relative} (md5 {md5(data / relative)})"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def hadis_model_names() -> dict[int, str]:
    """reference_index -> model name, from the paper profile (the CSV's model indices)."""
    profile = load_profile("paper-l40s")
    names = {model.reference_index: name for name, model in profile.models.items()
             if model.reference_index is not None}
    if tuple(names[i] for i in sorted(names)) != HADIS_MODELS:
        raise SystemExit(f"paper-l40s reference indices changed: {names}")
    return names


def hadis_quality(data: Path) -> QualityTable:
    names = hadis_model_names()
    paper = load_profile("paper-l40s")
    rows = []
    for line in read_csv(data / HYBRID_CSV):
        row = QualityRow(light_model=names[int(line["light_model"])], heavy_model=names[int(line["heavy_model"])],
                         r=float(line["router_ratio"]), d=float(line["disc_ratio"]), fid=float(line["fid"]))
        check_hybrid_line(line, row, row_cost_s(paper, row))
        rows.append(row)
    return QualityTable(
        name="hadis-imagenet",
        description="FID (clean-fid vs ImageNet, 20k images: 5,000 ImageNet-caption prompts x 4) of every hybrid "
                    "configuration of the four HADIS models: 6 pairs x r x d on an 11 x 11 grid. r: the router's "
                    "top-r fraction by the paper's rule-based score goes to heavy; d: the judge's lowest-d fraction "
                    "of the remaining light images is escalated. r = 0, d = 0 is the light model alone; r = 1 the "
                    "heavy model alone.",
        source=f"{cite(data, HYBRID_CSV)}, columns light_model/heavy_model (model index = reference_index: "
               f"0 sdxl-lightning, 1 sd35-large-turbo, 2 sd35-medium, 3 sd35-large), router_ratio (r), "
               f"disc_ratio (d), fid; from Tung-I/diffserve-2 @ 538dc5d discriminator/config_results_hybrid.csv",
        models=list(HADIS_MODELS),
        rows=rows,
    )


def check_hybrid_line(line: dict[str, str], row: QualityRow, cost: float) -> None:
    """The CSV's `threshold` is h and its `latency` the expected seconds per query at batch 1 on
    the L40S: both must follow from r, d and the paper profile, or the columns mean something else."""
    if abs(float(line["threshold"]) - heavy_share(row.r, row.d)) > 1e-3:
        raise SystemExit(f"threshold is not r + (1 - r) d: {line}")
    if abs(float(line["latency"]) - cost) > 0.006:
        raise SystemExit(f"latency is not (1 - r) lat_light + h lat_heavy: {line} vs {cost:.4f}")


def diffserve_quality(data: Path) -> QualityTable:
    rows = []
    for line in read_csv(data / DIFFSERVE_FID):
        light, heavy = DIFFSERVE_CASCADES[line["cascade"]]
        served_by_light = float(line["ratio_served_by_light"])
        d = round(1.0 - served_by_light, 2)
        rows.append(QualityRow(light_model=light, heavy_model=heavy, r=0.0, d=d, fid=float(line["fid"])))
        if served_by_light == 0.0:
            # The heavy model alone: the same images as d = 1, without running the light model.
            rows.append(QualityRow(light_model=light, heavy_model=heavy, r=1.0, d=0.0, fid=float(line["fid"])))
    return QualityTable(
        name="diffserve",
        description="FID of DiffServe's judge-only cascades (r = 0) against the fraction the light model serves "
                    "(d = 1 - that fraction), DiffServe's own evaluation: another prompt set and reference than "
                    "hadis-imagenet, so not comparable with it. The r = 1 rows (heavy alone) repeat the d = 1 FID.",
        source=f"{cite(data, DIFFSERVE_FID)} (fid_qaware arrays of qizhengyang98/DiffServe @ 7f2e4d7 "
               f"plotting/plot_results.py); cascades: "
               + ", ".join(f"{key} = {light} -> {heavy}" for key, (light, heavy) in DIFFSERVE_CASCADES.items()),
        models=list(DIFFSERVE_MODELS),
        rows=rows,
    )


# --- comparison with the paper's published table --------------------------------------------------


def paper_hybrid_rows(data: Path) -> list[tuple[str, str, float, float, float]]:
    names = hadis_model_names()
    return [(names[int(float(line["light"]))], names[int(float(line["heavy"]))], float(line["router_thres"]),
             float(line["conf_thres"]), float(line["fid"]))
            for line in read_csv(data / PAPER_TABLES) if line["table"] == "hybrid"]


def compare_with_paper(table: ParetoTable, quality: QualityTable, paper: list[tuple]) -> None:
    adjacent = set(pairwise(HADIS_MODELS))
    ours = {(row.light_model, row.heavy_model, row.r, row.d): row for row in table.rows
            if row.cost_frontier and row.pair in adjacent}
    theirs = {row[:4]: row[4] for row in paper}
    common = ours.keys() & theirs.keys()
    print(f"\npaper `hybrid`: {len(theirs)} rows; ours on the cost frontier of the adjacent pairs: {len(ours)}; "
          f"in common: {len(common)}")
    costs = {key: row.cost_s for key, row in ours.items()}
    all_rows = {(row.light_model, row.heavy_model, row.r, row.d): row for row in quality.rows}
    for key in sorted(theirs.keys() - ours.keys()):
        cost = row_cost_s(load_profile(table.profile), all_rows[key])
        better = [k for k, row in ours.items()
                  if k[:2] == key[:2] and row.cost_s <= cost + 1e-9 and row.fid < theirs[key]]
        print(f"  paper only {key} fid {theirs[key]} cost {cost:.4f}: dominated in its pair by {better}")
    for key in sorted(ours.keys() - theirs.keys()):
        row = ours[key]
        tie = sorted(k for k in common if costs[k] == row.cost_s and theirs[k] == row.fid)
        cheaper = sorted(k for k in common if k[:2] != key[:2] and costs[k] <= row.cost_s and theirs[k] <= row.fid)
        why = f"same cost and FID as paper row {tie}" if tie else f"dominated across pairs by {cheaper[:2]}"
        print(f"  ours only  {key} fid {row.fid} cost {row.cost_s:.4f}: {why}")


def write(path: Path, table: QualityTable | ParetoTable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(table_json(table))
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} ({len(table.rows)} rows)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    qualities = {table.name: table for table in (hadis_quality(args.data), diffserve_quality(args.data))}
    for quality in qualities.values():
        write(quality_path(quality.name), quality)
    tables = {}
    for profile_name, quality_name in PROFILE_QUALITY.items():
        tables[profile_name] = build_table(qualities[quality_name], load_profile(profile_name))
        write(table_path(profile_name), tables[profile_name])
    compare_with_paper(tables["paper-l40s"], qualities["hadis-imagenet"], paper_hybrid_rows(args.data))
    print(f"\ntables in {QUALITY_DIR.relative_to(REPO)}")


if __name__ == "__main__":
    main()
