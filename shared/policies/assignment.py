"""Which GPU serves which tier: the controller turns a plan's GPU counts into an assignment,
moving as few GPUs as it can (a move stops a worker and loads another model)."""

from __future__ import annotations

from shared.schemas import Tier


def assign(gpus: list[str], light_gpus: int, heavy_gpus: int, current: dict[str, Tier]) -> dict[str, Tier]:
    """GPU id -> tier for `light_gpus` light and `heavy_gpus` heavy workers on `gpus` (in order of
    preference). GPUs keep their current tier while that tier still wants GPUs; counts beyond
    the GPUs available are cut, heavy first."""
    heavy_gpus = min(heavy_gpus, len(gpus))
    light_gpus = min(light_gpus, len(gpus) - heavy_gpus)
    wanted = {Tier.light: light_gpus, Tier.heavy: heavy_gpus}
    assignment: dict[str, Tier] = {}
    for gpu in gpus:
        tier = current.get(gpu)
        if tier is not None and wanted[tier] > 0:
            assignment[gpu] = tier
            wanted[tier] -= 1
    for gpu in gpus:
        if gpu in assignment:
            continue
        for tier in (Tier.heavy, Tier.light):
            if wanted[tier] > 0:
                assignment[gpu] = tier
                wanted[tier] -= 1
                break
    return assignment


def moves(before: dict[str, Tier], after: dict[str, Tier]) -> int:
    """How many GPUs change what they serve (start, stop or switch tier)."""
    return sum(1 for gpu in set(before) | set(after) if before.get(gpu) != after.get(gpu))
