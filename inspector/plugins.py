"""The plugin API: one context object, handed to each plugin's `register(ctx)` function.

A plugin is a callable `register(ctx: PluginContext) -> None` published under the entry-point
group `inspector.plugins` (the built-in ones in `plugins/` are published the same way, in
`pyproject.toml`). Through the context it can add:

- a record kind (`ctx.add_kind(KindSpec(...))`): a named, versioned Arrow schema its probe writes;
- a probe (`ctx.add_probe("name", "package.module:ProbeClass")`): imported only when a training
  process asks for it, so the UIs never import torch because of a plugin;
- a dashboard panel (`ctx.add_dash_panel(name, title, render)`): `render(run, step)` gets a
  `LiveRun` and the selected step and returns a Plotly figure (or a Dash component, or a string
  to show as a message); it is shown on the dashboard's Plugins page;
- a TUI screen (`ctx.add_tui_screen(name, title, key, render)`): `render(run, step)` returns a
  rich renderable (or a string); the screen opens with `key`.

A plugin that fails to import or to register is skipped with one warning line naming it, and
none of what it registered is kept. A plugin's probe runs under the same guard as the built-in
ones (`inspector.probes.base`): whatever it raises in a hook registered through `Probe.track`, in
`attach`, `detach`, `on_step_end`/`on_scalars`, or in a deferred value it submitted (resolved on
the Recorder's writer thread) switches that probe off with one warning line naming it and a
`probe_error` anomaly in the run, and training goes on; a plugin needs no try/except of its own. `inspector plugins` lists what loaded. This module imports
only the schema, so every layer may use it.
"""
from __future__ import annotations

import importlib
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

from inspector.schema import KindSpec, register_kind

ENTRY_POINT_GROUP = "inspector.plugins"

Render = Callable[[Any, int], Any]
"""`render(run: LiveRun, step: int)` → what a panel or screen shows."""


class PluginWarning(UserWarning):
    """A plugin was skipped."""


@dataclass(frozen=True)
class ProbeEntry:
    """A probe a plugin offers: its name and where to import its class from."""

    name: str
    target: str
    default: bool
    plugin: str

    def load(self) -> type:
        """Import and return the probe class."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class PanelEntry:
    """A dashboard panel or a TUI screen a plugin offers."""

    name: str
    title: str
    render: Render
    plugin: str
    key: str = ""


@dataclass
class LoadedPlugin:
    """What `inspector plugins` shows about one plugin."""

    name: str
    source: str
    ok: bool
    error: str = ""
    provides: list[str] = field(default_factory=list)


@dataclass
class PluginRegistry:
    """Everything the plugins registered."""

    plugins: list[LoadedPlugin] = field(default_factory=list)
    kinds: list[KindSpec] = field(default_factory=list)
    probes: list[ProbeEntry] = field(default_factory=list)
    dash_panels: list[PanelEntry] = field(default_factory=list)
    tui_screens: list[PanelEntry] = field(default_factory=list)


class PluginContext:
    """The one object a plugin's `register(ctx)` receives; additions take effect if it returns."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self._kinds: list[KindSpec] = []
        self._probes: list[ProbeEntry] = []
        self._panels: list[PanelEntry] = []
        self._screens: list[PanelEntry] = []

    def add_kind(self, spec: KindSpec) -> KindSpec:
        """Add a record kind (registered with the schema when the plugin finishes registering)."""
        self._kinds.append(spec)
        return spec

    def add_probe(self, name: str, target: str, *, default: bool = False) -> None:
        """Offer the probe class at `target` ("package.module:Class") as `watch(probes=[name])`.

        `default=True` also puts it in the "default" set; it is always in "all".
        """
        if ":" not in target:
            raise ValueError(f"probe target must look like 'package.module:Class', not {target!r}")
        self._probes.append(ProbeEntry(name, target, default, self.plugin))

    def add_dash_panel(self, name: str, title: str, render: Render) -> None:
        """Add a panel to the dashboard's Plugins page; `render(run, step)` → figure/component/text."""
        self._panels.append(PanelEntry(name, title, render, self.plugin))

    def add_tui_screen(self, name: str, title: str, key: str, render: Render) -> None:
        """Add a TUI screen opened with `key`; `render(run, step)` → rich renderable or text."""
        if len(key) != 1:
            raise ValueError(f"a TUI screen key is one character, not {key!r}")
        self._screens.append(PanelEntry(name, title, render, self.plugin, key))

    def _commit(self, registry: PluginRegistry) -> list[str]:
        for spec in self._kinds:
            register_kind(spec)
        registry.kinds += self._kinds
        registry.probes += self._probes
        registry.dash_panels += self._panels
        registry.tui_screens += self._screens
        return ([f"kind {k.name}" for k in self._kinds] + [f"probe {p.name}" for p in self._probes]
                + [f"dashboard panel {p.name}" for p in self._panels]
                + [f"TUI screen {s.name} (key {s.key})" for s in self._screens])


_lock = threading.Lock()
_registry: PluginRegistry | None = None


def _entry_points() -> list[Any]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def load_plugin(registry: PluginRegistry, name: str, register: Callable[[PluginContext], None] | None = None,
                *, source: str = "") -> LoadedPlugin:
    """Register one plugin into `registry`; on any error, warn once and keep nothing of it.

    `register` may be given directly (tests, scripts); otherwise it is imported from `source`
    ("package.module:function").
    """
    try:
        if register is None:
            module, _, attr = source.partition(":")
            register = getattr(importlib.import_module(module), attr or "register")
        ctx = PluginContext(name)
        register(ctx)
        provides = ctx._commit(registry)
        loaded = LoadedPlugin(name, source, True, provides=provides)
    except Exception as exc:  # a broken plugin must never break the host program
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        warnings.warn(f"inspector: plugin {name!r} skipped ({message})", PluginWarning, stacklevel=2)
        loaded = LoadedPlugin(name, source, False, error=message)
    registry.plugins.append(loaded)
    return loaded


def load_plugins(*, reload: bool = False) -> PluginRegistry:
    """Load every plugin published under `inspector.plugins` once per process (cached)."""
    global _registry
    with _lock:
        if _registry is not None and not reload:
            return _registry
        registry = PluginRegistry()
        seen: set[str] = set()
        for ep in _entry_points():
            if ep.name in seen:
                continue
            seen.add(ep.name)
            try:
                register = ep.load()
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                warnings.warn(f"inspector: plugin {ep.name!r} skipped ({message})", PluginWarning, stacklevel=2)
                registry.plugins.append(LoadedPlugin(ep.name, ep.value, False, error=message))
                continue
            load_plugin(registry, ep.name, register, source=ep.value)
        _registry = registry
        return registry
