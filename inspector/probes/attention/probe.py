"""The attention probe: attention maps, per-head entropy / max weight, and collapse detection.

Models running SDPA or flash attention never materialise attention weights, so on a sampled
step the probe recomputes `softmax(q·kᵀ·scale + mask)` from the captured queries and keys, for
batch row 0 (or the row `ctx.shared[BATCH_ROW_KEY]` names: an inference watch rotates it over the
requests of a batch), the sampled layers and heads only, keeping every `row_stride`-th query row when
a sequence is longer than `Sampling.max_attention_rows`. Adapters find the attention:
`qk` (our engine's QKCapture taps), `hf` (Hugging Face transformers, sdpa /
eager / flash, through a wrapping AttentionInterface function) and `mha`
(`nn.MultiheadAttention`); several may apply to one model.

Records, per sampled (step, attention module), at most once per step (gradient accumulation,
activation-checkpoint recomputation and generation calls after the first are skipped):
- `attention_map`: probabilities [heads, rows, keys] (fp16) with `layer`, `heads`, `row_pool`,
  `key_pool` (block sizes; 1 = exact), `query_len`, `key_len`.
- `attention_rows`: full rows [heads, positions, keys] (fp16) of the chosen positions, when the map is pooled.
- `attention_stats`: one row per sampled head, over every query row: `entropy` (mean of -Σ p log p,
  nats), `max_weight` (mean row maximum), `collapsed` (see `attention_collapse`), `sink_mass`
  (mean weight on the first 4 real keys), `distance` (mean weight per log2 distance bucket), `keys`, `rows`.
- `anomaly` kind `attention_collapse` when a head becomes collapsed (not in inference mode: a
  decoded token's single row over a long cache, often resting on an attention sink, is no
  training pathology, and a baseline mixing prefill and decode rows would flag healthy heads).
The map and the stacked per-head statistics leave the device with one asynchronous copy each
per module; the statistics are scored for collapse (on the host) at the end of the first step
their copy has landed by, and recorded with the step they belong to. In inference mode (nothing to
score) on one intra-op thread, a step's small CPU captures are summarised on the Recorder's writer
thread instead, when it writes their records (`batched.LazySummary`): the serving thread only
copies queries and keys.
"""
from __future__ import annotations

import itertools
import logging
from collections import deque
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from inspector.probes.attention.batched import (Deferred, LazySummary, batch_key, defer, on_writer_thread, own_visibility,
                                                summarise_together)
from inspector.probes.attention.collapse import CollapseTracker
from inspector.probes.attention.hf import attach_hf, hf_model
from inspector.probes.attention.stats import Visibility
from inspector.probes.attention.tiled import summarise_attention
from inspector.probes.attention.mha import attach_mha
from inspector.probes.attention.qk import qk_hooks
from inspector.probes.attention.sink import BATCH_ROW_KEY, INFERENCE_MODE_KEY
from inspector.probes.base import Probe, ProbeContext
from inspector.probes.host import HostSlice, HostValue, to_host
from inspector.probes.model_map import layer_index
from inspector.probes.registry import register_probe
from inspector.probes.switchable import SwitchableHooks
from inspector.schema import ATTENTION_STATS

log = logging.getLogger("inspector")

NOT_FOUND = "no attention modules found (looked for QKCapture, Hugging Face attention, nn.MultiheadAttention)"
_MAX_PENDING = 4096

_STAT_COLUMNS: dict[str, tuple[Any, Any]] = {
    "entropy": (0, None), "max_weight": (1, None), "sink_mass": (4, None),
    "distance": (slice(5, None), np.float32), "keys": (3, np.int32)}
"""`attention_stats` columns taken from a statistics row [STAT_FIELDS, EXTRA_FIELDS]: (index, dtype)."""


class _Pending(NamedTuple):
    step: int
    name: str
    layer: int
    heads: list[int]
    stats: HostValue | HostSlice   # [h, 4 + len(EXTRA_FIELDS)]: STAT_FIELDS then EXTRA_FIELDS
    rows: int                 # query rows of the sequence


