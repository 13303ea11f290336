"""The fault suite's Hugging Face half: tiny random-init models (built from configs, no downloads)
trained by a plain PyTorch loop shaped like `transformers.Trainer`'s, with faults planted by hooks.

- `hf-llama-faults` (LlamaForCausalLM, sdpa attention): the loop accumulates its loss into one tensor
  that it resets in place after every step (`tr_loss -= tr_loss`, as the Trainer does); one MLP's
  output drifts far out of its warm-up range; at one step one head's queries and keys are scaled
  until its attention logits overflow to +Inf (the step is then undone from a snapshot).
- `hf-bert-faults` (BertForMaskedLM with ReLU, eager attention): one layer's ReLU units die (a large
  negative bias), and one head's queries are scaled up so that it collapses and stays collapsed.
- `healthy-llama`: the Llama recipe with another seed and length and no fault.

Every planted fault is written into the run's config under `expected_findings` (what
`inspector summary` has to name); `tests/faults/findings.py` checks them.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import inspector

DATA = Path(__file__).resolve().parent.parent / "engine" / "data" / "shakespeare.txt"
EVERY = {"attention": 10, "activations": 5, "gradients": 10}
BATCH, SEQ = 8, 64


def _byte_tokens() -> torch.Tensor:
    return torch.frombuffer(bytearray(DATA.read_bytes()[:400_000]), dtype=torch.uint8).long()


def _batches(seed: int) -> Callable[[], torch.Tensor]:
    tokens = _byte_tokens()
    g = torch.Generator().manual_seed(seed)

    def next_batch() -> torch.Tensor:
        starts = torch.randint(0, len(tokens) - SEQ - 1, (BATCH,), generator=g)
        return tokens[starts[:, None] + torch.arange(SEQ)]
    return next_batch


def tiny_llama(seed: int) -> nn.Module:
    """A 2-layer Llama with 4 heads (2 KV heads), vocabulary of bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ,
                      attn_implementation="sdpa")
    return LlamaForCausalLM(cfg)


def tiny_bert(seed: int) -> nn.Module:
    """A 2-layer BERT with ReLU in its feed-forward layers, vocabulary of bytes."""
    from transformers import BertConfig, BertForMaskedLM
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=SEQ, hidden_act="relu",
                     attn_implementation="eager")
    return BertForMaskedLM(cfg)


class Loop:
    """A Trainer-shaped loop: forward, backward, clip, step, then record the accumulated loss."""

    def __init__(self, model: nn.Module, seed: int, *, masked_lm: bool = False, lr: float = 3e-3) -> None:
        self.model, self.masked_lm, self.step = model, masked_lm, 0
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        self.next_batch = _batches(seed)
        self.mask_g = torch.Generator().manual_seed(seed + 1)
        self.on_step_end: list[Callable[["Loop"], None]] = []

    def _inputs(self) -> dict[str, torch.Tensor]:
        ids = self.next_batch()
        if not self.masked_lm:
            return {"input_ids": ids, "labels": ids}
        mask = torch.rand(ids.shape, generator=self.mask_g) < 0.15
        labels = torch.where(mask, ids, torch.full_like(ids, -100))
        return {"input_ids": torch.where(mask, torch.zeros_like(ids), ids), "labels": labels}

    def run(self, watch: inspector.Watch, steps: int) -> None:
        """Train `steps` steps, resetting the recorded loss tensor in place after each `watch.step`."""
        self.model.train()
        tr_loss = torch.zeros(())
        for self.step in range(steps):
            loss = self.model(**self._inputs()).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            tr_loss += loss.detach()
            watch.step(loss=tr_loss)
            if torch.isfinite(tr_loss):
                tr_loss -= tr_loss                   # transformers.Trainer's reset, after the step was recorded
            else:
                tr_loss.zero_()                      # NaN - NaN stays NaN (the Trainer filters NaN steps)
            for fn in self.on_step_end:
                fn(self)


def _heads_slice(head: int, head_dim: int) -> slice:
    return slice(head * head_dim, (head + 1) * head_dim)


