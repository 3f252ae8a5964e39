"""Daemonised processes: start them, find them again later, and stop them for good.

``hush dev up`` exits while the cluster keeps running, so every component is started in its
own session (``start_new_session=True``): it is the leader of a new process group, survives
the end of the command and of the terminal, and ``down`` can signal the whole group. Its
stdin is ``/dev/null`` and its stdout and stderr go to its log file, so it holds no pipe of
the command that started it (a caller capturing ``hush dev up``'s output would otherwise
wait for EOF forever).

A pid file records the pid *and* the process start time (field 22 of ``/proc/<pid>/stat``).
A later ``status`` or ``down``, run by another process, trusts a pid only when both match:
pids are reused, and signalling a stranger that inherited one would be a nasty bug.

Once the starting command has exited nobody can collect a component's exit status (it was
reparented to init), so a process that died on its own is reported as "crashed" with the
tail of its log, which is where Go binaries write why they exited. While the starting command
still runs, it keeps the :class:`subprocess.Popen` and reports the exit code too.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

STOP_GRACE_SECONDS: Final = 10.0
KILL_WAIT_SECONDS: Final = 5.0
_POLL_SECONDS: Final = 0.1


@dataclasses.dataclass(frozen=True)
class PidRecord:
    """Enough to recognise one process again: its pid and when it started."""

    pid: int
    start_ticks: int

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "start_ticks": self.start_ticks})


@dataclasses.dataclass(frozen=True)
class StartedProcess:
    """A process started by this command; ``popen`` gives its exit code while we run."""

    record: PidRecord
    popen: subprocess.Popen[bytes]

    def exit_code(self) -> int | None:
        return self.popen.poll()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    return stat.rpartition(")")[2].split()


def _start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    # After the command name: fields[0] is field 3 (state), so field 22 is fields[19].
    return int(fields[19]) if fields and len(fields) > 19 else None


def is_alive(record: PidRecord) -> bool:
    """True if the recorded process still runs (not exited, not a zombie, not a new pid owner)."""
    fields = _stat_fields(record.pid)
    if not fields or len(fields) <= 19:
        return False
    return fields[0] not in ("Z", "X") and int(fields[19]) == record.start_ticks


def read_pid_file(path: Path) -> PidRecord | None:
    """The record in ``path``, or None when there is no (readable) pid file."""
    try:
        data = json.loads(path.read_text())
        return PidRecord(pid=int(data["pid"]), start_ticks=int(data["start_ticks"]))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def start(
    command: Sequence[str],
    *,
    log_file: Path,
    pid_file: Path,
    env: Mapping[str, str] | None = None,
) -> StartedProcess:
    """Start ``command`` in a new session with output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        popen = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=dict(env) if env is not None else None,
        )
    ticks = _start_ticks(popen.pid)
    # A process that exited before we read /proc gets a record that never matches: it is dead.
    record = PidRecord(pid=popen.pid, start_ticks=ticks if ticks is not None else -1)
    temporary = pid_file.with_name(f".{pid_file.name}.tmp")
    temporary.write_text(record.to_json())
    temporary.replace(pid_file)
    return StartedProcess(record=record, popen=popen)


def _reap(pid: int) -> None:
    # Our own children stay zombies until waited for; other processes' are none of our business.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _signal_group(record: PidRecord, signum: signal.Signals) -> None:
    if not is_alive(record):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # start() made every component a session (and group) leader; check before using the
        # pid as a group id in case someone else started the process differently.
        if os.getpgid(record.pid) == record.pid:
            os.killpg(record.pid, signum)
        else:
            os.kill(record.pid, signum)


def _wait_until_dead(records: Sequence[PidRecord], timeout: float) -> list[PidRecord]:
    deadline = time.monotonic() + timeout
    remaining = list(records)
    while remaining:
        for record in remaining:
            _reap(record.pid)
        remaining = [record for record in remaining if is_alive(record)]
        if not remaining or time.monotonic() >= deadline:
            break
        time.sleep(_POLL_SECONDS)
    return remaining


def stop_all(
    records: Sequence[PidRecord],
    *,
    grace_seconds: float = STOP_GRACE_SECONDS,
) -> list[PidRecord]:
    """SIGTERM every group, SIGKILL what is left after the grace period.

    Returns the processes that survived even SIGKILL (empty unless something is badly wrong,
    such as a process stuck in uninterruptible sleep).
    """
    for record in records:
        _signal_group(record, signal.SIGTERM)
    survivors = _wait_until_dead(records, grace_seconds)
    for record in survivors:
        _signal_group(record, signal.SIGKILL)
    return _wait_until_dead(survivors, KILL_WAIT_SECONDS)


def log_tail(log_file: Path, *, lines: int = 20) -> str:
    """The last ``lines`` lines of ``log_file`` ("" when it does not exist)."""
    try:
        with log_file.open("rb") as handle:
            # Reading the last 64 KiB is plenty for 20 lines and bounded for huge logs.
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 65536))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(collections.deque(text.splitlines(), maxlen=lines))
