"""A real long-sequence run on the Attention page: the pooled map says it is pooled and equals the block
means of the true attention, the last query's full row and every head's distance profile are drawn."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import inspector
from inspector_engine.config import get_config
from inspector_engine.model import Transformer
from tests.dash_app.conftest import dash_server
from tests.dash_app.helpers import figure, wait_figure, wait_title
from tests.dash_app.test_pages import open_page, shot

T = 600
MAP = 64


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """The engine's debug model on one 600-token sequence, attention recorded with maps of ≤ 64 rows;
    the test's own hook keeps layer 0's queries and keys."""
    root = tmp_path_factory.mktemp("long")
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(get_config("debug"), max_seq_len=1024))
    seen = {}
    tap = next(m for n, m in model.named_modules() if type(m).__name__ == "QKCapture")

    def keep(mod, args, out) -> None:
        seen.setdefault("qk", (args[0][0].detach().double().numpy(), args[1][0].detach().double().numpy(),
                               mod.softmax_scale))

    handle = tap.register_forward_hook(keep)
    w = inspector.watch(model, root / "long", probes=["attention"], every=1, max_attention_rows=MAP,
                        hang_after_s=None)
    model(torch.randint(0, 256, (1, T)))
    w.step()
    w.close()
    handle.remove()
    q, k, scale = seen["qk"]
    s = np.einsum("htd,hsd->hts", q, k) * scale
    s = np.where(np.tril(np.ones((T, T), bool))[None], s, -np.inf)
    e = np.exp(s - s.max(-1, keepdims=True))
    return root, e / e.sum(-1, keepdims=True)


def test_pooled_map_rows_and_distance_profile(page, long_run):
    root, ref = long_run
    with dash_server(root) as live:
        open_page(page, live, "/attention", run="long")
        big = wait_title(page, "attn-big", "layer 0 · head 0")
        rp, kp = math.ceil(T / MAP), None
        z = np.array(big["data"][0]["z"], float)
        kp = math.ceil(T / z.shape[1])
        assert z.shape[0] == math.ceil(T / rp) and z.shape[0] * z.shape[1] <= MAP * MAP
        blocks = np.zeros((z.shape[0] * rp, z.shape[1] * kp))
        blocks[:T, :T] = ref[0]
        sums = blocks.reshape(z.shape[0], rp, z.shape[1], kp).sum((1, 3))
        counts = np.minimum(rp, T - np.arange(z.shape[0]) * rp)[:, None]
        np.testing.assert_allclose(z, sums / counts, atol=2e-3)
        np.testing.assert_allclose(z.sum(1), 1.0, atol=2e-2)                # still an attention map: rows sum to 1
        subtitle = page.evaluate("() => document.querySelector('#attn-big .js-plotly-plot').layout.title.subtitle.text")
        assert f"each cell is the weight on {kp} keys, mean of {rp} queries (600 × 600 pooled)" in subtitle
        rows = wait_figure(page, "attn-rows")
        assert rows["data"][0]["name"] == f"query {T - 1}"
        np.testing.assert_allclose(np.array(rows["data"][0]["y"], float), ref[0, T - 1], atol=2e-3)
        dist = wait_figure(page, "attn-distance")
        zd = np.array(dist["data"][0]["z"], float)
        heads = get_config("debug").n_heads
        assert zd.shape == (get_config("debug").n_layers * heads, 1 + 11)   # sink, then distances 0 … 512–1,023
        assert dist["data"][0]["x"][-1] == "512–1,023"
        np.testing.assert_allclose(zd[:, 1:].sum(1), 1.0, atol=1e-3)      # each head's weight, all distances
        np.testing.assert_allclose(zd[0, 0], ref[0, :, :4].sum(-1).mean(), atol=1e-4)   # L0·H0 sink mass
        assert figure(page, "attn-entropy") is not None
        shot(page, "attention_long_context")
        assert page.errors == []
