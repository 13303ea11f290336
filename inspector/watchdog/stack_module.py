"""Which watched module a thread is running: read from its stack, for a rank whose hooks are off.

A driven inference watch keeps no block hooks (each would cost every decode iteration torch's slow
call path), so when a forward stalls the watchdog looks for the innermost frame whose `self` is one
of the watched blocks. It reads only frame objects and a dict lookup by `id`: no code of the model's
objects runs on the watchdog thread.
"""
from __future__ import annotations

import sys
import threading
from typing import Mapping


def module_on_stack(names: Mapping[int, str], thread: int | None = None) -> str:
    """The name (`names`: id of a module → its name) of the innermost module whose method runs on
    `thread`'s stack (default: the main thread); "" when none does."""
    ident = thread if thread is not None else threading.main_thread().ident
    frame = sys._current_frames().get(ident) if ident is not None else None
    while frame is not None:
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            name = names.get(id(frame.f_locals.get("self")))
            if name is not None:
                return name
        frame = frame.f_back
    return ""
