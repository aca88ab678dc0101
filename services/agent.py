"""The agent: one per host. It owns the host's GPUs (real CUDA devices, or emulated ones on a
CPU host), registers them with the cluster, and keeps one worker process per GPU serving the
tier the plan assigns to it: it starts, stops and moves workers between tiers. A worker that
is moved finishes the batches it committed to (SIGTERM: graceful stop, the rest requeued) before
the GPU gets its new worker; it is killed only once they are overdue. A worker that dies is
restarted with backoff (shared/policies/restarts.py), never given up on. Each GPU's workers carry
their busy-time counters from one to the next through a file in a folder of the agent's
(shared/busy_carry.py), so a tier change does not reset them."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared import metrics
from shared.logging import get_logger
from shared.policies.restarts import RestartBackoff
from shared.schemas import Tier
from shared.service import Service, run
from shared.store import owner_id

log = get_logger(__name__)

TICK_S = 0.5
# A stopping worker is killed this long after both its grace and the end of the batches it had
# committed to (its heartbeat's busy_until): a hung worker still goes, a slow batch is not cut.
KILL_AFTER_S = 10.0


@dataclass
class WorkerProcess:
    gpu: str
    tier: Tier
    process: subprocess.Popen
    instance: str = ""  # the token of its claims' owner id (shared.store.owner_id)
    stopping_since: float | None = None
    started_at: float = field(default_factory=time.monotonic)  # for the restart backoff
    drain_until: float = 0.0  # wall clock: when the batches it committed to end (its heartbeats, once stopping)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Agent:
    service: Service
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    restarts: dict[str, RestartBackoff] = field(default_factory=dict)  # per GPU: its worker's deaths
    dead_owners: list[str] = field(default_factory=list)  # claims' owners that died, to release
    carry_dir: Path | None = None  # the workers' busy-time carry files (made at the first start)

    @property
    def gpus(self) -> list[str]:
        return self.service.settings.owned_gpus()

    def start_worker(self, gpu: str, tier: Tier) -> None:
        instance = secrets.token_hex(4)
        env = {**self.service.settings.as_env(), "HADIS_TIER": tier.value, "HADIS_GPU": gpu,
               "HADIS_WORKER_INSTANCE": instance, "HADIS_BUSY_CARRY_FILE": str(self.carry_file(gpu))}
        if gpu.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = gpu.removeprefix("cuda")
        if self.service.settings.metrics_port is not None:
            env["HADIS_METRICS_PORT"] = str(self.service.settings.metrics_port + 1 + self.gpus.index(gpu))
        process = subprocess.Popen([sys.executable, "-m", "services.worker"], env={**os.environ, **env},
                                   preexec_fn=stop_with_parent)
        self.workers[gpu] = WorkerProcess(gpu, tier, process, instance)
        log.info("worker_started", gpu=gpu, tier=tier.value, pid=process.pid)

    def carry_file(self, gpu: str) -> Path:
        """Where the GPU's worker leaves its busy-time counters for the next one (by the GPU's index:
        a GPU's name is the operator's, not a file name)."""
        if self.carry_dir is None:
            self.carry_dir = Path(tempfile.mkdtemp(prefix="hadis-agent-"))
        return self.carry_dir / f"gpu{self.gpus.index(gpu)}.busy.json"

    def stop_worker(self, worker: WorkerProcess) -> None:
        if worker.stopping_since is None:
            worker.stopping_since = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)
            log.info("worker_stopping", gpu=worker.gpu, tier=worker.tier.value, pid=worker.process.pid)
        elif self.overdue(worker):
            worker.process.kill()
            log.warning("worker_killed", gpu=worker.gpu, pid=worker.process.pid,
                        drain_until=round(worker.drain_until, 3))

    def overdue(self, worker: WorkerProcess) -> bool:
        """Past its grace and past the end of its committed batches, each by KILL_AFTER_S. A fixed
        grace alone cut batches short: an sd35-large batch of 2 takes 48.6 s on an L40S, and a
        worker moved while it ran was killed after 40 s; its jobs came back too late and were shed."""
        assert worker.stopping_since is not None
        grace_over = time.monotonic() - worker.stopping_since > self.service.settings.shutdown_grace_s + KILL_AFTER_S
        return grace_over and time.time() > worker.drain_until + KILL_AFTER_S

    async def note_drains(self) -> None:
        """Read when each stopping worker's committed batches end, from its heartbeats (it admits
        nothing once stopping, so the figure is bounded: PIPELINE_DEPTH batches)."""
        stopping = [worker for worker in self.workers.values() if worker.stopping_since is not None]
        if not stopping:
            return
        try:
            records = {record.get("gpu"): record for record in await self.service.store.workers()}
        except Exception as error:  # the grace alone bounds the stop meanwhile
            log.warning("worker_records_unread", error=str(error))
            return
        for worker in stopping:
            busy_until = records.get(worker.gpu, {}).get("busy_until")
            if isinstance(busy_until, int | float):
                worker.drain_until = max(worker.drain_until, float(busy_until))

    def may_restart(self, gpu: str, now: float) -> bool:
        """The GPU's worker is not waiting out its backoff after a death."""
        backoff = self.restarts.get(gpu)
        return backoff is None or backoff.ready(now)

    def reconcile(self, assignment: dict[str, Tier]) -> None:
        """Make each owned GPU's worker match the plan's assignment."""
        now = time.monotonic()
        for gpu in self.gpus:
            wanted = assignment.get(gpu)
            worker = self.workers.get(gpu)
            if worker is not None and not worker.alive:
                if worker.stopping_since is None:
                    backoff = self.restarts.get(gpu, RestartBackoff()).after_death(now, worker.started_at)
                    self.restarts[gpu] = backoff
                    log.warning("worker_died", gpu=gpu, code=worker.process.returncode, deaths=backoff.deaths,
                                restart_in_s=round(backoff.delay_s, 3))
                    if backoff.at_cap:  # once per death, so at most once per cap_s
                        log.warning("worker_keeps_dying", gpu=gpu, deaths=backoff.deaths,
                                    restart_in_s=round(backoff.delay_s, 3))
                self.dead_owners.append(owner_id(gpu, worker.process.pid, worker.instance))
                del self.workers[gpu]
                worker = None
            if worker is not None and worker.tier != wanted:
                self.stop_worker(worker)
            elif worker is None and wanted is not None and self.may_restart(gpu, now):
                self.start_worker(gpu, wanted)

    async def run(self) -> None:
        settings = self.service.settings
        last_registered = 0.0
        while not self.service.stopping.is_set():
            # Fail static: a Redis outage stops the registration and the plan's updates, never the
            # workers, which keep serving the current plan.
            if time.monotonic() - last_registered >= settings.heartbeat_s:
                try:
                    await self.service.store.register_agent(settings.host, self.gpus, ttl_s=3 * settings.heartbeat_s)
                    last_registered = time.monotonic()
                    metrics.mark_ready("agent")  # its container's health check: registered, so planned for
                except Exception as error:
                    log.warning("agent_registration_failed", error=str(error))
            self.reconcile(self.service.plans.current.assignment)
            await self.note_drains()
            await self.release_dead_owners()
            try:
                await asyncio.wait_for(self.service.stopping.wait(), timeout=TICK_S)
            except TimeoutError:
                pass
        metrics.mark_ready("agent", False)
        await self.stop_all()
        try:  # the controller drops this host's GPUs from the plan now, not after HADIS_GPU_ABSENT_S
            await self.service.store.register_agent_left(settings.host, self.gpus)
        except Exception as error:
            log.warning("agent_departure_not_recorded", error=str(error))

    async def release_dead_owners(self) -> None:
        """A worker that died holds no claims: they pass to the next worker now, not when its
        liveness key expires (3 heartbeats later)."""
        while self.dead_owners:
            try:
                await self.service.store.forget_owner(self.dead_owners[0])
            except Exception as error:  # the key expires by itself
                log.warning("owner_release_failed", error=str(error))
            self.dead_owners.pop(0)

    async def stop_all(self) -> None:
        for worker in self.workers.values():
            self.stop_worker(worker)
        give_up_at = time.monotonic() + self.service.settings.shutdown_grace_s + 10
        while any(worker.alive for worker in self.workers.values()) and time.monotonic() < give_up_at:
            await asyncio.sleep(0.2)
        for worker in self.workers.values():
            if worker.alive:
                worker.process.kill()
        if self.carry_dir is not None:  # the next agent's workers start their counters from 0
            shutil.rmtree(self.carry_dir, ignore_errors=True)


def stop_with_parent() -> None:
    """In the worker, before it runs: SIGTERM (a graceful stop) when the agent dies, so a killed
    agent leaves no worker behind for its successor to double up on the GPU (Linux)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


async def main(service: Service) -> None:
    await Agent(service).run()


if __name__ == "__main__":
    run("agent", main)
