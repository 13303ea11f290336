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
sampled only the counts are added (a copy of each router forward's ids, counted in bulk at the
record); router entropy and the auxiliary loss come from the sampled steps' forwards. The engine's
routers keep their last forward's tokens per expert in a buffer (`tokens_per_expert`): under an
inference watch, which says when each forward ends (`FORWARD_END_KEY`), the buffers of every router
are read once per forward (one stack into a ring of forwards, `ForwardLoads`, summed in float64
every 64 forwards and at the record) and their hooks are registered only for the first forward
(which counts its own ids and checks that every router runs once per forward) and the sampled steps
(router entropy, and the same check), so a decode iteration's routers run on torch's fast path,
with no hook at all. A router that ran other than once (its buffer holds only its last call), or
buffers that cannot hold a count exactly (a model cast to bfloat16) or change dtype while watched,
keep the hooks on for good, counting ids, with one warning.
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

from inspector.probes.experts.load import FOLD_IDS_AT
from inspector.probes.experts.phases import (DECODE, FORWARD_END_KEY, INFERENCE, KIND_OF_PHASE, PREFILL, STAGE_KEY,
                                             TRAIN)
from inspector.probes.experts.probe import ExpertsProbe
from inspector.probes.experts.routers import (LOAD_BUFFER, RouterInfo, find_routers, load_keeping,
                                              parse_router_output, router_indices, token_entropy_sum)
from inspector.probes.experts.streaks import HOT_FACTOR, STARVED_MIN_SAMPLES, STARVED_STEPS, hot_flags

__all__ = ["DECODE", "FOLD_IDS_AT", "FORWARD_END_KEY", "HOT_FACTOR", "INFERENCE", "KIND_OF_PHASE", "LOAD_BUFFER",
           "PREFILL", "STAGE_KEY", "STARVED_MIN_SAMPLES", "STARVED_STEPS", "TRAIN", "ExpertsProbe", "RouterInfo",
           "find_routers", "hot_flags", "load_keeping", "parse_router_output", "router_indices",
           "token_entropy_sum"]
