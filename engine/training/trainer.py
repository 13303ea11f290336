"""`Trainer`: AdamW + warmup/cosine, grad accumulation and clipping, DDP, eval, exact resume."""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from inspector_engine.config import ModelConfig
from inspector_engine.data import load_bytes
from inspector_engine.model import Transformer, apply_lora
from inspector_engine.training.checkpoint import (
    checkpoint_path, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state,
)
from inspector_engine.training.config import TrainConfig
from inspector_engine.training.data import TokenStream, eval_starts, split_tokens, windows
from inspector_engine.training.distributed import DistEnv, all_reduce_, barrier, setup_distributed
from inspector_engine.training.schedule import build_scheduler

CHECKPOINT_FORMAT = 1


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2) only, none on norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def _no_forward_buffer_sync() -> dict[str, bool]:
    """DDP keyword that stops the buffer broadcast before every forward: router biases are updated
    identically on every rank. Torch >= 2.13 names it `forward_sync_buffers` (`broadcast_buffers`
    is deprecated and warns); its one-off sync at wrap time copies rank 0's buffers, which are
    already equal on every rank (same seed, same checkpoint), so nothing computed changes."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


class Trainer:
    """Trains a `Transformer` on the bundled byte-level corpus.

    Public attributes: ``model`` (the bare `Transformer`; hooks registered on its modules fire
    under DDP too), ``ddp_model`` (what the forward runs through), ``optimizer``, ``scheduler``,
    ``step`` (optimizer steps done), ``callbacks`` (a list; append objects with any of
    ``on_train_start``, ``on_step_end``, ``on_eval``, ``on_train_end``), ``history`` (metrics
    dicts of every step run by this object), ``dist`` (rank / world size / device).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig | None = None,
        callbacks: Iterable[Any] | None = None,
    ) -> None:
        self.model_config = model_config
        self.config = cfg = train_config or TrainConfig()
        self.callbacks: list[Any] = list(callbacks or [])
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.dist: DistEnv = setup_distributed(cfg.device)
        self.device = self.dist.device
        if cfg.seq_len > model_config.max_seq_len:
            raise ValueError(f"seq_len {cfg.seq_len} exceeds the model's max_seq_len {model_config.max_seq_len}")

        torch.manual_seed(cfg.seed)
        model = Transformer(model_config)
        if cfg.init_from:
            model.load_state_dict(load_checkpoint(cfg.init_from)["model"])
        if cfg.lora_rank:
            apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
        model.activation_checkpointing = cfg.activation_checkpointing
        self.model: Transformer = model.to(self.device)
        self.ddp_model: torch.nn.Module = self.model
        if self.dist.world_size > 1:
            self.ddp_model = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **_no_forward_buffer_sync(),
            )
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        self.gamma = model_config.bias_update_gamma if cfg.bias_update_gamma is None else cfg.bias_update_gamma

        self.train_tokens, self.val_tokens = split_tokens(load_bytes(cfg.data_path), cfg.val_fraction)
        self.train_stream = TokenStream(self.train_tokens, cfg.seq_len, cfg.seed)
        self.step = 0
        self.history: list[dict[str, float]] = []
        if cfg.resume:
            self.load_checkpoint(self._resolve_resume(cfg.resume))

    # --- public API --------------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (and emits) its metrics."""
        cfg, rank, world = self.config, self.dist.rank, self.dist.world_size
        self.model.train()
        t0 = time.perf_counter()
        starts = self.train_stream.take(cfg.batch_size * cfg.grad_accum * world)
        ce_sum = torch.zeros((), device=self.device)
        aux_sum = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            lo = (micro * world + rank) * cfg.batch_size
            x_BT, y_BT = (t.to(self.device, non_blocking=True) for t in self.train_stream.batch(starts[lo:lo + cfg.batch_size]))
            last = micro == cfg.grad_accum - 1
            sync = self.ddp_model.no_sync() if world > 1 and not last else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    logits_BTV = self.ddp_model(x_BT)
                ce = F.cross_entropy(logits_BTV.float().flatten(0, 1), y_BT.flatten())
                aux = self.model.aux_loss().float()
                ((ce + aux) / cfg.grad_accum).backward()
            ce_sum += ce.detach()
            aux_sum += aux.detach()

        trainable = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        balance = self._update_router_biases()

        losses = all_reduce_(torch.stack([ce_sum, aux_sum]) / cfg.grad_accum, average=True).tolist()
        self.step += 1
        dt = time.perf_counter() - t0
        metrics = {
            "loss": losses[0],
            "aux_loss": losses[1],
            "total_loss": losses[0] + losses[1],
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": len(starts) * cfg.seq_len / dt,
            "step_time_s": dt,
            **balance,
        }
        self.history.append(metrics)
        self._emit("on_step_end", self.step, metrics)
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss on fixed validation windows (touches no RNG or training state)."""
        cfg = self.config
        was_training = self.model.training
        self.model.eval()
        starts = eval_starts(len(self.val_tokens), cfg.seq_len, cfg.eval_batches * cfg.batch_size)
        total, count = 0.0, 0
        for chunk in starts.split(cfg.batch_size):
            x_BT, y_BT = (t.to(self.device) for t in windows(self.val_tokens, chunk, cfg.seq_len))
            with self._autocast():
                logits_BTV = self.model(x_BT)
            total += F.cross_entropy(logits_BTV.float().flatten(0, 1), y_BT.flatten(), reduction="sum").item()
            count += y_BT.numel()
        self.model.train(was_training)
        loss = total / count
        metrics = {"val_loss": loss, "val_bits_per_byte": loss / math.log(2)}
        self._emit("on_eval", self.step, metrics)
        return metrics

    def run(self) -> list[dict[str, float]]:
        """Train until ``config.steps``, evaluating and checkpointing periodically."""
        cfg = self.config
        self._emit("on_train_start")
        bar = tqdm(total=cfg.steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (cfg.progress and self.dist.is_main))
        saved_at = -1
        while self.step < cfg.steps:
            m = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.1e}", tok_s=f"{m['tokens_per_s']:.0f}")
            if cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                ev = self.evaluate()
                if cfg.progress and self.dist.is_main:
                    bar.write(f"step {self.step}: train loss {m['loss']:.4f}  val loss {ev['val_loss']:.4f}")
            if cfg.out_dir and cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self.save_checkpoint()
                saved_at = self.step
        bar.close()
        if cfg.out_dir and saved_at != self.step:
            self.save_checkpoint()
        self._emit("on_train_end")
        return self.history

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: weights, optimizer, scheduler, data, RNG."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "data": self.train_stream.state_dict(),
            "rng": rng_state(),
            "model_config": self.model_config.to_dict(),
            "train_config": self.config.to_dict(),
            "world_size": self.dist.world_size,
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint (rank 0 writes, all ranks wait); default ``out_dir/ckpt_<step>.pt``."""
        if path is None:
            if not self.config.out_dir:
                raise ValueError("no path given and TrainConfig.out_dir is unset")
            path = checkpoint_path(self.config.out_dir, self.step)
        path = Path(path)
        if self.dist.is_main:
            save_checkpoint(path, self.state_dict())
        barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by `save_checkpoint`."""
        state = load_checkpoint(path, map_location=self.device)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: unsupported checkpoint format {state.get('format')}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.train_stream.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])

    def close(self) -> None:
        """Destroy the default process group, if one exists (call once, at the end of a DDP job)."""
        from inspector_engine.training.distributed import cleanup

        cleanup()

    # --- internals ---------------------------------------------------------------------------

    def _resolve_resume(self, resume: str) -> Path:
        if resume in ("latest", "auto"):
            if not self.config.out_dir:
                raise ValueError("resume='latest' needs out_dir")
            found = latest_checkpoint(self.config.out_dir)
            if found is None:
                raise FileNotFoundError(f"no checkpoint in {self.config.out_dir}")
            return found
        return Path(resume)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _update_router_biases(self) -> dict[str, float]:
        """All-reduce this step's expert loads, apply the V3 bias update, report load balance."""
        routers = self.model.routers()
        if not routers:
            return {}
        load_LE = all_reduce_(torch.stack([r.load_since_update for r in routers]))
        for router, load_E in zip(routers, load_LE):
            router.balance_update(self.gamma, load_E)
        max_vio_L = load_LE.amax(dim=1) / load_LE.mean(dim=1).clamp_min(1e-9) - 1
        return {"max_vio": float(max_vio_L.mean()), "router_bias_abs": float(torch.stack([r.bias.abs().mean() for r in routers]).mean())}

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is not None:
                fn(self, *args)