class Undo:
    """Snapshot the model and optimizer at the end of `step` - 1 and restore them after `step`
    (trainers that skip non-finite steps behave the same way)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.saved: dict[str, Any] | None = None

    def __call__(self, loop: Loop) -> None:
        if loop.step == self.step - 1:
            self.saved = {"model": copy.deepcopy(loop.model.state_dict()),
                          "optimizer": copy.deepcopy(loop.optimizer.state_dict())}
        elif loop.step == self.step and self.saved is not None:
            loop.model.load_state_dict(self.saved["model"])
            loop.optimizer.load_state_dict(self.saved["optimizer"])
            self.saved = None


LLAMA_FAULTS = {
    "drift": {"from_step": 40, "module": "model.layers.1.mlp", "growth": 1.2},
    "inf_logits": {"step": 80, "layer": 0, "head": 1, "scale": 1e20},
}


def _plant_llama(model: nn.Module, loop: Loop) -> None:
    drift, inf = LLAMA_FAULTS["drift"], LLAMA_FAULTS["inf_logits"]
    modules = dict(model.named_modules())

    def drifting(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if module.training and loop.step >= drift["from_step"]:
            return out * drift["growth"] ** (loop.step - drift["from_step"] + 1)
        return None
    modules[drift["module"]].register_forward_hook(drifting)

    attn = modules[f"model.layers.{inf['layer']}.self_attn"]
    head_dim = attn.head_dim

    def overflow(kv_head: bool) -> Callable[..., torch.Tensor | None]:
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
            if not (module.training and loop.step == inf["step"]):
                return None
            head = inf["head"] // (attn.num_key_value_groups if kv_head else 1)
            out = out.clone()
            out[..., _heads_slice(head, head_dim)] *= inf["scale"]     # finite q and k, q·k overflows to +Inf
            return out
        return hook
    attn.q_proj.register_forward_hook(overflow(False))
    attn.k_proj.register_forward_hook(overflow(True))
    loop.on_step_end.append(Undo(inf["step"]))


def llama_expected() -> list[dict[str, Any]]:
    """What `inspector summary` has to name in `hf-llama-faults`."""
    drift, inf = LLAMA_FAULTS["drift"], LLAMA_FAULTS["inf_logits"]
    return [
        {"fault": "scalar mutated in place after step()", "check": "loss_as_of_call", "scalar": "loss"},
        {"fault": "activations drift out of their warm-up range", "check": "anomaly", "kind": "activation_drift",
         "step": drift["from_step"], "tolerance": 15, "module": drift["module"]},
        {"fault": "Inf from attention logits", "check": "anomaly", "kind": "nonfinite_activation",
         "step": inf["step"], "tolerance": 0, "module": f"model.layers.{inf['layer']}.self_attn"},
    ]


BERT_FAULTS = {
    "dead_relu": {"step": 30, "module": "bert.encoder.layer.1.intermediate", "bias": -100.0},
    "collapsed_head": {"from_step": 20, "layer": 0, "head": 2, "scale": 40.0},
}


def _plant_bert(model: nn.Module, loop: Loop) -> None:
    dead, head = BERT_FAULTS["dead_relu"], BERT_FAULTS["collapsed_head"]
    modules = dict(model.named_modules())
    dense = modules[dead["module"]].dense

    def kill(loop: Loop) -> None:
        if loop.step == dead["step"] - 1:           # from step `step` on, every unit's pre-activation < 0
            with torch.no_grad():
                dense.bias.fill_(dead["bias"])
    loop.on_step_end.append(kill)

    query = modules[f"bert.encoder.layer.{head['layer']}.attention.self.query"]
    head_dim = model.config.hidden_size // model.config.num_attention_heads

    def collapse(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
        if loop.step < head["from_step"]:
            return None
        out = out.clone()
        out[..., _heads_slice(head["head"], head_dim)] *= head["scale"]
        return out
    query.register_forward_hook(collapse)


def bert_expected() -> list[dict[str, Any]]:
    """What `inspector summary` has to name in `hf-bert-faults`."""
    dead, head = BERT_FAULTS["dead_relu"], BERT_FAULTS["collapsed_head"]
    return [
        {"fault": "a layer whose ReLU units die", "check": "anomaly", "kind": "dead_layer",
         "step": dead["step"], "tolerance": 15, "module": dead["module"]},
        {"fault": "a head that collapses and stays collapsed", "check": "collapsed_head",
         "layer": head["layer"], "head": head["head"], "step": head["from_step"], "tolerance": 10},
    ]


def _record(name: str, out: Path, model: nn.Module, loop: Loop, steps: int, seed: int,
            expected: list[dict[str, Any]], faults: dict[str, Any] | None) -> None:
    shutil.rmtree(out, ignore_errors=True)
    config = {"model": model.config.to_dict(), "seed": seed, "steps": steps, "expected_findings": expected,
              **({"planted_faults": faults} if faults else {})}
    watch = inspector.watch(model, out, optimizer=loop.optimizer, probes="all", every=EVERY, name=name,
                            config=_plain(config))
    try:
        loop.run(watch, steps)
    finally:
        watch.close()


def _plain(value: Any) -> Any:
    """JSON-safe copy of a config (HF configs hold dtypes and other objects)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def llama_faults(out: Path, steps: int = 100, seed: int = 0) -> None:
    """Record `hf-llama-faults` into `out`."""
    torch.set_num_threads(1)
    model = tiny_llama(seed)
    loop = Loop(model, seed)
    _plant_llama(model, loop)
    _record("hf-llama-faults", out, model, loop, steps, seed, llama_expected(), LLAMA_FAULTS)


def bert_faults(out: Path, steps: int = 80, seed: int = 0) -> None:
    """Record `hf-bert-faults` into `out`."""
    torch.set_num_threads(1)
    model = tiny_bert(seed)
    loop = Loop(model, seed, masked_lm=True)
    _plant_bert(model, loop)
    _record("hf-bert-faults", out, model, loop, steps, seed, bert_expected(), BERT_FAULTS)


def healthy_llama(out: Path, steps: int = 140, seed: int = 1) -> None:
    """Record `healthy-llama` (no fault) into `out`."""
    torch.set_num_threads(1)
    model = tiny_llama(seed)
    _record("healthy-llama", out, model, Loop(model, seed), steps, seed, [], None)
