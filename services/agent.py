"""The agent: one per host. It owns the host's GPUs (real CUDA devices, or emulated ones on a
CPU host), registers them with the cluster, and keeps one worker process per GPU serving the
tier the plan assigns to it: it starts, stops and moves workers between tiers. A worker that
is moved finishes its batch (SIGTERM: graceful stop, the rest requeued) before the GPU gets
its new worker. A worker that dies is restarted, at most MAX_RESTARTS times a minute."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from shared.logging import get_logger
from shared.schemas import Tier
from shared.service import Service, run

log = get_logger(__name__)

TICK_S = 0.5
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


@dataclass
class WorkerProcess:
    gpu: str
    tier: Tier
    process: subprocess.Popen
    stopping_since: float | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Agent:
    service: Service
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    restarts: dict[str, list[float]] = field(default_factory=dict)

    @property
    def gpus(self) -> list[str]:
        return self.service.settings.owned_gpus()

    def start_worker(self, gpu: str, tier: Tier) -> None:
        env = {**self.service.settings.as_env(), "HADIS_TIER": tier.value, "HADIS_GPU": gpu}
        if gpu.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = gpu.removeprefix("cuda")
        if self.service.settings.metrics_port is not None:
            env["HADIS_METRICS_PORT"] = str(self.service.settings.metrics_port + 1 + self.gpus.index(gpu))
        process = subprocess.Popen([sys.executable, "-m", "services.worker"], env={**os.environ, **env})
        self.workers[gpu] = WorkerProcess(gpu, tier, process)
        log.info("worker_started", gpu=gpu, tier=tier.value, pid=process.pid)

    def stop_worker(self, worker: WorkerProcess) -> None:
        if worker.stopping_since is None:
            worker.stopping_since = time.monotonic()
            worker.process.send_signal(signal.SIGTERM)
            log.info("worker_stopping", gpu=worker.gpu, tier=worker.tier.value, pid=worker.process.pid)
        elif time.monotonic() - worker.stopping_since > self.service.settings.shutdown_grace_s + 10:
            worker.process.kill()
            log.warning("worker_killed", gpu=worker.gpu, pid=worker.process.pid)

    def may_restart(self, gpu: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self.restarts.get(gpu, []) if now - t < RESTART_WINDOW_S]
        self.restarts[gpu] = recent + [now]
        return len(recent) < MAX_RESTARTS

    def reconcile(self, assignment: dict[str, Tier]) -> None:
        """Make each owned GPU's worker match the plan's assignment."""
        for gpu in self.gpus:
            wanted = assignment.get(gpu)
            worker = self.workers.get(gpu)
            if worker is not None and not worker.alive:
                if worker.stopping_since is None:
                    log.warning("worker_died", gpu=gpu, code=worker.process.returncode)
                    if wanted is not None and not self.may_restart(gpu):
                        log.error("worker_keeps_dying", gpu=gpu)
                        continue
                del self.workers[gpu]
                worker = None
            if worker is not None and worker.tier != wanted:
                self.stop_worker(worker)
            elif worker is None and wanted is not None:
                self.start_worker(gpu, wanted)

    async def run(self) -> None:
        settings = self.service.settings
        last_registered = 0.0
        while not self.service.stopping.is_set():
            if time.monotonic() - last_registered >= settings.heartbeat_s:
                await self.service.store.register_agent(settings.host, self.gpus, ttl_s=3 * settings.heartbeat_s)
                last_registered = time.monotonic()
            self.reconcile(self.service.plans.current.assignment)
            try:
                await asyncio.wait_for(self.service.stopping.wait(), timeout=TICK_S)
            except asyncio.TimeoutError:
                pass
        await self.stop_all()

    async def stop_all(self) -> None:
        for worker in self.workers.values():
            self.stop_worker(worker)
        give_up_at = time.monotonic() + self.service.settings.shutdown_grace_s + 10
        while any(worker.alive for worker in self.workers.values()) and time.monotonic() < give_up_at:
            await asyncio.sleep(0.2)
        for worker in self.workers.values():
            if worker.alive:
                worker.process.kill()


async def main(service: Service) -> None:
    await Agent(service).run()


if __name__ == "__main__":
    run("agent", main)
