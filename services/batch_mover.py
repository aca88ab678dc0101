"""The controller's hands for classes.rebalance (docs/classes.md): queued batch jobs moved from one
tier's batch queue to the other's, so that the queues follow the batch placement, not the placement
of the moment each job arrived. The simulator moves its queues' jobs by the same rule
(shared/experiments/classes_sim.py ClassFleet.move_queued).

A move takes the job from the head of the source queue (Bus.take), publishes it to the target
queue with its tier rewritten, records it routed to that tier (a re-route: its place in the tier's
waiting line and GET /v1/jobs/{id} follow), then acks the source's copy. Publish first: a crash
between the steps leaves the job in both queues, and the store's claim lets one copy run (the
other finds it claimed or ended); a crash before the publish puts the job back where it was. A job
whose quality forces its tier (classes.movable) goes back to the tail of its own queue."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from shared.errors import InvalidJob
from shared.logging import get_logger
from shared.policies import classes
from shared.policies.classes import Move
from shared.schemas import JobState, Task, parse_message
from shared.store import Change

if TYPE_CHECKING:
    from shared.service import Service

log = get_logger("controller")

# A round's moves stop after this long (the rest waits for the next round): the controller holds its
# lease for 3 ticks (services/controller.py), and a round must not outlast it on a slow broker.
MOVE_BUDGET_S = 1.0
MOVE_CHUNK = 25  # messages taken on one channel before the budget is checked again


class BatchMover:
    def __init__(self, service: Service) -> None:
        self.service = service

    async def move(self, move: Move) -> int:
        """Carry out a move, within MOVE_BUDGET_S; how many jobs moved (not those put back). A
        message that does not parse is put back for its worker to dead-letter, and ends the move:
        this is not the place that decides a message's fate."""
        queues = self.service.bus.queues
        source, target = queues.batch(move.source), queues.batch(move.target)
        moved = 0

        async def hand_on(body: bytes, message_id: str | None) -> bool:
            nonlocal moved
            try:
                task = parse_message(Task, body)
            except InvalidJob:
                return False
            if not classes.movable(task.job.quality, move.source):
                await self.service.bus.publish(source, body, message_id=message_id)
                return True
            await self.service.bus.publish(target, task.model_copy(update={"tier": move.target}),
                                           message_id=message_id)
            await self.service.store.apply(Change(task.job.job_id, JobState.routed, {"tier": move.target.value},
                                                  only_from=(JobState.routed,)))
            moved += 1
            return True

        taken, until = 0, time.monotonic() + MOVE_BUDGET_S
        while taken < move.count and time.monotonic() < until:
            asked = min(MOVE_CHUNK, move.count - taken)
            chunk = await self.service.bus.take(source, asked, hand_on)
            taken += chunk
            if chunk < asked:
                break  # the queue ran dry, or a message stays where it is
        if taken:
            log.info("batch_moved", source=move.source.value, target=move.target.value, moved=moved,
                     put_back=taken - moved, asked=move.count)
        return moved
