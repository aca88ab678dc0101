"""Model profiles: what each model is and how long a batch of it takes.

A profile is a JSON file under `profiles/` (see docs/profiles.md for where each
number came from). Batch latency comes from measured points, interpolated
linearly between them and extrapolated from the last two: never a fixed discount.

`profiles/` (with the quality and Pareto tables, the reference prompts and the learned router)
is package data of `hadis`: `hadis/profiles` links to it in a checkout, and the wheel carries a
copy, so one `importlib.resources` lookup finds it in both; `HADIS_PROFILES_DIR` replaces it.
"""

from __future__ import annotations

import bisect
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import orjson
from pydantic import Field, field_validator

from shared.schemas import Strict


def profiles_dir() -> Path:
    """HADIS_PROFILES_DIR when set (a folder laid out as profiles/), else the packaged one.

    Read from the environment, not from Settings: the settings themselves validate HADIS_PROFILE
    against this folder, and the processes a service starts inherit the variable.
    """
    configured = os.environ.get("HADIS_PROFILES_DIR")
    if configured:
        return Path(configured).expanduser()
    packaged = resources.files("hadis") / "profiles"
    if not isinstance(packaged, Path):  # a zip import: the readers below open files by path
        raise RuntimeError(f"hadis's profiles are not a folder ({packaged!r}): install hadis unpacked "
                           "(pip does), or set HADIS_PROFILES_DIR to a copy of profiles/")
    return packaged


PROFILES_DIR = profiles_dir()

Family = Literal["sd", "sdxl", "sd3"]


class ModelProfile(Strict):
    name: str
    family: Family
    hf_id: str | None = None
    unet_checkpoint: str | None = Field(default=None, description="A replacement UNet (SDXL-Lightning).")
    steps: int = Field(ge=1, le=1000)
    guidance: float = Field(ge=0.0)
    resolution: int = Field(ge=64, le=2048)
    fid: float | None = Field(default=None, description="Stand-alone FID, when measured.")
    reference_index: int | None = Field(default=None, description="Column of the reference judge scores.")
    latency_ms: dict[int, float] = Field(default_factory=dict, description="Batch size -> ms per batch.")
    max_batch: int | None = None
    preview_decoder: str | None = Field(
        default=None, description="AutoencoderTiny weights that decode its previews (a Hub repository such as "
                                  "madebyollin/taesd, taesdxl or taesd3, or a local directory); None: the diffusers "
                                  "backend makes no previews for it (docs/jobs.md, Previews).")
    load_s: float | None = Field(default=None, ge=0, description="Seconds to load the model from the host's cache "
                                 "onto a GPU (scripts/profile_gpu.py measures it); None: not measured, planned as 0.")

    @field_validator("latency_ms")
    @classmethod
    def latencies_positive(cls, points: dict[int, float]) -> dict[int, float]:
        if any(b < 1 or ms <= 0 for b, ms in points.items()):
            raise ValueError("latency points need batch >= 1 and ms > 0")
        return dict(sorted(points.items()))

    def batch_latency_s(self, batch: int) -> float:
        """Seconds for one batch of `batch` images, from the measured points."""
        if not self.latency_ms:
            raise ValueError(f"model {self.name} has no latency profile")
        sizes = list(self.latency_ms)
        values = list(self.latency_ms.values())
        if len(sizes) == 1:
            return values[0] * batch / sizes[0] / 1000.0
        i = bisect.bisect_left(sizes, batch)
        if i < len(sizes) and sizes[i] == batch:
            return values[i] / 1000.0
        lo = min(max(i - 1, 0), len(sizes) - 2)
        b0, b1, v0, v1 = sizes[lo], sizes[lo + 1], values[lo], values[lo + 1]
        return max(v0 + (v1 - v0) * (batch - b0) / (b1 - b0), 1e-3) / 1000.0


class Profile(Strict):
    name: str
    description: str = ""
    source: str = ""
    device: str = ""
    time_unit_note: str = ""
    models: dict[str, ModelProfile]
    default_light: str
    default_heavy: str

    def model(self, name: str) -> ModelProfile:
        try:
            return self.models[name]
        except KeyError:
            raise KeyError(f"profile {self.name} has no model {name!r}; it has {sorted(self.models)}") from None


def profile_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".json" and candidate.exists():
        return candidate
    path = PROFILES_DIR / f"{name_or_path}.json"
    if not path.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.json"))
        raise FileNotFoundError(f"no profile {name_or_path!r} in {PROFILES_DIR}; known: {known}")
    return path


@lru_cache(maxsize=16)
def load_profile(name_or_path: str) -> Profile:
    return Profile.model_validate(orjson.loads(profile_path(name_or_path).read_bytes()))
