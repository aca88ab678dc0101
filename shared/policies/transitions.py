"""Plans that pay for their transitions.

A plan's *structure* is its model pair and how many GPUs each tier has. Changing it is not free: a
GPU that moves to the other tier gets a new worker process (the agent stops the old one, starts
another: `worker_start_s`, longer when many start at once on one host), and every GPU whose tier's
model changes loads that model (the profile's `load_s` per model). While it does, that GPU serves
nothing. The operating point within a structure (r, d, batch sizes) changes without loading
anything, so it is free and follows the queue at once (Planner.plan_within).

The rule (`worth_switching`): over a horizon, count the jobs each choice can serve at the sustained
demand. Keeping the structure serves min(capacity now, demand) for the whole horizon; switching
serves min(capacity during the switch, demand) while the moving GPUs load, then min(new capacity,
demand). When the current structure keeps up with the demand, a switch (for quality, or for margin)
is made only if the GPUs that keep serving through it keep up too: a switch must not make its own
backlog. When it does not keep up, the switch is made if it serves more over the horizon, the lost
capacity included. A burst never reaches this rule: its demand is not sustained
(shared/policies/sustained_demand.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.profiles import Profile


@dataclass(frozen=True)
class Structure:
    light_model: str
    heavy_model: str
    light_gpus: int
    heavy_gpus: int

    @classmethod
    def of(cls, fields: Mapping[str, Any] | Any) -> Structure:
        """From plan fields (a dict) or a Plan."""
        if isinstance(fields, Mapping):
            return cls(str(fields["light_model"]), str(fields["heavy_model"]), int(fields["light_gpus"]),
                       int(fields["heavy_gpus"]))
        return cls(fields.light_model, fields.heavy_model, fields.light_gpus, fields.heavy_gpus)

    @property
    def pair(self) -> tuple[str, str]:
        return self.light_model, self.heavy_model

    def runs_on(self, gpus: int) -> bool:
        """Whether it holds some GPUs and no more than the fleet's `gpus`: one the policy can keep
        or move from (a plan of GPUs since gone, or of none yet, is replaced outright)."""
        return 0 < self.light_gpus + self.heavy_gpus <= gpus

    @property
    def split(self) -> tuple[int, int]:
        """GPUs per tier (light, heavy): two structures of one split differ only in the models their
        GPUs load, a swap in place that starts no worker."""
        return self.light_gpus, self.heavy_gpus


@dataclass(frozen=True)
class Transition:
    """What a change of structure costs: the GPUs that stop serving while they load (a new worker
    process for those that change tier), what serves through it, and how long it lasts."""

    new_workers: int  # GPUs that change tier (or join): a process start and a model load
    reloads: int  # GPUs that stay in their tier but load its new model
    serving: Structure  # the pair and GPUs per tier that serve meanwhile
    seconds: float  # until the last moving GPU serves again

    @property
    def moving(self) -> int:
        return self.new_workers + self.reloads


def load_s(profile: Profile, model: str) -> float:
    """A model's load time from the host's cache, as profiled (0 when not measured)."""
    if model not in profile.models:
        return 0.0
    return profile.model(model).load_s or 0.0


def start_s(starting: int, worker_start_s: float, worker_start_each_s: float) -> float:
    """A worker's start when `starting` start at once on one host (they share its CPUs: 16 at once
    took 21-23 s on a 2-core machine, one about 3 s)."""
    return worker_start_s + worker_start_each_s * max(starting - 1, 0)


def transition(current: Structure, new: Structure, profile: Profile, *, worker_start_s: float,
               worker_start_each_s: float) -> Transition:
    """The cost of going from `current` to `new` (GPUs are moved as shared/policies/assignment.py
    moves them: the fewest that change tier). The GPUs that stay in their tier serve through it:
    with the new pair once their reloads are done, so with the new pair throughout when the loads
    take no time (an unmeasured profile, the emulated models), else with the old pair, and only on
    the tier whose model does not change (the conservative reading)."""
    gains = {"light": new.light_gpus - current.light_gpus, "heavy": new.heavy_gpus - current.heavy_gpus}
    moved = max(gains["light"], 0) + max(gains["heavy"], 0)
    stay_light = min(current.light_gpus, new.light_gpus)
    stay_heavy = min(current.heavy_gpus, new.heavy_gpus)
    light_changes, heavy_changes = current.light_model != new.light_model, current.heavy_model != new.heavy_model
    reload_s = max([load_s(profile, new.light_model)] * (light_changes and stay_light > 0)
                   + [load_s(profile, new.heavy_model)] * (heavy_changes and stay_heavy > 0), default=0.0)
    seconds = reload_s
    if moved:
        gaining = [model for model, tier in ((new.light_model, "light"), (new.heavy_model, "heavy")) if gains[tier] > 0]
        seconds = max(seconds, start_s(moved, worker_start_s, worker_start_each_s)
                      + max(load_s(profile, model) for model in gaining))
    if reload_s == 0:
        serving = Structure(new.light_model, new.heavy_model, stay_light, stay_heavy)
    else:
        serving = Structure(current.light_model, current.heavy_model, 0 if light_changes else stay_light,
                            0 if heavy_changes else stay_heavy)
    return Transition(new_workers=moved, reloads=stay_light * light_changes + stay_heavy * heavy_changes,
                      serving=serving, seconds=seconds)


def stagger(current: Structure, target: Structure, max_moving: int) -> Structure:
    """The next step from `current` towards `target`: the target's pair (a model swap in place
    restarts nothing), GPUs new to the plan where the target wants them, and at most `max_moving`
    of the GPUs already serving changing tier; the rest serve meanwhile and move in later steps
    (make before break)."""
    added = max(target.light_gpus + target.heavy_gpus - current.light_gpus - current.heavy_gpus, 0)
    need_light, need_heavy = target.light_gpus - current.light_gpus, target.heavy_gpus - current.heavy_gpus
    light, heavy = current.light_gpus, current.heavy_gpus
    if need_light > 0:  # new GPUs first, then heavy ones moved over
        from_new = min(need_light, added)
        moved = min(need_light - from_new, max_moving, heavy)
        light, heavy = light + from_new + moved, heavy - moved + (added - from_new)
    elif need_heavy > 0:
        from_new = min(need_heavy, added)
        moved = min(need_heavy - from_new, max_moving, light)
        light, heavy = light - moved + (added - from_new), heavy + from_new + moved
    else:  # both tiers shrink (GPUs left the plan): nothing to move
        light, heavy = target.light_gpus, target.heavy_gpus
    return Structure(target.light_model, target.heavy_model, light, heavy)


@dataclass(frozen=True)
class Verdict:
    switch: bool
    why: str
    served_keep: float  # jobs over the horizon
    served_switch: float


def backlog_wait_s(*, new_qps: float, during_qps: float, demand_qps: float, switch_s: float) -> float:
    """The longest a job waits because of a switch: the backlog it builds while its GPUs load,
    drained at the new plan's spare capacity (inf when it has none)."""
    backlog = max(demand_qps - during_qps, 0.0) * switch_s
    if backlog <= 0:
        return 0.0
    spare = new_qps - demand_qps
    return switch_s + backlog / spare if spare > 0 else float("inf")


