"""Phase and module tracking: hooks that keep a `Progress` up to date for the watchdog.

Always on with `watch()`, whatever probes are chosen; each hook is a few attribute writes.
- Root module: forward pre-hook → phase "forward"; forward hook → after a grad-enabled forward a
  gradient hook on its output marks the start of the backward pass (phase "backward"); until then
  (the loss computation, the user's code) the phase is "user". When the output has no tensor to hook
  the phase becomes "backward" at once. The root's hooks run eagerly at a compiled region's boundary
  (`torch._dynamo.disable`, as the timing probe's).
- Blocks (`find_blocks`: a transformer's layers): forward pre-hook → `module` = the block's name;
  in backward a tensor hook on the block's output → `module` = the block whose gradient is being
  computed (not hooked under an inference watch, `backward=False`: no backward runs there). A forward during backward (activation-checkpoint recomputation) keeps phase "backward".
- End of a backward pass: an autograd-engine callback, re-queued once so it runs after DDP's own
  (which waits for the gradient all-reduce: that wait is still "backward") → phase "user".
- Optimizer step pre-hook: phase "optimizer"; the Watch's end of step (`step_end`): "user".
- The data loader: `_BaseDataLoaderIter.__next__` patched at class level while any watch is open
  (reference-counted; restored when the last closes): a `next()` is phase "data".
- `Watch.phase("eval")` / `("checkpoint")` (`begin`/`end`): that phase; forwards inside it keep it and
  set only the module. `Watch.close()`: "closed" (the watchdog's final heartbeat).
- Driven (`driven(True)`, an inference watch whose scheduler reports every forward's start and end):
  the root and block hooks are off (a hooked module takes torch's slow call path on every call) and
  the driver calls `forward_begins` / `forward_ends`; the block a stalled forward is in is then read
  from that thread's stack by the watchdog when it writes a heartbeat (`Progress.locate`).
Under `torch.compiler.is_compiling()` every hook returns at once (nothing traced, no graph break).
Every hook is guarded (`Probe.guard`): an error switches the tracking off, said once, never raised.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import dataloader as _dataloader

from inspector.probes.base import Probe, ProbeContext
from inspector.probes.model_map import find_blocks, first_tensor
from inspector.probes.switchable import SwitchableHooks
from inspector.watchdog.progress import Progress
from inspector.watchdog.stack_module import module_on_stack

_queue_callback = torch.autograd.Variable._execution_engine.queue_callback


def _in_backward() -> bool:
    """True inside an autograd backward pass."""
    return torch._C._current_graph_task_id() != -1


class PhaseHooks(Probe):
    """The hooks that keep `progress` current (not a registered probe: the Watch owns it)."""

    name = "watchdog"

    def __init__(self, progress: Progress, *, backward: bool = True) -> None:
        super().__init__()
        self.progress = progress
        self.backward = backward
        """False for a model that only runs forwards (an inference watch): no block post-hooks."""
        self.explicit: list[str] = []   # open `Watch.phase` names, innermost last
        self._task = -1                 # graph task of the backward pass being tracked
        self._end_backward: Callable[[], None] = lambda: None
        self._root_grad: Callable[[Any], None] = lambda g: None
        self._forward_hooks: list[SwitchableHooks] = []

    def attach(self, ctx: ProbeContext) -> str | None:
        """Hook the root, the blocks, the optimizer and the data loader."""
        self.ctx = ctx
        root = ctx.model
        self._end_backward = self.guard(self._requeue_end, "end-of-backward callback (watchdog)")
        self._root_grad = self.guard(self._on_root_grad, "gradient hook on the model output (watchdog)")
        pre, post = torch._dynamo.disable(self._root_pre), torch._dynamo.disable(self._root_post)
        pres: list[tuple[nn.Module, Callable[..., Any]]] = [(root, pre)]
        posts: list[tuple[nn.Module, Callable[..., Any]]] = [(root, post)]
        blocks = {}
        for name, block in find_blocks(root):
            if block is not root:
                blocks[id(block)] = name
                block_pre, block_post = self._block_hooks(name)
                pres.append((block, block_pre))
                if self.backward:
                    posts.append((block, block_post))
        self._forward_hooks = [SwitchableHooks(self, pres, pre=True), SwitchableHooks(self, posts)]
        for hooks in self._forward_hooks:
            self.track(hooks)
            hooks.switch(True)
        self.progress.locate = lambda thread: module_on_stack(blocks, thread) if blocks else ""
        if ctx.optimizer is not None:
            # the end of the step is the Watch's own post-hook (`step_end`): it must stay the last
            # one, since a probe it detaches there removes hooks from the dict torch is iterating
            self.track(ctx.optimizer.register_step_pre_hook(self._optimizer_pre))
        install_loader_hook(self.progress)
        self._handles.append(_LoaderHandle(self.progress))
        return None

    # ---- explicit phases ---------------------------------------------------------------------

    def begin(self, phase: str) -> str:
        """`Watch.phase(phase)` entered; returns the phase to restore."""
        self.explicit.append(phase)
        return self.progress.enter(phase)

    def end(self, previous: str) -> None:
        """`Watch.phase` left: back to `previous`."""
        if self.explicit:
            self.explicit.pop()
        self.progress.leave(previous)

    def step_end(self, step: int) -> None:
        """The Watch ended a step: `step` steps are done; back to user code (or the explicit phase)."""
        p = self.progress
        p.step = step
        p.set_phase(self.explicit[-1] if self.explicit else "user")

    def driven(self, on: bool) -> None:
        """`on`: a driver reports every forward (`forward_begins` / `forward_ends`); the root and
        block hooks go off. Off: the hooks are back."""
        for hooks in self._forward_hooks:
            hooks.switch(not on)

    def forward_begins(self) -> None:
        """A forward of the model starts (on this thread): the root's pre-hook, or a driver."""
        p = self.progress
        p.thread = threading.get_ident()
        if self.explicit:
            p.module = ""
            p.tick()
        else:
            p.set_phase("forward")

    def forward_ends(self) -> None:
        """The forward is done (the root's hook after its backward bookkeeping, or a driver)."""
        p = self.progress
        if self.explicit:
            p.module = ""
            p.tick()
        else:
            p.set_phase("user")

    # ---- hooks -------------------------------------------------------------------------------

    def _root_pre(self, module: nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling() or _in_backward():
            return
        self.forward_begins()

    def _root_post(self, module: nn.Module, args: Any, out: Any) -> None:
        if torch.compiler.is_compiling() or _in_backward():
            return
        if not self.explicit and torch.is_grad_enabled():
            t = first_tensor(out)
            if t is None or not t.requires_grad:
                self.progress.set_phase("backward")
                return
            t.register_hook(self._root_grad)
        self.forward_ends()

    def _on_root_grad(self, grad: Any) -> None:
        if torch.compiler.is_compiling():
            return
        self._backward_started("")

    def _backward_started(self, module: str) -> None:
        p = self.progress
        task = torch._C._current_graph_task_id()
        if task != self._task:
            self._task = task
            if task != -1:
                _queue_callback(self._end_backward)
        if p.phase != "backward" and not self.explicit:
            p.enter("backward", module)
        else:
            p.module = module
            p.last_progress = time.time()

    def _requeue_end(self) -> None:
        _queue_callback(self.guard(self._backward_done, "end-of-backward callback (watchdog)"))

    def _backward_done(self) -> None:
        self._task = -1
        if not self.explicit and self.progress.phase == "backward":
            self.progress.set_phase("user")

    def _block_hooks(self, name: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """A block's forward pre-hook (the module now running) and forward hook (the block's
        gradient, when it comes, marks the backward pass in it)."""
        p = self.progress

        def on_grad(grad: Any) -> None:
            if torch.compiler.is_compiling():
                return
            self._backward_started(name)

        on_grad_guarded = self.guard(on_grad, f"gradient hook on {name} (watchdog)")

        def pre(module: nn.Module, args: Any) -> None:
            if torch.compiler.is_compiling():
                return
            p.module = name
            p.last_progress = time.time()

        def post(module: nn.Module, args: Any, out: Any) -> None:
            if torch.compiler.is_compiling() or not torch.is_grad_enabled():
                return
            t = first_tensor(out)
            if t is not None and t.requires_grad:
                t.register_hook(on_grad_guarded)

        return pre, post

    def _optimizer_pre(self, *_: Any) -> None:
        self.progress.set_phase("optimizer")



# ---- the data loader ----------------------------------------------------------------------------

_loader_lock = threading.Lock()
_loader_progress: list[Progress] = []
_original_next: Callable[[Any], Any] | None = None


def _watched_next(self: Any) -> Any:
    """`_BaseDataLoaderIter.__next__` while a watch is open: phase "data" around the original."""
    entered = []
    for p in tuple(_loader_progress):
        entered.append((p, p.enter("data")))
    try:
        return _original_next(self)  # type: ignore[misc]
    finally:
        for p, previous in entered:
            p.leave(previous)


def install_loader_hook(progress: Progress) -> None:
    """Count `progress` in; the first one patches `_BaseDataLoaderIter.__next__`."""
    global _original_next
    with _loader_lock:
        if not _loader_progress:
            _original_next = _dataloader._BaseDataLoaderIter.__next__
            _dataloader._BaseDataLoaderIter.__next__ = _watched_next
        _loader_progress.append(progress)


def uninstall_loader_hook(progress: Progress) -> None:
    """Count `progress` out; the last one restores the original `__next__`."""
    with _loader_lock:
        if progress in _loader_progress:
            _loader_progress.remove(progress)
            if not _loader_progress and _original_next is not None:
                _dataloader._BaseDataLoaderIter.__next__ = _original_next


class _LoaderHandle:
    """A handle whose `remove()` counts a progress out of the data loader patch (for `Probe.detach`)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def remove(self) -> None:
        """Undo `install_loader_hook`."""
        uninstall_loader_hook(self.progress)
