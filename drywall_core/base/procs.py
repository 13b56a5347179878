"""Worker processes that never outlive their parent and never print a traceback on Ctrl-C.

Fan-out stages (mask rendering, drift features) run chunks in a process pool. Each worker asks
the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``), ignores SIGINT (the parent
handles the interrupt and stops the pool), and the pool is terminated, not drained, when the
parent stops early: a killed or interrupted run leaves no process writing behind it.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1


def pid_alive(pid: int) -> bool:
    """Whether a process of this host is running (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def die_with_parent(parent: int) -> None:
    """Pool initializer: SIGKILL when the parent goes, default SIGTERM, no SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def imap_processes(fn: Callable[[Any], T], items: Iterable[Any], workers: int, ordered: bool = False) -> Iterator[T]:
    """``fn`` over ``items`` in ``workers`` processes: results as they finish, or in order if ``ordered``.

    Stopping early -- an exception here or in the consumer, Ctrl-C, SIGTERM -- terminates the
    workers at once instead of letting queued work run on.
    """
    pool = mp.get_context("fork").Pool(workers, initializer=die_with_parent, initargs=(os.getpid(),))
    try:
        yield from (pool.imap if ordered else pool.imap_unordered)(fn, items)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
