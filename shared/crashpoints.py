"""Named crash points: the few milliseconds between storing a result, publishing the next hop
and acking are where a crash does the most harm, and a random kill rarely lands there. A
service armed with HADIS_CRASH_AT=<point>[,<point>...] exits at once (os._exit, no cleanup:
what kill -9 does) the first time it reaches a named point. Tests arm one point, let the
service die there, restart it unarmed, and check the job still ends `done`, generated once.

Points (`docs/reliability.md` lists them with what each one checks):

    router.after_record      the record is `routed`; the tier task is not published
    router.after_publish     the tier task is published; the ingress message is not acked
    light.after_claim        the job is `generating` on this worker; nothing generated
    light.after_store        the light image and `judging` are stored; the judge task is not published
    light.after_publish      the judge task is published; the tier message is not acked
    judge.after_verdict      the verdict (`escalated` or `done`) is stored; nothing published or acked
    judge.after_publish      the heavy task is published; the judge message is not acked
    heavy.after_claim        the job is `generating` on the heavy tier; nothing generated
    heavy.after_store        the job is `done` with its image; the tier message is not acked
    controller.after_dead_letter  a dead letter's `failed` record is written; it is not acked
"""

from __future__ import annotations

import os
import sys

POINTS = frozenset({
    "router.after_record", "router.after_publish",
    "light.after_claim", "light.after_store", "light.after_publish",
    "judge.after_verdict", "judge.after_publish",
    "heavy.after_claim", "heavy.after_store",
    "controller.after_dead_letter",
})
CRASH_EXIT_CODE = 86

_armed: frozenset[str] = frozenset()


def parse(text: str) -> frozenset[str]:
    """The points named in a HADIS_CRASH_AT value; an unknown name is an error (a typo would
    otherwise make a crash test pass without crashing anything)."""
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = names - POINTS
    if unknown:
        raise ValueError(f"unknown crash point(s) {sorted(unknown)}; known: {sorted(POINTS)}")
    return names


def arm(text: str) -> None:
    global _armed
    _armed = parse(text)


def crash_point(name: str) -> None:
    """Exit now, without cleanup, if this point is armed."""
    if name in _armed:
        sys.stderr.write(f"crash point {name}: exiting with {CRASH_EXIT_CODE}\n")
        sys.stderr.flush()
        os._exit(CRASH_EXIT_CODE)
