"""`inspector_plugins.hf.InspectorCallback` on a real `transformers.Trainer` (tiny random Llama, no downloads)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import inspector

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments  # noqa: E402

from inspector_plugins.hf import InspectorCallback  # noqa: E402


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, length: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def test_trainer_run_is_recorded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=12, per_device_train_batch_size=8,
                             logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True, eval_strategy="steps", eval_steps=5,
                             per_device_eval_batch_size=8)
    callback = InspectorCallback(every={"attention": 5, "gradients": 5})
    trainer = Trainer(model=model, args=args, train_dataset=_Tokens(), eval_dataset=_Tokens(32),
                      callbacks=[callback])
    trainer.train()

    run = inspector.open_run(tmp_path / "out" / "inspector")
    assert run.status() == "finished"
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    loss = run.to_pandas("scalar", names=["loss"]).sort_values("step")
    assert loss["step"].tolist() == list(range(12))
    np.testing.assert_allclose(loss["value"].to_numpy(), logged, rtol=1e-5)
    assert run.blob_steps() == [0, 5, 10]                                  # attention captured under sdpa
    assert run.attention_map(step=5, layer=1).shape[0] == 4
    assert sorted(run.to_pandas("grad_stats")["step"].unique()) == [0, 5, 10]
    # the Trainer's evaluations (after optimizer steps 5 and 10) are the eval phase of the steps after
    timing = run.to_pandas("timing")
    assert sorted(timing[timing["phase"] == "eval"]["step"]) == [5, 10]
    assert {4, 9} <= set(run.to_pandas("scalar", names=["eval/loss"])["step"])
    assert model.config._attn_implementation == "sdpa"                    # closed: hooks and wrapper gone
    assert callback.watch is None
