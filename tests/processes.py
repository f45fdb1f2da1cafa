"""Processes read from /proc (Linux): who a test's subprocess started, and whether they live.

A process is its pid *and* its start time, so a pid the kernel reuses never matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HAS_PROC = Path("/proc/self/stat").is_file()


@dataclass(frozen=True)
class Proc:
    """One process, identified by pid *and* start time so a reused pid never matches."""

    pid: int
    start_ticks: int
    name: str


def _read_stat(pid: int) -> tuple[str, list[str]] | None:
    """(comm, fields after comm) of /proc/<pid>/stat, or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    return comm, stat[stat.rindex(")") + 2 :].split()


def process(pid: int) -> Proc | None:
    """The process that has this pid now, or None."""
    stat = _read_stat(pid)
    return None if stat is None else Proc(pid, int(stat[1][19]), stat[0])


def is_alive(proc: Proc) -> bool:
    """Still running (a zombie waiting to be reaped counts as gone)."""
    stat = _read_stat(proc.pid)
    if stat is None:
        return False
    _, fields = stat
    return int(fields[19]) == proc.start_ticks and fields[0] not in ("Z", "X")


def descendants(root: int) -> set[Proc]:
    """Every live process below ``root`` by parent pid, plus any left in its session."""
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[str, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read_stat(int(entry.name))
        if stat is not None:
            stats[int(entry.name)] = stat
            children.setdefault(int(stat[1][1]), []).append(int(entry.name))
    found = {pid for pid, (_, fields) in stats.items() if int(fields[3]) == root and pid != root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {Proc(pid, int(stats[pid][1][19]), stats[pid][0]) for pid in found if pid in stats}