def worth_switching(*, keep_qps: float, new_qps: float, during_qps: float, demand_qps: float, switch_s: float,
                    horizon_s: float, slack_s: float = 0.0) -> Verdict:
    """Whether to change structure (see the module's docstring); capacities and demand in jobs/s.
    `slack_s`: how long a job may wait and still meet its SLO under the new plan (the SLO less the
    new plan's batch path): a switch whose backlog drains within it costs no deadline."""
    switch_s = min(max(switch_s, 0.0), horizon_s)

    def served(capacity: float, seconds: float) -> float:
        return min(capacity, demand_qps) * seconds

    keep = served(keep_qps, horizon_s)
    switch = served(during_qps, switch_s) + served(new_qps, horizon_s - switch_s)
    if keep_qps >= demand_qps:
        if during_qps >= demand_qps or switch_s == 0:
            return Verdict(True, "the GPUs serving through the switch keep up", keep, switch)
        wait = backlog_wait_s(new_qps=new_qps, during_qps=during_qps, demand_qps=demand_qps, switch_s=switch_s)
        if wait <= slack_s:
            return Verdict(True, f"its backlog drains in {wait:.3g} s, within the SLO's slack", keep, switch)
        return Verdict(False, f"the switch would leave {during_qps:.3g} qps for {demand_qps:.3g} qps "
                              f"for {switch_s:.3g} s (jobs would wait {wait:.3g} s)", keep, switch)
    if switch > keep:
        return Verdict(True, f"serves {switch:.0f} jobs in {horizon_s:g} s instead of {keep:.0f}", keep, switch)
    return Verdict(False, f"the switch costs more than it brings in {horizon_s:g} s ({switch:.0f} jobs served "
                          f"instead of {keep:.0f})", keep, switch)


def changing_gpus(before: Mapping[str, str], after: Mapping[str, str], before_pair: tuple[str, str] | None,
                  after_pair: tuple[str, str]) -> dict[str, tuple[str, str]]:
    """GPU -> (tier, model) it must serve after a plan change, for the GPUs whose worker changes
    tier or model (assignments map GPU -> tier)."""
    def model(pair: tuple[str, str] | None, tier: str | None) -> str | None:
        return None if pair is None or tier is None else pair[0] if tier == "light" else pair[1]

    return {gpu: (tier, model(after_pair, tier) or "") for gpu, tier in after.items()
            if (before.get(gpu), model(before_pair, before.get(gpu))) != (tier, model(after_pair, tier))}


@dataclass
class Switch:
    """A published change of structure, from its plan until every moved GPU serves again."""

    version: int
    started: float
    expected_s: float  # as priced (transition().seconds)
    waiting: dict[str, tuple[str, str]]  # GPU -> the (tier, model) its worker must report
    ready: dict[str, float] = field(default_factory=dict)  # GPU -> seconds until it did

    @property
    def realised_s(self) -> float:
        return max(self.ready.values(), default=0.0)

    @property
    def dark_gpu_s(self) -> float:
        """GPU-seconds that served nothing: the switch's realised cost."""
        return sum(self.ready.values())


class SwitchWatch:
    """Follows switches through the workers' heartbeats (tier and model per GPU) to measure what each
    realised: when its last GPU served again, and the GPU-seconds lost. A newer switch replaces one
    still in progress (it is reported as superseded)."""

    def __init__(self) -> None:
        self.current: Switch | None = None

    def start(self, switch: Switch) -> Switch | None:
        """Begin following `switch`; the one it supersedes, if any."""
        superseded, self.current = self.current, (switch if switch.waiting else None)
        return superseded

    def update(self, now: float, workers: list[dict[str, Any]]) -> Switch | None:
        """The switch, once all its GPUs report their new tier and model (else None)."""
        switch = self.current
        if switch is None:
            return None
        serving = {worker.get("gpu"): (worker.get("tier"), worker.get("model")) for worker in workers}
        for gpu, wanted in switch.waiting.items():
            if gpu not in switch.ready and serving.get(gpu) == wanted:
                switch.ready[gpu] = now - switch.started
        if len(switch.ready) < len(switch.waiting):
            return None
        self.current = None
        return switch
