"""`inspector_plugins.lightning.InspectorCallback` on a real `lightning.Trainer` (CPU, tiny MLP)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import inspector

lightning = pytest.importorskip("lightning")
from inspector_plugins.lightning import InspectorCallback  # noqa: E402


class _Regressor(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.validations: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.validations.append(batch_idx)
        return torch.nn.functional.mse_loss(self.net(x), y)

    def on_after_backward(self) -> None:
        grads = [p.grad.detach().double().flatten() for p in self.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.cat(grads).norm()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_lightning_fit_is_recorded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(80, 4)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    module = _Regressor()
    callback = InspectorCallback(tmp_path / "run", every={"gradients": 2, "activations": 2})
    trainer = lightning.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, val_check_interval=5,
                                num_sanity_val_steps=1, default_root_dir=str(tmp_path), callbacks=[callback])
    trainer.fit(module, loader, torch.utils.data.DataLoader(data, batch_size=80))

    run = inspector.open_run(tmp_path / "run")
    assert run.status() == "finished"
    loss = run.to_pandas("scalar", names=["loss"]).sort_values("step")
    assert loss["step"].tolist() == list(range(10))
    np.testing.assert_allclose(loss["value"].to_numpy(), module.losses, rtol=1e-6)
    # Lightning runs forward and backward inside optimizer.step(closure): the gradients must be
    # read after the closure, not in the optimizer's pre-hook.
    gnorm = run.to_pandas("scalar", names=["grad_norm/global"]).sort_values("step")
    np.testing.assert_allclose(gnorm["value"].to_numpy(), module.grad_norms, rtol=1e-5)
    assert sorted(run.to_pandas("grad_stats")["step"].unique()) == [0, 2, 4, 6, 8]
    assert "activation_stats" in run.kinds()
    # validation (sanity check, after batches 5 and 10) is the eval phase: the sanity check is filed
    # with step 0, the validation after batch 5 with step 5, the last one with no step
    assert module.validations == [0, 0, 0]
    timing = run.to_pandas("timing")
    assert sorted(timing[timing["phase"] == "eval"]["step"]) == [0, 5]
    assert callback._eval is None
