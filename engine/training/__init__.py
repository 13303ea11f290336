"""Training: `Trainer`, `TrainConfig`, data pipeline, schedule, checkpoints, DDP helpers."""

from inspector_engine.training.callbacks import Callback, JsonlLogger
from inspector_engine.training.checkpoint import latest_checkpoint, load_checkpoint, load_model
from inspector_engine.training.config import TrainConfig
from inspector_engine.training.trainer import Trainer

__all__ = ["Callback", "JsonlLogger", "TrainConfig", "Trainer", "latest_checkpoint", "load_checkpoint", "load_model"]
