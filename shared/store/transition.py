"""The job state machine's script: transition.lua (a file of its own, so it reads as Lua, with its
documentation), with the order of the states put in front of it from shared/schemas.py. The ranks
are not written twice: a new state, or a new order, changes the script with the Python."""

from __future__ import annotations

from importlib import resources

from shared.schemas import STATE_RANKS, TERMINAL_RANK

EVENTS_MAX_LENGTH = 200_000  # the event stream's length, about (XADD MAXLEN ~)


def header() -> str:
    """The Lua constants the script uses and does not define (see transition.lua)."""
    ranks = ", ".join(f"['{state}'] = {rank}" for state, rank in STATE_RANKS.items())
    return (f"local RANK = {{{ranks}}}\nlocal TERMINAL_RANK = {TERMINAL_RANK}\n"
            f"local EVENTS_MAX_LENGTH = {EVENTS_MAX_LENGTH}\n")


def source() -> str:
    """The script as Redis runs it: the constants, then the package's transition.lua."""
    return header() + resources.files("shared.store").joinpath("transition.lua").read_text(encoding="utf-8")


SOURCE = source()