@register_probe
class AttentionProbe(Probe):
    """Attention maps and per-head statistics on sampled steps; see the module docstring."""

    name = "attention"
    kinds = ("attention_map", "attention_stats", "anomaly")

    def __init__(self) -> None:
        super().__init__()
        self._step = -1
        self._done: set[str] = set()
        self._layers: dict[nn.Module, tuple[str, int]] = {}
        self._heads: dict[int, list[int]] = {}
        self._pending: deque[_Pending] = deque()
        self._tracker = CollapseTracker()
        self._warned: set[str] = set()
        self._taps: SwitchableHooks | None = None   # the engine's QKCapture taps
        self._deferred: dict[tuple[Any, ...], tuple[float, Visibility, list[Deferred], Any]] = {}
        self._traced = False      # an adapter's hook ran inside a torch.compile trace
        self._said_traced = False

    # ---- Probe contract ------------------------------------------------------------------------

    def attach(self, ctx: ProbeContext) -> str | None:
        """Hook every attention the adapters recognise; the reason when there is none."""
        super().attach(ctx)
        taps = SwitchableHooks(self, qk_hooks(ctx.model, self))
        self._taps = taps if len(taps) else None
        handles: list[Any] = ([taps] if len(taps) else []) + attach_mha(ctx.model, self)
        reason = None
        if hf_model(ctx.model) is not None:
            try:
                hf: Any = attach_hf(ctx.model, self)
            except Exception as exc:  # e.g. an incompatible transformers version
                hf = f"Hugging Face attention could not be wrapped ({type(exc).__name__}: {exc})"
            if isinstance(hf, str):
                reason = hf
            else:
                handles.append(hf)
        for h in handles:
            self.track(h)
        if not handles:
            return reason or NOT_FOUND
        self._switch_taps(ctx.recorder.step)
        return None

    def _switch_taps(self, step: int) -> None:
        """The engine taps' hooks are registered only for steps this probe records (`SwitchableHooks`)."""
        if self._taps is not None and self.ctx is not None:
            self._taps.switch(self.ctx.sampling.due(self.name, step))

    def on_step_end(self, step: int) -> None:
        """Turn the statistics whose copies have landed into records."""
        if self._traced and not self._said_traced:
            self._said_traced = True
            log.warning("inspector: attention: the model runs under torch.compile; attention inside the compiled "
                        "region is not recorded (watch the eager model to record it)")
        if self._deferred:
            self._flush_deferred()
        if self._pending:
            self._drain(block=False)
        self._switch_taps(step + 1)

    def detach(self) -> None:
        """Record what is still pending, then remove the hooks (and restore a HF model's attention)."""
        self._flush_deferred()
        self._drain(block=True)
        super().detach()

    # ---- AttentionSink (called from the adapters' hooks) -----------------------------------------

    def layer_of(self, module: nn.Module, hint: int | None = None) -> tuple[str, int]:
        """Qualified name and layer index: the model's own (`hint`), else from the name, else an ordinal."""
        known = self._layers.get(module)
        if known is None:
            name = self.ctx.name_of(module) if self.ctx is not None else type(module).__name__
            layer = hint if isinstance(hint, int) else layer_index(name)
            known = self._layers[module] = (name, len(self._layers) if layer is None else layer)
        return known

    def idle(self) -> bool:
        """True when this probe records nothing at the current step (`Probe.due_now`)."""
        return not self.due_now()

    def wants(self, name: str, layer: int) -> bool:
        """True on a sampled step, for a sampled layer, the first time this module runs in the step."""
        ctx = self.ctx
        if ctx is None:
            return False
        step = ctx.step
        if not self.due_now() or not ctx.sampling.wants_layer(layer):
            return False
        if step != self._step:
            self._step, self._done = step, set()
        return name not in self._done

    def capture(self, name: str, layer: int, q_HTD: torch.Tensor, k_GSD: torch.Tensor, scale: float,
                vis: Visibility, *, owned: bool = False) -> None:
        """Recompute the sampled heads' probabilities and statistics, queue the map and the copy
        (`owned`: the tensors are the adapter's own, kept without a copy)."""
        ctx = self.ctx
        if ctx is None:
            return
        self._done.add(name)
        heads = self._sampled_heads(q_HTD.shape[0])
        if not heads:
            return
        T, S = q_HTD.shape[1], k_GSD.shape[1]
        key = batch_key(q_HTD, k_GSD, scale, vis, heads, ctx.sampling.max_attention_rows)
        if key is not None:                    # summarised with the step's other small captures
            group = self._deferred.get(key)
            if group is None:   # the original mask is held too: its address, in the key, is not reused this step
                group = self._deferred[key] = (scale, own_visibility(vis), [], vis.key_mask_S)
            group[2].append(defer(self._step, name, layer, q_HTD.detach(), k_GSD.detach(), heads, owned=owned))
            return
        with torch.no_grad(), torch.autocast(q_HTD.device.type, enabled=False):
            got = summarise_attention(q_HTD.detach(), k_GSD.detach(), scale, vis, heads,
                                      ctx.sampling.max_attention_rows, list(ctx.sampling.attention_positions))
        step = self._step
        ctx.recorder.attention_map(name, to_host(got.pooled), layer=layer, heads=heads, row_pool=got.row_pool,
                                   key_pool=got.key_pool, query_len=T, key_len=S, step=step)
        if got.rows is not None:
            ctx.recorder.attention_rows(name, to_host(got.rows), layer=layer, heads=heads, positions=got.positions,
                                        step=step)
        if len(self._pending) >= _MAX_PENDING:
            self._drain(block=True)
        self._pending.append(_Pending(step, name, layer, heads, to_host(torch.cat([got.stats, got.extra], -1)), T))

    def batch_row(self, batch: int) -> int:
        """`ctx.shared[BATCH_ROW_KEY]` when it names a row of this batch, else 0."""
        row = self.ctx.shared.get(BATCH_ROW_KEY, 0) if self.ctx is not None else 0
        return row if isinstance(row, int) and 0 <= row < batch else 0

    def traced(self) -> None:
        """An adapter's hook ran inside a torch.compile trace (it captured nothing)."""
        self._traced = True

    def failed(self, where: str, exc: BaseException) -> None:
        """Warn once per module; the model goes on."""
        if where not in self._warned:
            self._warned.add(where)
            log.warning("inspector: attention probe skipped %s: %s: %s", where, type(exc).__name__, exc)

    # ---- internals -----------------------------------------------------------------------------

    def _sampled_heads(self, H: int) -> list[int]:
        heads = self._heads.get(H)
        if heads is None:
            wanted = self.ctx.sampling.heads if self.ctx is not None else None
            heads = self._heads[H] = list(range(H)) if wanted is None else sorted(
                {h for h in wanted if 0 <= h < H})
        return heads

    def _flush_deferred(self) -> None:
        """Summarise the small captures kept since the step began, each group as one (`batched`);
        under an inference watch a small CPU group on the writer thread (`LazySummary`)."""
        groups, self._deferred = self._deferred, {}
        ctx = self.ctx
        if ctx is None:
            return
        lazy_ok = bool(ctx.shared.get(INFERENCE_MODE_KEY))     # nothing to judge on this thread
        for scale, vis, items, _ in groups.values():
            if lazy_ok and on_writer_thread(items):
                self._record_lazy(LazySummary(items, scale, vis, ctx.sampling.max_attention_rows), items)
                continue
            try:
                with torch.no_grad(), torch.autocast(items[0].q_hTD.device.type, enabled=False):
                    got, spans = summarise_together(items, scale, vis, ctx.sampling.max_attention_rows)
                pooled, stats = to_host(got.pooled), to_host(torch.cat([got.stats, got.extra], -1))
            except Exception as exc:  # never raise into the training loop
                self.failed(items[0].name, exc)
                continue
            T, S = got.pooled.shape[1], got.pooled.shape[2]
            for it, span in zip(items, spans):
                ctx.recorder.attention_map(it.name, HostSlice(pooled, span), layer=it.layer, heads=it.heads,
                                           row_pool=1, key_pool=1, query_len=T, key_len=S, step=it.step)
                if len(self._pending) >= _MAX_PENDING:
                    self._drain(block=True)
                self._pending.append(_Pending(it.step, it.name, it.layer, it.heads, HostSlice(stats, span), T))

    def _record_lazy(self, summary: LazySummary, items: list[Deferred]) -> None:
        """The maps and the statistics record of one group, their numbers parts of `summary`."""
        ctx = self.ctx
        assert ctx is not None
        T, S = items[0].q_hTD.shape[1], items[0].k_hSD.shape[1]
        lo = 0
        for it in items:
            span = slice(lo, lo + len(it.heads))
            lo = span.stop
            ctx.recorder.attention_map(it.name, summary.part(0, span), layer=it.layer, heads=it.heads,
                                       row_pool=1, key_pool=1, query_len=T, key_len=S, step=it.step)
        columns = {key: summary.part(1, (slice(None), index), dtype) for key, (index, dtype) in _STAT_COLUMNS.items()}
        self._submit_stats([(it.name, it.layer, it.heads, T) for it in items], columns, [False] * lo, items[0].step)

    def _drain(self, block: bool) -> None:
        """Score and record pending statistics (those already on the host unless `block`): one
        multi-row record per step, every layer's heads in it."""
        ready: list[_Pending] = []
        while self._pending:
            item = self._pending[0]
            if not block and not item.stats.ready():
                break
            ready.append(self._pending.popleft())
        for _, same_step in itertools.groupby(ready, key=lambda it: it.step):
            items = list(same_step)
            try:
                self._record_stats(items)
            except Exception as exc:  # never raise into the training loop
                self.failed(f"{items[0].name} statistics", exc)

    def _record_stats(self, items: list[_Pending]) -> None:
        """One `attention_stats` record of `items` (one step's layers), each head judged for collapse
        (not in inference mode)."""
        ctx = self.ctx
        if ctx is None:
            return
        judge = not ctx.shared.get(INFERENCE_MODE_KEY)
        stats = [np.asarray(item.stats.resolve(), dtype=np.float64) for item in items]
        collapsed: list[bool] = []
        for item, stats_hF in zip(items, stats):
            for i, head in enumerate(item.heads):
                if not judge:
                    collapsed.append(False)
                    continue
                entropy, max_weight, sink, max_visible = stats_hF[i, :4]
                verdict = self._tracker.update(item.name, head, entropy, sink, max_visible)
                collapsed.append(verdict.collapsed)
                if verdict.newly:
                    ctx.report("attention_collapse",
                               f"attention collapse in {item.name} (layer {item.layer}) head {head} at step "
                               f"{item.step}: {verdict.reason}; max weight {max_weight:.2f}",
                               module=item.name, value=float(entropy), step=item.step)
        all_NF = stats[0] if len(stats) == 1 else np.concatenate(stats)
        columns = {key: all_NF[:, index] if dtype is None else all_NF[:, index].astype(dtype)
                   for key, (index, dtype) in _STAT_COLUMNS.items()}
        self._submit_stats([(it.name, it.layer, it.heads, it.rows) for it in items], columns, collapsed,
                           items[0].step)

    def _submit_stats(self, modules: list[tuple[str, int, list[int], int]], numbers: dict[str, Any],
                      collapsed: list[bool], step: int) -> None:
        """One `attention_stats` record: per module (name, layer, heads, query rows), a row per head;
        `numbers`: the `_STAT_COLUMNS` columns, one value per row."""
        per_head = [(m, h) for m in modules for h in m[2]]
        assert self.ctx is not None
        self.ctx.recorder.submit(ATTENTION_STATS, {
            "name": [m[0] for m, _ in per_head], "layer": [m[1] for m, _ in per_head],
            "head": [h for _, h in per_head], "collapsed": collapsed, "rows": [m[3] for m, _ in per_head],
            **numbers}, rows=len(per_head), step=step)
