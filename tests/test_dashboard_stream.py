"""The dashboard's ticker and its streams (services/api/dashboard.py), with the tick's reads replaced:
one computation per tick whatever the number of viewers, each viewer sent each snapshot once, the
ticker idle when nobody looks and back when somebody does."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest

from services.api import dashboard as module
from services.api.dashboard import Dashboard
from tests.helpers import make_settings


@pytest.fixture
def board(monkeypatch) -> Dashboard:
    monkeypatch.setattr(module, "TICK_S", 0.02)
    monkeypatch.setattr(module, "IDLE_S", 0.1)
    monkeypatch.setattr(module, "fid_lookup", lambda profile: None)
    service = SimpleNamespace(settings=make_settings(), stopping=asyncio.Event())
    board = Dashboard(service)  # type: ignore[arg-type]
    board.computed = 0  # type: ignore[attr-defined]

    async def tick() -> None:  # what a tick computes, without the store
        board.computed += 1  # type: ignore[attr-defined]
        board.publish({"tick": board.computed})  # type: ignore[attr-defined]

    monkeypatch.setattr(board, "tick", tick)
    return board


async def watch(board: Dashboard, count: int) -> list[bytes]:
    frames: list[bytes] = []
    with board.viewing():
        async for frame in board.frames():
            if not frame.startswith(b":"):
                frames.append(frame)
            if len(frames) == count:
                return frames
    return frames


def ticks(frames: list[bytes]) -> list[int]:
    return [orjson.loads(frame.split(b"data: ", 1)[1])["tick"] for frame in frames]


async def test_every_viewer_gets_the_same_snapshot_of_each_tick(board):
    first, second = await asyncio.gather(watch(board, 5), watch(board, 5))
    assert ticks(first) == ticks(second) == sorted(set(ticks(first)))  # each tick once, in order
    assert all(a is b for a, b in zip(first, second, strict=True))  # the same bytes: computed once
    assert board.computed <= ticks(first)[-1] + 1  # not once per viewer
    await board.stop()


async def test_the_ticker_idles_without_viewers_and_a_new_one_gets_no_repeat(board):
    frames = await watch(board, 2)
    await asyncio.sleep(0.4)  # nobody looks: past IDLE_S the ticker ends
    assert board._task is not None and board._task.done()
    idle_at = board.computed
    await asyncio.sleep(0.1)
    assert board.computed == idle_at
    later = await watch(board, 3)
    assert ticks(later)[0] in (idle_at, idle_at + 1) and ticks(later) == sorted(set(ticks(later)))
    assert ticks(frames)[-1] <= idle_at
    await board.stop()


async def test_a_snapshot_wakes_the_ticker_and_waits_for_its_first_tick(board):
    data = await board.snapshot(timeout_s=5)
    assert orjson.loads(data) == {"tick": 1}
    await board.stop()


async def test_a_stopping_service_ends_the_streams(board):
    async def until_end() -> int:
        seen = 0
        with board.viewing():
            async for _ in board.frames():
                seen += 1
                if seen == 2:
                    board.service.stopping.set()
        return seen

    assert await asyncio.wait_for(until_end(), 5) >= 2
    await asyncio.wait_for(board.stop(), 5)
