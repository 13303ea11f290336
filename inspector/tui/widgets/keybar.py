"""The key bar at the bottom of every screen: Textual's `Footer`, recomposed only when its keys change."""
from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


def shown_keys(screen: Screen) -> tuple[tuple[str, str, bool], ...]:
    """(key, description, enabled) of every binding the footer would show on `screen`."""
    return tuple((binding.key, binding.description, bool(enabled))
                 for (_, binding, enabled, _tooltip) in screen.active_bindings.values() if binding.show)


class KeyBar(Footer):
    """A `Footer` that skips the rebuild when a bindings refresh leaves its keys as they were.

    Textual refreshes the bindings at each focus change, screen resume and idle callback; the stock
    footer rebuilds all its key widgets every time (~25 ms each, three times while a screen opens),
    though focus moving within one table changes nothing it shows.
    """

    _shown: tuple[tuple[str, str, bool], ...] | None = None

    def bindings_changed(self, screen: Screen) -> None:
        """Rebuild (as `Footer` does) only when the keys to show differ from those shown."""
        keys = shown_keys(screen)
        if keys == self._shown:
            return
        self._shown = keys
        super().bindings_changed(screen)
