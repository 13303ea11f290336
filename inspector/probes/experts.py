"""The experts probe: tokens per expert, imbalance, router entropy, aux loss and bias per MoE layer.

Routers are found by duck typing, never by importing a model library:
- our engine's `Router` (class name "Router" with `n_experts` and `top_k`): output
  `(scores_NE, weights_NK, indices_NK)`; scores are softmax or sigmoid affinities (`score_func`).
- Hugging Face MoE routers (checked on transformers 5.23): a module whose class name ends in
  "Router", or a child called `gate`/`router` of a module that has `experts`. Mixtral, Qwen2-MoE,
  Qwen3-MoE, DeepSeek-V2/V3 and most others return `(router_logits_NE, top_k_weights_NK,
  top_k_index_NK)`; a router returning only logits (DBRX, Llama-4) gets its top-k computed here
  with `top_k` / the config's `num_experts_per_tok`. The number of experts comes from
  `n_experts`/`num_experts`/`num_local_experts` on the router, its parent or the model config.

Per forward of a router (only on steps `ctx.sampling.due("experts", step)` selects, and never
during an activation-checkpoint recompute inside backward), on the device and without
synchronising: tokens per expert (a scatter-add of the top-k ids, i.e. a bincount that does not
sync on CUDA), the summed per-token entropy of the router's score distribution, and the engine's
`aux_loss`. Several forwards in a step (gradient accumulation, a generation's prefill and decode
steps) add up. At `on_step_end` every layer's numbers are packed into one tensor and copied to
the host once (`to_host`); the Recorder resolves them on its writer thread.

Training and inference are recorded apart (serving load balancing is driven by inference
statistics; a training view must not mix them in). A forward is *inference* inside
`Watch.phase("eval")`, or in eval mode (`model.eval()`) when no gradient reaches the router's
output before the step ends: under `torch.no_grad()` / `inference_mode` (e.g. KV-cache
generation) at once, with autograd on when the step ends without a backward through it (a loop
that trains in eval mode, e.g. to switch dropout off, stays training). A forward in train mode is
*training*, as before this split, even under `no_grad` (mark such a loop with
`Watch.phase("eval")` when it is inference). Training rows are kind `expert_load`, inference rows kind
`expert_load_inference` (same columns plus `stage`; old runs, which hold training rows only, read as
before). Under an inference-mode watch (`inspector.inference`), which sets `ctx.shared[STAGE_KEY]`
around each forward, inference rows are recorded per stage: one row per router for the step's
prefill forwards (`stage` "prefill") and one for its decode forwards ("decode"); elsewhere `stage`
is null. Stage rows are window sums: the forwards of the steps between two recorded steps are
carried into the next record, so every routed token is counted exactly once however sparse the
sampling (what an expert-parallel load balancer wants: counts over a window): on steps that are not
sampled only the counts are added (one scatter-add per router forward); router entropy and the
auxiliary loss come from the sampled steps' forwards.
Forwards after the last step end (an inference loop that never calls `Watch.step()`, a final
evaluation) are recorded at the current step when the probe is detached (`Watch.close()`).

Records, kinds `expert_load` / `expert_load_inference`, one row per router per recorded step
and phase (steps with no forward of that phase record nothing):
- `name`: the router's module name; `layer`: the first integer in it (None if there is none).
- `counts`: token-to-expert assignments per expert, summed over the step's forwards (each token
  counts once for each of its top-k experts, so `sum(counts) = tokens * k`).
- `imbalance` = max(counts) / mean(counts); `cv` = population std(counts) / mean(counts).
- `router_entropy`: mean over the step's tokens of the entropy (nats) of the token's normalised
  score distribution over all experts: softmax scores as they are; sigmoid scores divided by their
  sum (engine V3 mode, HF routers holding `e_score_correction_bias`); other HF logits -> softmax.
- `dropped`: assignments to no valid expert (an id < 0 or >= E, which a few routers use as
  "dropped"); 0 for routers without capacity limits; null where a capacity factor applies
  (`capacity`/`expert_capacity`/`capacity_factor` on the router, its parent or the config),
  which this probe cannot see.
- `aux_loss`: the engine router's balance loss (mean over the step's forwards), else null.
- `bias`: the balance bias as it is at step end: the engine's `bias` buffer in sigmoid mode,
  an HF router's `e_score_correction_bias`, else null.

Anomaly `expert_starved` (module = router name): judged on training rows; on inference rows only
while no training row has been recorded (an inference-only run). An expert received no token on
every recorded step across `STARVED_STEPS` steps (so recording every 10th step reports it as soon as
recording every step would), seen on at least `STARVED_MIN_SAMPLES` recorded steps; reported once
per such stretch, from host values (one step late on CUDA, when the copy has landed; the training
thread never waits). The test is absolute (zero tokens), so a lasting starvation never becomes
normal: the expert stays starved until it gets a token. The per-step state is not a column of its
own: `views.summary.starved_mask` derives it from the recorded `counts` with the same rule.

Anomaly `expert_hot`: the same stretch rule for an expert that gets at least `HOT_FACTOR` (3) times
its balanced share (the layer's tokens / experts) on every recorded step of the stretch; the anchor is
the balanced share, not the expert's past, so an overload that lasts stays flagged.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from inspector.probes.base import Probe, ProbeContext
from inspector.probes.host import HostValue, to_host
from inspector.probes.model_map import layer_index
from inspector.probes.registry import register_probe

log = logging.getLogger("inspector")

STARVED_STEPS = 50
"""Training steps without a token (on every step recorded) after which an expert is starved."""
STARVED_MIN_SAMPLES = 5
"""Recorded steps with zero tokens an expert must also have before it is reported (sparse sampling)."""
HOT_FACTOR = 3.0
"""An expert is hot while it gets at least this many times its balanced share (the layer's tokens per
expert): an absolute anchor, so a lasting overload never becomes its own baseline."""


@dataclass
class _Streak:
    """Per expert (of one router, or one row per router): the step its run of empty recorded steps
    began (-1: none), the number of recorded steps in that run, and whether the run was reported."""

    since: np.ndarray
    seen: np.ndarray
    told: np.ndarray

    @classmethod
    def empty(cls, shape: int | tuple[int, ...]) -> "_Streak":
        return cls(np.full(shape, -1, dtype=np.int64), np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=bool))

    def update_flags(self, step: int, flagged: np.ndarray) -> np.ndarray:
        """Add one recorded step's per-expert condition; True for the experts whose stretch of recorded
        steps with the condition has just become long enough (`STARVED_STEPS` steps, `STARVED_MIN_SAMPLES` samples)."""
        self.since = np.where(flagged, np.where(self.since < 0, step, self.since), -1)
        self.seen = np.where(flagged, self.seen + 1, 0)
        due = flagged & ~self.told & (step - self.since + 1 >= STARVED_STEPS) & (self.seen >= STARVED_MIN_SAMPLES)
        self.told = flagged & (self.told | due)
        return due


@dataclass
class _RouterStreaks:
    """The `_Streak` rows of every router with the same number of experts, one row per router (added
    as routers appear): a recorded step updates all of them at once."""

    experts: int
    streak: _Streak = None  # type: ignore[assignment]
    rows: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.streak = _Streak.empty((0, self.experts))

    def update(self, step: int, names: list[str], flagged_RE: np.ndarray) -> np.ndarray:
        """`_Streak.update_flags` of the routers `names` (rows of `flagged_RE`); the due experts [R, E]."""
        idx = [self.rows.setdefault(n, len(self.rows)) for n in names]
        grow = len(self.rows) - self.streak.since.shape[0]
        if grow > 0:
            more = _Streak.empty((grow, self.experts))
            self.streak = _Streak(*(np.concatenate([a, b]) for a, b in
                                    zip((self.streak.since, self.streak.seen, self.streak.told),
                                        (more.since, more.seen, more.told))))
        if idx == list(range(len(self.rows))):           # every router, in order: no gather
            return self.streak.update_flags(step, flagged_RE)
        sub = _Streak(self.streak.since[idx], self.streak.seen[idx], self.streak.told[idx])
        due = sub.update_flags(step, flagged_RE)
        self.streak.since[idx], self.streak.seen[idx], self.streak.told[idx] = sub.since, sub.seen, sub.told
        return due

    def of(self, name: str) -> _Streak:
        """The row of router `name` (views)."""
        r = self.rows[name]
        return _Streak(self.streak.since[r], self.streak.seen[r], self.streak.told[r])


def hot_flags(counts: np.ndarray) -> np.ndarray:
    """Per expert (of each row): at least `HOT_FACTOR` times the balanced share of this step's tokens."""
    counts = np.asarray(counts, dtype=np.float64)
    mean = counts.mean(axis=-1, keepdims=True) if counts.size else np.zeros(counts.shape[:-1] + (1,))
    return (counts >= HOT_FACTOR * mean) & (mean > 0)

