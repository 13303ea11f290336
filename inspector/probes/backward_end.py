"""Run a function once per backward pass, after every gradient of the watched parameters is final,
and before the training loop can touch them (clip, unscale, zero).

A `register_post_accumulate_grad_hook` on each parameter only queues, the first time it fires in
a backward pass (one autograd graph task), an autograd engine callback. Engine callbacks run when
the whole backward has finished. DDP (its gradient all-reduce) and FSDP2 (its reduce-scatter)
queue their own finalize callback during backward, possibly after ours; a callback queued by a
callback still runs in the same pass (checked on torch 2.13), so ours re-queues itself once and
runs after theirs: it sees reduced gradients. FSDP2 calls the sharded parameters'
post-accumulate-grad hooks itself after reducing them, so the hooks fire there too.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.autograd import Variable


class BackwardEnd:
    """Calls `fn()` at the end of every backward pass that accumulated a gradient into `params`.

    `fn` runs on the autograd thread inside `backward()`: it must not raise (the caller guards it)
    and must stay cheap. `handles` are the hook handles (anything with `.remove()`).
    """

    def __init__(self, params: list[nn.Parameter], fn: Callable[[], None]) -> None:
        self._fn = fn
        self._queued_for = -1  # the graph task the callback is queued for
        self.handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]

    def _on_grad(self, param: torch.Tensor) -> None:
        task = torch._C._current_graph_task_id()
        if task < 0:  # called by hand, outside any backward pass
            self._fn()
            return
        if task == self._queued_for:
            return
        self._queued_for = task
        Variable._execution_engine.queue_callback(self._requeue)

    def _requeue(self) -> None:
        Variable._execution_engine.queue_callback(self._run)

    def _run(self) -> None:
        self._queued_for = -1
        self._fn()
