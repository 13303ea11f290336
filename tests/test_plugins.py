"""The plugin API: entry-point discovery, failure isolation, and the worked weight-norm example."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import inspector
from inspector.plugins import PluginRegistry, PluginWarning, load_plugin, load_plugins
from inspector.schema import KindSpec, get_kind
from tests.conftest import ROOT


def _fake_distribution(site: Path, name: str, entry: str, module_source: str) -> None:
    """A real installed distribution (dist-info with entry_points.txt) publishing one plugin."""
    dist = site / f"{name}-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[inspector.plugins]\n{name} = {entry}\n")
    (site / f"{entry.split(':')[0]}.py").write_text(module_source)


def test_builtin_plugin_is_found_through_its_entry_point() -> None:
    registry = load_plugins()
    plugin = {p.name: p for p in registry.plugins}["weight_norm"]
    assert plugin.ok and plugin.source == "inspector_plugins.weight_norm:register"
    assert [s.key for s in registry.tui_screens if s.name == "weight_norm"] == ["w"]
    assert get_kind("weight_norm").name == "weight_norm"


def test_broken_plugins_are_skipped_with_one_line_each(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "brokenimport", "brokenimport_mod:register", "import no_such_module_xyz\n")
    _fake_distribution(tmp_path, "brokenregister", "brokenregister_mod:register",
                       "def register(ctx):\n    ctx.add_tui_screen('x', 'X', 'too long', print)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "COLUMNS": "200"}
    code = ("import warnings, inspector.plugins as p\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    r = p.load_plugins()\n"
            "print('\\n'.join(str(x.message) for x in w))\n"
            "print(sorted((x.name, x.ok) for x in r.plugins))\n"
            "print([s.name for s in r.tui_screens])\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert "inspector: plugin 'brokenimport' skipped (ModuleNotFoundError: No module named 'no_such_module_xyz')" in lines
    assert any(line.startswith("inspector: plugin 'brokenregister' skipped (ValueError: a TUI screen key") for line in lines)
    assert "('brokenimport', False), ('brokenregister', False), ('hf', True), ('lightning', True), ('weight_norm', True)" in out
    assert "['weight_norm']" in out         # nothing of the broken ones was kept
    listing = subprocess.run([str(Path(sys.executable).with_name("inspector")), "plugins"], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert "brokenimport" in listing and "skipped" in listing and "weight_norm" in listing


def test_failed_registration_keeps_nothing() -> None:
    registry = PluginRegistry()
    spec = KindSpec("test_plugin_kind_never_kept", 1, ())

    def register(ctx):
        ctx.add_kind(spec)
        ctx.add_dash_panel("p", "P", lambda run, step: "x")
        raise RuntimeError("boom")

    with pytest.warns(PluginWarning, match="plugin 'bad' skipped \\(RuntimeError: boom\\)"):
        loaded = load_plugin(registry, "bad", register)
    assert not loaded.ok and registry.dash_panels == [] and registry.kinds == []
    with pytest.raises(KeyError):
        get_kind("test_plugin_kind_never_kept")


def test_weight_norm_probe_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh()) for _ in range(3)])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    w = inspector.watch(model, tmp_path / "run", optimizer=opt, probes=["weight_norm"])
    expected = {}
    for step in range(21):
        loss = model(torch.randn(4, 8)).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 10 == 0:
            expected[step] = [np.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in block.parameters()))
                              for block in model]
        w.step(loss=loss)
    w.close()
    df = inspector.open_run(tmp_path / "run").to_pandas("weight_norm")
    assert sorted(df["step"].unique()) == [0, 10, 20]
    for step, norms in expected.items():
        got = df[df["step"] == step].sort_values("name")["norm"].to_numpy()
        np.testing.assert_allclose(got, norms, rtol=1e-5)


def test_weight_norm_panels_render_without_torch(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with inspector.watch(model, tmp_path / "run", optimizer=opt, probes=["weight_norm"]) as w:
        for _ in range(12):
            model(torch.randn(2, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
            w.step()
    code = ("import sys\n"
            "from inspector.views import open_live\n"
            "from inspector.plugins import load_plugins\n"
            "reg = load_plugins()\n"
            f"run = open_live({str(tmp_path / 'run')!r})\n"
            "panel = [p for p in reg.dash_panels if p.name == 'weight_norm'][0]\n"
            "screen = [s for s in reg.tui_screens if s.name == 'weight_norm'][0]\n"
            "fig = panel.render(run, 10)\n"
            "print(len(fig.data[0].y), list(fig.data[0].x))\n"
            "from rich.console import Console\n"
            "Console(width=80).print(screen.render(run, 10))\n"
            "assert 'torch' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.splitlines()[0] == "2 [0, 10]"
    assert "weight norm per block (step ≤ 10)" in out