TRAIN, INFERENCE = "train", "inference"
PREFILL, DECODE = "prefill", "decode"
KIND_OF_PHASE = {TRAIN: "expert_load", INFERENCE: "expert_load_inference",
                 PREFILL: "expert_load_inference", DECODE: "expert_load_inference"}
"""The record kind of each phase; prefill and decode are inference rows with their `stage` set."""
STAGE_KEY = "inference_stage"
"""`ProbeContext.shared` key: "prefill" or "decode" while an inference-mode watch runs such a forward."""


def _fresh_sums() -> dict[str, dict[str, "_Acc"]]:
    return {phase: {} for phase in KIND_OF_PHASE}

_EXPERT_ATTRS = ("n_experts", "num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOPK_ATTRS = ("top_k", "num_experts_per_tok", "moe_top_k", "n_activated_experts")
_CAPACITY_ATTRS = ("capacity", "expert_capacity", "capacity_factor")
_ROUTER_CLASS = re.compile(r"Router$")


@dataclass
class RouterInfo:
    """A router found in the model and how to read its output."""

    name: str
    module: nn.Module
    n_experts: int
    top_k: int | None
    scores: str            # "probs", "sigmoid", "logits" or "sigmoid_logits": what the score tensor is
    engine: bool           # our engine's Router (scores first, `aux_loss`, `bias` in sigmoid mode)
    capacity: bool         # a capacity limit applies (dropped tokens unknown)
    indices_at: int | None = None  # where in the router's output tuple the expert ids were found
    indices_dtype: torch.dtype | None = None  # their dtype there (the hook's one-look check)

    @property
    def layer(self) -> int | None:
        """Layer index from the module name."""
        return layer_index(self.name)

    def bias(self) -> torch.Tensor | None:
        """The balance bias as it is now, or None."""
        if self.engine:
            b = getattr(self.module, "bias", None) if getattr(self.module, "score_func", "") == "sigmoid" else None
        else:
            b = getattr(self.module, "e_score_correction_bias", None)
        return b if isinstance(b, torch.Tensor) and b.numel() == self.n_experts else None


@dataclass
class _Acc:
    """What one router accumulated during the current step (device tensors, no sync)."""

    counts: torch.Tensor | None = None      # [E + 1] int64, the last bin counts invalid ids
    ids: list[torch.Tensor] = field(default_factory=list)  # expert ids not yet counted (copies, 1-d)
    ids_numel: int = 0
    entropy_sum: torch.Tensor | None = None  # 0-d fp32
    tokens: int = 0
    aux_sum: torch.Tensor | None = None
    aux_n: int = 0

    def merge(self, other: "_Acc") -> None:
        """Add `other`'s sums to these (device tensors, no sync)."""
        self.ids.extend(other.ids)
        self.ids_numel += other.ids_numel
        if other.counts is not None:
            self.counts = other.counts if self.counts is None else self.counts + other.counts
        if other.entropy_sum is not None:
            self.entropy_sum = other.entropy_sum if self.entropy_sum is None else self.entropy_sum + other.entropy_sum
        self.tokens += other.tokens
        if other.aux_sum is not None:
            self.aux_sum = other.aux_sum if self.aux_sum is None else self.aux_sum + other.aux_sum
        self.aux_n += other.aux_n


@dataclass
class _Undecided:
    """An eval-mode forward with autograd on: training if a gradient reaches the router's output
    before the step ends, else inference."""

    info: RouterInfo
    acc: _Acc
    trained: list[bool] = field(default_factory=lambda: [False])


def find_routers(model: nn.Module) -> list[RouterInfo]:
    """Every MoE router of `model` (outermost match only), in module order."""
    config = _text_config(model)
    parents = {id(child): mod for mod in model.modules() for child in mod.children()}
    found: list[RouterInfo] = []
    for name, mod in model.named_modules():
        if not name or any(name.startswith(f"{r.name}.") for r in found):
            continue
        info = _router_info(name, mod, parents.get(id(mod)), config)
        if info is not None:
            found.append(info)
    return found


def _router_info(name: str, mod: nn.Module, parent: nn.Module | None, config: Any) -> RouterInfo | None:
    cls = type(mod).__name__
    if cls == "Router" and hasattr(mod, "n_experts") and hasattr(mod, "top_k"):
        scores = "sigmoid" if getattr(mod, "score_func", "softmax") == "sigmoid" else "probs"
        return RouterInfo(name, mod, int(mod.n_experts), int(mod.top_k), scores, True, False)
    leaf = name.rsplit(".", 1)[-1]
    is_gate = leaf in ("gate", "router") and parent is not None and hasattr(parent, "experts")
    if not (_ROUTER_CLASS.search(cls) or is_gate):
        return None
    n_experts = _first_int((mod, parent, config), _EXPERT_ATTRS) or _experts_from_shapes(mod, parent)
    if n_experts is None or n_experts < 2:
        return None
    top_k = _first_int((mod, parent, config), _TOPK_ATTRS)
    sigmoid = hasattr(mod, "e_score_correction_bias") or getattr(config, "scoring_func", None) == "sigmoid"
    capacity = any(_positive(getattr(o, a, None)) for o in (mod, parent, config) for a in _CAPACITY_ATTRS)
    return RouterInfo(name, mod, n_experts, top_k, "sigmoid_logits" if sigmoid else "logits", False, capacity)


def _text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            return get_text()
        except Exception:
            return config
    return config


def _first_int(objs: tuple[Any, ...], attrs: tuple[str, ...]) -> int | None:
    for obj in objs:
        if obj is None:
            continue
        for a in attrs:
            v = getattr(obj, a, None)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return None


def _experts_from_shapes(mod: nn.Module, parent: nn.Module | None) -> int | None:
    """Expert count from the parent's `experts` list, else the router's [E, D] weight."""
    experts = getattr(parent, "experts", None)
    if isinstance(experts, (nn.ModuleList, nn.Sequential)):
        return len(experts)
    weight = getattr(mod, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


FOLD_IDS_AT = 1 << 22
"""Pending expert ids per router (elements) above which they are counted at once, bounding memory."""


def _add_counts(info: RouterInfo, indices_NK: torch.Tensor | None, acc: _Acc) -> None:
    """Keep one forward's expert choices for counting (one copy, as of the call); counted in bulk by
    `_count_ids` when the step is recorded, so a forward costs one device op."""
    if indices_NK is None:
        return
    ids = indices_NK.clone()              # integer ids carry no autograd history
    acc.ids.append(ids)
    acc.ids_numel += ids.numel()
    if acc.ids_numel >= FOLD_IDS_AT:
        _count_ids(info, acc)


def _count_ids(info: RouterInfo, acc: _Acc) -> None:
    """Fold the pending ids into `acc.counts` (on the device; ids out of range go to the last bin)."""
    if not acc.ids:
        return
    e = info.n_experts
    ids = acc.ids
    acc.ids, acc.ids_numel = [], 0
    try:
        flat = torch.cat(ids).reshape(-1)            # alike shapes (a router's [N, k]): one op
    except RuntimeError:
        flat = torch.cat([t.reshape(-1) for t in ids])
    # ids out of [0, E) go to bin E: clamped into [-1, E], then -1 (mod E + 1) is E too
    flat = flat.long().clamp(-1, e).remainder_(e + 1)
    counts = torch.bincount(flat, minlength=e + 1)
    acc.counts = counts if acc.counts is None else acc.counts + counts


def router_indices(out: Any, info: RouterInfo) -> torch.Tensor | None:
    """indices_NK of a router's output: the integer tensor at the position seen before, else parsed."""
    at = info.indices_at
    if at is not None and isinstance(out, tuple) and len(out) > at:
        t = out[at]
        if isinstance(t, torch.Tensor) and not t.is_floating_point() and t.dtype != torch.bool and t.dim() >= 1:
            return t
    indices_NK = parse_router_output(out, info)[1]
    if isinstance(out, tuple):
        info.indices_at = next((i for i, t in enumerate(out) if t is indices_NK or (
            isinstance(t, torch.Tensor) and indices_NK is not None and t.data_ptr() == indices_NK.data_ptr()
            and not t.is_floating_point())), None)
        info.indices_dtype = indices_NK.dtype if info.indices_at is not None and indices_NK is not None else None
    return indices_NK


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def parse_router_output(out: Any, info: RouterInfo) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(scores_NE, indices_NK) from a router's output; indices computed by top-k when absent."""
    tensors = [out] if isinstance(out, torch.Tensor) else \
        [t for t in out if isinstance(t, torch.Tensor)] if isinstance(out, (tuple, list)) else []
    e = info.n_experts
    indices = next((t for t in tensors if not t.is_floating_point() and t.dtype != torch.bool and t.dim() >= 1), None)
    floats = [t for t in tensors if t.is_floating_point() and t.dim() >= 1 and t.shape[-1] == e]
    scores = (floats[0] if indices is not None else floats[-1]) if floats else None
    scores_NE = None if scores is None else scores.detach().reshape(-1, e)
    if indices is not None:
        return scores_NE, indices.detach().reshape(-1, indices.shape[-1])
    if scores_NE is None or not info.top_k:
        return scores_NE, None
    return scores_NE, scores_NE.topk(min(info.top_k, e), dim=-1).indices


def token_entropy_sum(scores_NE: torch.Tensor, kind: str) -> torch.Tensor:
    """Sum over tokens of the entropy (nats) of each token's normalised score distribution."""
    x_NE = scores_NE.float()
    if kind in ("logits",):
        logp_NE = torch.log_softmax(x_NE, dim=-1)
        return -(logp_NE.exp() * logp_NE).sum()
    if kind == "sigmoid_logits":
        x_NE = torch.sigmoid(x_NE)
    if kind in ("sigmoid", "sigmoid_logits"):
        x_NE = x_NE / x_NE.sum(dim=-1, keepdim=True).clamp_min(1e-30)
    return torch.special.entr(x_NE).sum()


def _grad_tracked(out: Any) -> torch.Tensor | None:
    """The first floating-point tensor of a router's output that autograd tracks, or None."""
    tensors = [out] if isinstance(out, torch.Tensor) else list(out) if isinstance(out, (tuple, list)) else []
    return next((t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad),
                None)


_is_compiling = torch.compiler.is_compiling


def _in_backward() -> bool:
    """True inside an autograd backward pass (an activation-checkpoint recompute)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


@register_probe
class ExpertsProbe(Probe):
    """Expert load per MoE layer; see the module docstring."""

    name = "experts"
    kinds = ("expert_load", "expert_load_inference", "anomaly")

    def __init__(self) -> None:
        super().__init__()
        self.routers: list[RouterInfo] = []
        self._acc: dict[str, dict[str, _Acc]] = _fresh_sums()
        self._undecided: list[_Undecided] = []
        self._pending: list[_StepLoad] = []
        self._streak: dict[tuple[str, str, int], _RouterStreaks] = {}
        self._trained = False          # a training row was recorded: inference is no longer judged
        self._eval_depth = 0           # inside `Watch.phase("eval")`
        self._warned = False
        self._traced = False           # a router hook ran inside a torch.compile trace
        self._said_traced = False

    def attach(self, ctx: ProbeContext) -> str | None:
        """Hook every router; a reason when the model has none."""
        self.ctx = ctx
        self.routers = find_routers(ctx.model)
        if not self.routers:
            return "no MoE routers found (engine Router, *Router classes or gate/router next to experts)"
        for info in self.routers:
            self.track(info.module.register_forward_hook(self._hook(info)))
        return None

    def begin_phase(self, name: str) -> None:
        """`Watch.phase("eval")` began: forwards inside are inference."""
        self._eval_depth += 1

    def end_phase(self, name: str) -> None:
        """`Watch.phase("eval")` ended."""
        self._eval_depth = max(self._eval_depth - 1, 0)

    def _hook(self, info: RouterInfo) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            if _is_compiling():  # inside a compiled graph: record nothing, add nothing
                self._traced = True
                return
            ctx = self.ctx
            if not self.due_now():
                # a step this probe does not record: stage window sums count every token (the
                # rest is sampled). Every call of every router of a decode iteration comes here:
                # the fewest Python steps that keep the ids as of the call.
                sums = self._acc.get(ctx.shared.get(STAGE_KEY)) if ctx is not None else None  # PREFILL / DECODE
                if sums is None:
                    return
                try:                                                 # integer ids: no autograd to switch off
                    at = info.indices_at
                    t = out[at] if at is not None and type(out) is tuple else None
                    if type(t) is not torch.Tensor or t.dtype is not info.indices_dtype:
                        t = router_indices(out, info)
                    acc = sums.get(info.name)
                    if acc is None:
                        acc = sums[info.name] = _Acc()
                    _add_counts(info, t, acc)
                except Exception as exc:  # noqa: BLE001
                    self._warn(f"inspector: experts probe skipped a forward of {info.name}: "
                               f"{type(exc).__name__}: {exc}")
                return
            if _in_backward():
                return
            try:
                grad_on = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
                with torch.no_grad():
                    self._record_forward(info, module, out, grad_on)
            except Exception as exc:  # a recording problem must never break training
                self._warn(f"inspector: experts probe skipped a forward of {info.name}: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return hook

    def _record_forward(self, info: RouterInfo, module: nn.Module, out: Any, grad_on: bool) -> None:
        """Add one forward to its phase's sums (an eval-mode forward with autograd on: decided later)."""
        inference = self._eval_depth > 0 or (not module.training and not grad_on)
        if inference or module.training:
            phase = self._inference_stage() if inference else TRAIN
            self._accumulate(info, out, self._acc[phase].setdefault(info.name, _Acc()))
            return
        tracked = _grad_tracked(out)
        if tracked is None:       # nothing a gradient could reach: not trained through
            self._accumulate(info, out, self._acc[self._inference_stage()].setdefault(info.name, _Acc()))
            return
        forward = _Undecided(info, _Acc())
        self._accumulate(info, out, forward.acc)
        flag = forward.trained

        def reached(grad: torch.Tensor) -> None:
            flag[0] = True  # cannot raise; runs inside the user's backward
        guard = getattr(self, "guard", None)
        tracked.register_hook(guard(reached, f"{info.name} (gradient reached)") if callable(guard) else reached)
        self._undecided.append(forward)

    def _inference_stage(self) -> str:
        """PREFILL or DECODE while an inference-mode watch says so, else INFERENCE."""
        stage = self.ctx.shared.get(STAGE_KEY) if self.ctx is not None else None
        return stage if stage in (PREFILL, DECODE) else INFERENCE

    def _accumulate(self, info: RouterInfo, out: Any, acc: _Acc) -> None:
        scores_NE, indices_NK = parse_router_output(out, info)
        if indices_NK is None:
            return
        _add_counts(info, indices_NK, acc)
        if scores_NE is not None and scores_NE.shape[0] == indices_NK.shape[0]:
            ent = token_entropy_sum(scores_NE, info.scores)
            acc.entropy_sum = ent if acc.entropy_sum is None else acc.entropy_sum + ent
            acc.tokens += indices_NK.shape[0]
        aux = getattr(info.module, "aux_loss", None) if info.engine else None
        if isinstance(aux, torch.Tensor):
            aux = aux.detach().float().reshape(())
            acc.aux_sum = aux if acc.aux_sum is None else acc.aux_sum + aux
            acc.aux_n += 1

    def on_step_end(self, step: int) -> None:
        """Record the step's load per router and phase (one host copy per device and phase) and
        check for starvation."""
        if self.ctx is None:
            return
        if self._traced and not self._said_traced:
            self._said_traced = True
            log.warning("inspector: experts: the model runs under torch.compile; routers inside the compiled region "
                        "are not recorded (watch the eager model to record them)")
        try:
            if self._record(step):
                self._judge_loads()
        except Exception as exc:
            self._warn(f"inspector: experts probe could not record step {step}: {type(exc).__name__}: {exc}")

    def _record(self, step: int, *, last: bool = False) -> bool:
        """Submit the sums gathered since the last step end at `step` (`last`: the probe is being
        detached, carried window sums are recorded whatever the step); True if the probe is live."""
        if self.ctx is None:
            return False
        if not self.ctx.sampling.due(self.name, step) and not last:
            # stage rows are window sums: they stay until the next record; nothing else is kept
            acc = self._acc
            if self._undecided or acc[TRAIN] or acc[INFERENCE]:
                stages = {phase: self._acc[phase] for phase in (PREFILL, DECODE)}
                self._take()
                self._acc.update(stages)
            return True
        acc = self._take()
        for phase in KIND_OF_PHASE:
            sums = acc[phase]
            for r in self.routers:
                if r.name in sums:
                    _count_ids(r, sums[r.name])
            items = [(r, sums[r.name]) for r in self.routers if r.name in sums and sums[r.name].counts is not None]
            if not items:
                continue
            load = _StepLoad.pack(step, items, phase)
            self.ctx.recorder.submit(KIND_OF_PHASE[phase], load.columns(), len(load.rows), step=step)
            self._pending.append(load)
            self._trained = self._trained or phase == TRAIN
        return True

    def _take(self) -> dict[str, dict[str, _Acc]]:
        """The sums gathered so far, undecided forwards settled; the probe starts afresh."""
        acc, self._acc = self._acc, _fresh_sums()
        undecided, self._undecided = self._undecided, []
        for fwd in undecided:
            phase = TRAIN if fwd.trained[0] else INFERENCE
            acc[phase].setdefault(fwd.info.name, _Acc()).merge(fwd.acc)
        return acc

    def _streaks_of(self, key: tuple[str, str, int]) -> _RouterStreaks:
        """The stretch state of (phase, condition, number of experts)."""
        streaks = self._streak.get(key)
        if streaks is None:
            streaks = self._streak[key] = _RouterStreaks(key[2])
        return streaks

    def _judge_loads(self) -> None:
        """Recorded loads whose copies have landed, judged for starved and hot experts (every router
        with the same number of experts at once)."""
        while self._pending and self._pending[0].ready():
            load = self._pending.pop(0)
            if load.phase != TRAIN and self._trained:
                continue  # inference is judged only while the run has not trained
            counts = load.values()["counts"]
            by_experts: dict[int, list[int]] = {}
            for i, c in enumerate(counts):
                by_experts.setdefault(c.shape[0], []).append(i)
            for experts, rows in by_experts.items():
                counts_RE = np.stack([counts[i] for i in rows])
                names = [load.rows[i].name for i in rows]
                starved = self._streaks_of((load.phase, "starved", experts))
                hot = self._streaks_of((load.phase, "hot", experts))
                starved_RE = starved.update(load.step, names, counts_RE == 0)
                hot_RE = hot.update(load.step, names, hot_flags(counts_RE))
                for j in np.flatnonzero(starved_RE.any(axis=1) | hot_RE.any(axis=1)):
                    self._report(load, names[j], counts_RE[j], np.flatnonzero(starved_RE[j]), starved.of(names[j]),
                                 np.flatnonzero(hot_RE[j]), hot.of(names[j]))
        del self._pending[:-64]  # copies that never land (a dead device) must not pile up

    def _report(self, load: "_StepLoad", name: str, counts: np.ndarray, starved: np.ndarray, starved_streak: _Streak,
                overloaded: np.ndarray, hot: _Streak) -> None:
        """The anomalies of one router at a judged load: starved and hot experts."""
        where = "recorded step" if load.phase == TRAIN else "recorded inference step"
        if starved.size:
            since = int(starved_streak.since[starved].min())
            self.ctx.report(
                "expert_starved",
                f"{name}: expert(s) {starved.tolist()} received no token in any {where} "
                f"from step {since} to {load.step} ({int(starved_streak.seen[starved].min())} recorded)",
                module=name, value=float(starved.size), step=load.step)
        if overloaded.size:
            share = counts[overloaded] / max(float(np.asarray(counts).sum()), 1.0)
            self.ctx.report(
                "expert_hot",
                f"{name}: expert(s) {overloaded.tolist()} received ≥ {HOT_FACTOR:g}× the balanced "
                f"share ({1 / counts.shape[0]:.1%}) in every {where} from step "
                f"{int(hot.since[overloaded].min())} to {load.step} (now {', '.join(f'{x:.1%}' for x in share)})",
                module=name, value=float(overloaded.size), step=load.step)

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(message)

    def detach(self) -> None:
        """Record what ran since the last step end (at the current step), then remove the hooks."""
        try:
            if self.ctx is not None and self.switched_off_reason() is None:
                self._record(self.ctx.step, last=True)
        except Exception as exc:  # the run is closing: say so, never raise
            self._warn(f"inspector: experts probe could not record the last forwards: {type(exc).__name__}: {exc}")
        super().detach()
        self._acc = _fresh_sums()
        self._undecided = []

    def switched_off_reason(self) -> str | None:
        """Why the Watch switched this probe off (None while it works, or on a base without switch-off)."""
        return getattr(self, "switched_off", None)


@dataclass
class _StepLoad:
    """One step's packed router numbers on their way to the host, decoded once when needed."""

    step: int
    rows: list[RouterInfo]
    parts: list[tuple[HostValue, list[tuple[int, int, bool]]]]  # per device: copy, (row, E, has bias)
    dropped_known: list[bool]
    phase: str = TRAIN
    _values: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def pack(cls, step: int, items: list[tuple[RouterInfo, _Acc]], phase: str = TRAIN) -> "_StepLoad":
        """Concatenate every router's numbers per device into one float64 tensor and start its copy.

        Per router: counts[E + 1] (last = invalid ids), entropy, aux, then bias[E] if it has one.
        """
        pieces: dict[torch.device, list[torch.Tensor]] = {}
        layouts: dict[torch.device, list[tuple[int, int, bool]]] = {}
        rows: list[RouterInfo] = []
        for info, a in items:
            dev = a.counts.device
            nan = torch.full((1,), float("nan"), dtype=torch.float64, device=dev)
            ent = (a.entropy_sum.double().reshape(1) / a.tokens) if a.entropy_sum is not None and a.tokens else nan
            aux = (a.aux_sum.double().reshape(1) / a.aux_n) if a.aux_sum is not None else nan
            bias = info.bias()
            pieces.setdefault(dev, []).extend([a.counts.double(), ent, aux])
            if bias is not None:
                pieces[dev].append(bias.detach().double().reshape(-1).to(dev))
            layouts.setdefault(dev, []).append((len(rows), info.n_experts, bias is not None))
            rows.append(info)
        parts = [(to_host(torch.cat(pieces[dev])), layouts[dev]) for dev in pieces]
        return cls(step, rows, parts, [not r.capacity for r in rows], phase)

    def ready(self) -> bool:
        """True when every copy has landed (never blocks)."""
        return all(hv.ready() for hv, _ in self.parts)

    def values(self) -> dict[str, Any]:
        """Decoded per-row values (waits for the copies; call on the writer thread or when ready)."""
        with self._lock:
            if self._values is None:
                self._values = self._decode()
            return self._values

    def _decode(self) -> dict[str, Any]:
        n = len(self.rows)
        out: dict[str, list[Any]] = {k: [None] * n for k in
                                     ("counts", "imbalance", "cv", "router_entropy", "dropped", "aux_loss", "bias")}
        for hv, layouts in self.parts:
            flat = hv.resolve()
            if _uniform(layouts):
                self._decode_uniform(flat, layouts, out)
                continue
            at = 0
            for row, e, has_bias in layouts:
                counts = np.rint(flat[at:at + e]).astype(np.int64)
                invalid = int(round(flat[at + e]))
                entropy, aux = float(flat[at + e + 1]), float(flat[at + e + 2])
                at += e + 3
                if has_bias:
                    out["bias"][row] = flat[at:at + e].astype(np.float32)
                    at += e
                mean = counts.mean()
                out["counts"][row] = counts
                out["imbalance"][row] = float(counts.max() / mean) if mean > 0 else float("nan")
                out["cv"][row] = float(counts.std() / mean) if mean > 0 else float("nan")
                out["router_entropy"][row] = entropy if np.isfinite(entropy) else None
                out["aux_loss"][row] = aux if np.isfinite(aux) else None
                out["dropped"][row] = invalid if self.dropped_known[row] else None
        return out

    def _decode_uniform(self, flat: np.ndarray, layouts: list[tuple[int, int, bool]], out: dict[str, list[Any]]) -> None:
        """`_decode` of routers with the same number of experts, all with a bias or none, all at once."""
        e, has_bias = layouts[0][1], layouts[0][2]
        block_RF = flat.reshape(len(layouts), e + 3 + (e if has_bias else 0))
        counts_RE = np.rint(block_RF[:, :e]).astype(np.int64)
        mean_R = counts_RE.mean(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            imbalance_R = np.where(mean_R > 0, counts_RE.max(axis=1) / mean_R, np.nan)
            cv_R = np.where(mean_R > 0, counts_RE.std(axis=1) / mean_R, np.nan)
        invalid_R = np.rint(block_RF[:, e]).astype(np.int64)
        for j, (row, _, _) in enumerate(layouts):
            entropy, aux = float(block_RF[j, e + 1]), float(block_RF[j, e + 2])
            out["counts"][row] = counts_RE[j]
            out["imbalance"][row] = float(imbalance_R[j])
            out["cv"][row] = float(cv_R[j])
            out["router_entropy"][row] = entropy if np.isfinite(entropy) else None
            out["aux_loss"][row] = aux if np.isfinite(aux) else None
            out["dropped"][row] = int(invalid_R[j]) if self.dropped_known[row] else None
            if has_bias:
                out["bias"][row] = block_RF[j, e + 3:].astype(np.float32)

    def columns(self) -> dict[str, Any]:
        """Columns for `Recorder.submit`: names and layers now, the numbers deferred."""
        cols: dict[str, Any] = {"name": [r.name for r in self.rows], "layer": [r.layer for r in self.rows]}
        if self.phase != TRAIN:
            cols["stage"] = [self.phase if self.phase in (PREFILL, DECODE) else None] * len(self.rows)
        for key in ("counts", "imbalance", "cv", "router_entropy", "dropped", "aux_loss", "bias"):
            cols[key] = _Column(self, key)
        return cols


def _uniform(layouts: list[tuple[int, int, bool]]) -> bool:
    """Every router of one host copy has the same number of experts, and a bias if the first has one."""
    return all(e == layouts[0][1] and has_bias == layouts[0][2] for _, e, has_bias in layouts)


class _Column:
    """One deferred column of a `_StepLoad` (resolved on the Recorder's writer thread)."""

    __slots__ = ("load", "key")

    def __init__(self, load: _StepLoad, key: str) -> None:
        self.load = load
        self.key = key

    def resolve(self) -> Any:
        """The column's values, one per row."""
        values = self.load.values()[self.key]
        if self.key in ("counts", "bias") and len(values) == 1:
            return values[0]  # a one-row list column wants the row itself (None = null, not [null])
        return values
