"""Probe registry and the named probe sets `watch(probes=...)` accepts."""
from __future__ import annotations

from typing import Callable, Sequence

from inspector.probes.base import Probe

PROBES: dict[str, type[Probe]] = {}
"""Probe classes by name; built-in probes register on import of `inspector.probes`."""

PROBE_SETS: dict[str, list[str]] = {"none": [], "default": [], "all": []}
"""Named selections. `default` is tuned to stay within the overhead budget; `all` is everything."""


def register_probe(cls: type[Probe] | None = None, *, default: bool = True) -> Callable | type[Probe]:
    """Class decorator: add a probe to the registry, and to the `default` set unless told not to."""

    def add(c: type[Probe]) -> type[Probe]:
        if not c.name:
            raise ValueError(f"{c.__name__} has no name")
        PROBES[c.name] = c
        if c.name not in PROBE_SETS["all"]:
            PROBE_SETS["all"].append(c.name)
        if default and c.name not in PROBE_SETS["default"]:
            PROBE_SETS["default"].append(c.name)
        return c

    return add(cls) if cls is not None else add


def install_plugin_probes() -> None:
    """Register the probes that plugins offer (imported now, in the training process only).

    A probe class that fails to import is skipped with one warning naming its plugin.
    """
    import warnings

    from inspector.plugins import PluginWarning, load_plugins

    for entry in load_plugins().probes:
        if entry.name in PROBES:
            continue
        try:
            register_probe(entry.load(), default=entry.default)
        except Exception as exc:  # a broken plugin never stops training
            warnings.warn(f"inspector: probe {entry.name!r} of plugin {entry.plugin!r} skipped "
                          f"({type(exc).__name__}: {exc})", PluginWarning, stacklevel=2)


def resolve_probes(probes: str | Sequence[str]) -> list[str]:
    """Probe names for a set name or an explicit list (ValueError naming what is available)."""
    install_plugin_probes()
    if isinstance(probes, str):
        if probes not in PROBE_SETS:
            raise ValueError(f"probes must be one of {sorted(PROBE_SETS)} or a list of probe names, not {probes!r}")
        return list(PROBE_SETS[probes])
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe(s) {unknown}; available: {sorted(PROBES) or 'none'}")
    return list(dict.fromkeys(probes))
