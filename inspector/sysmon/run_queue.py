"""How long the calling thread has waited for a CPU: Linux's per-thread run-queue delay.

`/proc/thread-self/schedstat` holds three numbers: nanoseconds the thread ran on a CPU, nanoseconds
it was runnable but waited on a run queue (another process held its CPU), and the number of time
slices it got. The second is what a busy machine costs a training thread: time that wall clocks
count as the thread's own work. The timing probe takes this reading at the marks it times phases
with, so views can take CPU waits out of a rank's sections the way they take out collective waits.

Each thread reads its own file through a descriptor it keeps open (about 1 µs a reading, against
6 µs to open the file each time). Where the file does not exist (not Linux) or a read fails, the
value is NaN, and the callers treat the wait as unknown.
"""
from __future__ import annotations

import math
import os
import threading

_PATH = "/proc/thread-self/schedstat"
_local = threading.local()


def run_queue_wait_s() -> float:
    """Seconds the calling thread has spent runnable but waiting for a CPU since it started
    (NaN where Linux's schedstat cannot be read)."""
    fd = getattr(_local, "fd", None)
    if fd == -1:
        return math.nan
    try:
        if fd is None:
            fd = _local.fd = os.open(_PATH, os.O_RDONLY)
        return int(os.pread(fd, 96, 0).split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        _local.fd = -1          # unreadable for this thread: do not retry at every mark
        return math.nan
