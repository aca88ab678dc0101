"""Offline: the quality of every cascade configuration, and the Pareto table the planner searches.

A quality table (`profiles/quality/<name>.quality.json`) holds the measured FID of each
configuration (light model, heavy model, r, d); it does not depend on the hardware. A Pareto
table (`profiles/quality/<profile>.pareto.json`) is built from a quality table and one profile's
latency curves by `scripts/build_pareto.py`. See docs/planner.md for the definitions.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import orjson
from pydantic import Field

from shared.profiles import PROFILES_DIR, Profile
from shared.schemas import Strict

QUALITY_DIR = PROFILES_DIR / "quality"
REFERENCE_BATCH = 1
COST_FORMULA = "cost_s = (1 - r) * lat_light(b) / b + h * lat_heavy(b) / b, b = reference_batch, h = r + (1 - r) * d"
# Costs and shares are compared after rounding, so that float noise neither breaks an exact tie
# ((1 - 0.2) * 1.3 + 0.36 * 13 and (1 - 0.3) * 1.3 + 0.37 * 13 are both 5.72) nor creates one.
DECIMALS = 9


def heavy_share(r: float, d: float) -> float:
    """The fraction of queries the heavy model serves: routed ones plus escalated ones."""
    return r + (1.0 - r) * d


class QualityRow(Strict):
    light_model: str
    heavy_model: str
    r: float = Field(ge=0.0, le=1.0, description="Fraction routed straight to heavy by the router.")
    d: float = Field(ge=0.0, le=1.0, description="Fraction of light outputs escalated by the judge.")
    fid: float = Field(gt=0.0)


class QualityTable(Strict):
    name: str
    description: str
    source: str
    models: list[str] = Field(description="The models it covers, from the lightest to the heaviest.")
    rows: list[QualityRow]


class ParetoRow(Strict):
    light_model: str
    heavy_model: str
    r: float = Field(ge=0.0, le=1.0)
    d: float = Field(ge=0.0, le=1.0)
    heavy_share: float = Field(ge=0.0, le=1.0)
    fid: float = Field(gt=0.0)
    cost_s: float = Field(ge=0.0, description="Expected GPU-seconds per query at the reference batch.")
    cost_frontier: bool = Field(description="Pareto-optimal in (cost_s, fid) within its pair.")
    load_frontier: bool = Field(description="Pareto-optimal in (light share, heavy share, chained, fid) "
                                            "within its pair.")

    @property
    def pair(self) -> tuple[str, str]:
        return (self.light_model, self.heavy_model)


class ParetoTable(Strict):
    profile: str
    quality_table: str
    models: list[str]
    reference_batch: int = Field(ge=1)
    cost_formula: str
    source: str
    rows: list[ParetoRow]

    def pairs(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys(row.pair for row in self.rows))

    def rows_of(self, pair: tuple[str, str]) -> list[ParetoRow]:
        return [row for row in self.rows if row.pair == pair]


def row_cost_s(profile: Profile, row: QualityRow, batch: int = REFERENCE_BATCH) -> float:
    light = profile.model(row.light_model).batch_latency_s(batch) / batch
    heavy = profile.model(row.heavy_model).batch_latency_s(batch) / batch
    return (1.0 - row.r) * light + heavy_share(row.r, row.d) * heavy


def dominated(points: np.ndarray) -> np.ndarray:
    """For each row of `points` (every column: lower is better), whether another row is at least
    as good in every column and better in one, or identical to it and earlier (duplicates keep
    their first occurrence)."""
    no_worse = (points[None, :, :] <= points[:, None, :]).all(axis=2)
    better = (points[None, :, :] < points[:, None, :]).any(axis=2)
    earlier = np.tri(len(points), k=-1, dtype=bool)
    return np.any(no_worse & (better | earlier), axis=1)


def cost_frontier(costs: np.ndarray, fids: np.ndarray) -> np.ndarray:
    """Rows not dominated in (cost, FID). Exact ties in both stay: they are different (r, d)
    settings with the same quality and price, and they load the two tiers differently."""
    points = np.column_stack([np.round(costs, DECIMALS), fids])
    no_worse = (points[None, :, :] <= points[:, None, :]).all(axis=2)
    better = (points[None, :, :] < points[:, None, :]).any(axis=2)
    return ~np.any(no_worse & better, axis=1)


def load_frontier(rows: list[QualityRow]) -> np.ndarray:
    """Rows that no other row of the pair beats for the planner in every situation.

    Row j beats row i when it sends no more of the demand to either tier, chains the two tiers
    (light, then heavy) only if i does too, and has no worse FID: then any allocation that serves
    i serves j within the same SLO. A scalar cost cannot decide this, because a cheaper row may
    load the light tier more; pruning by cost alone would make the planner miss optima."""
    points = np.array([[1.0 - row.r, heavy_share(row.r, row.d), float(chained(row.r, row.d)), row.fid]
                       for row in rows])
    points[:, :2] = np.round(points[:, :2], DECIMALS)
    return ~dominated(points)


def chained(r: float, d: float) -> bool:
    """Whether some queries pass through both tiers (light, then escalated to heavy)."""
    return r < 1.0 and d > 0.0


def build_table(quality: QualityTable, profile: Profile, batch: int = REFERENCE_BATCH) -> ParetoTable:
    """The Pareto table of `quality` on `profile`: per pair, every row on the cost frontier or on
    the load frontier, ordered by pair and then by cost."""
    usable = [row for row in quality.rows
              if row.light_model in profile.models and row.heavy_model in profile.models]
    pairs = list(dict.fromkeys((row.light_model, row.heavy_model) for row in usable))
    kept: list[ParetoRow] = []
    for pair in pairs:
        rows = [row for row in usable if (row.light_model, row.heavy_model) == pair]
        costs = np.array([row_cost_s(profile, row, batch) for row in rows])
        on_cost = cost_frontier(costs, np.array([row.fid for row in rows]))
        on_load = load_frontier(rows)
        r, d = np.array([row.r for row in rows]), np.array([row.d for row in rows])
        order = np.lexsort((d, r, costs.round(DECIMALS)))
        for i in order:
            if on_cost[i] or on_load[i]:
                kept.append(pareto_row(rows[i], costs[i], bool(on_cost[i]), bool(on_load[i])))
    return ParetoTable(profile=profile.name, quality_table=quality.name,
                       models=[m for m in quality.models if m in profile.models], reference_batch=batch,
                       cost_formula=COST_FORMULA,
                       source=f"profiles/quality/{quality.name}.quality.json on profiles/{profile.name}.json, "
                              f"scripts/build_pareto.py",
                       rows=kept)


def pareto_row(row: QualityRow, cost: float, on_cost: bool, on_load: bool) -> ParetoRow:
    return ParetoRow(light_model=row.light_model, heavy_model=row.heavy_model, r=row.r, d=row.d,
                     heavy_share=round(heavy_share(row.r, row.d), DECIMALS), fid=row.fid,
                     cost_s=round(float(cost), DECIMALS), cost_frontier=on_cost, load_frontier=on_load)


def quality_path(name: str) -> Path:
    return QUALITY_DIR / f"{name}.quality.json"


def table_path(profile_name: str) -> Path:
    return QUALITY_DIR / f"{profile_name}.pareto.json"


@lru_cache(maxsize=8)
def load_quality(name: str) -> QualityTable:
    path = quality_path(name)
    if not path.exists():
        known = sorted(p.name.removesuffix(".quality.json") for p in QUALITY_DIR.glob("*.quality.json"))
        raise FileNotFoundError(f"no quality table {name!r}; known: {known}")
    return QualityTable.model_validate(orjson.loads(path.read_bytes()))


@lru_cache(maxsize=16)
def load_table(profile_name: str) -> ParetoTable:
    """The Pareto table built for a profile (by the profile's name)."""
    path = table_path(profile_name)
    if not path.exists():
        known = sorted(p.name.removesuffix(".pareto.json") for p in QUALITY_DIR.glob("*.pareto.json"))
        raise FileNotFoundError(
            f"no Pareto table for profile {profile_name!r}: planning needs measured FIDs of its models' "
            f"cascades (docs/planner.md says which data exist). Profiles with a table: {known}")
    return ParetoTable.model_validate(orjson.loads(path.read_bytes()))


def table_json(table: QualityTable | ParetoTable) -> bytes:
    """Pretty JSON with one row per line: readable, and diffs show which rows changed."""
    header = table.model_dump(mode="json", exclude={"rows"})
    head = orjson.dumps(header, option=orjson.OPT_INDENT_2).decode().rstrip()[:-1].rstrip()
    rows = ",\n".join("    " + orjson.dumps(row.model_dump(mode="json")).decode() for row in table.rows)
    return f'{head},\n  "rows": [\n{rows}\n  ]\n}}\n'.encode()
