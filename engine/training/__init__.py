"""Training: `Trainer`, `TrainConfig`, data pipeline, schedule, checkpoints, DDP helpers."""

from engine.training.callbacks import Callback, JsonlLogger
from engine.training.checkpoint import latest_checkpoint, load_checkpoint, load_model
from engine.training.config import TrainConfig
from engine.training.trainer import Trainer

__all__ = ["Callback", "JsonlLogger", "TrainConfig", "Trainer", "latest_checkpoint", "load_checkpoint", "load_model"]
