"""The Linux process table read from /proc, for tests and benchmarks that check which processes outlive
another (a killed parent's workers)."""

from __future__ import annotations

from pathlib import Path


def proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a live process, from /proc/<pid>/stat; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), fields[0], int(fields[19])


def _table() -> dict[int, tuple[int, str, int] | None]:
    return {int(e.name): proc_stat(int(e.name)) for e in Path("/proc").iterdir() if e.name.isdigit()}


def children(pid: int) -> dict[int, int]:
    """{child pid: its start time} of `pid`'s children."""
    return {p: st[2] for p, st in _table().items() if st is not None and st[0] == pid}


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every live descendant of `root` (children of children too)."""
    table = _table()
    found: dict[int, int] = {}
    frontier = {root}
    while frontier:
        frontier = {p for p, st in table.items() if st and st[0] in frontier and p not in found}
        found.update({p: table[p][2] for p in frontier})
    return found


def alive(pid: int, started: int) -> bool:
    """`pid` still runs the process that started at `started` (not a reused pid, not a zombie)."""
    st = proc_stat(pid)
    return st is not None and st[2] == started and st[1] != "Z"  # a zombie has ended (its reaper lags)
