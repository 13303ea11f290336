"""Package attributes imported on first use (PEP 562), so importing a package stays cheap.

The TUI draws its first frame from a few JSON files before pandas and pyarrow are loaded; a package
`__init__` that imported its reader eagerly would load them on the first `import inspector.store`.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_getattr(package: str, exports: Mapping[str, tuple[str, str]], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports `exports[name] = (module, attribute)` on
    first access and keeps it in `namespace` (the package's globals)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            module, attr = exports[name]
            value = getattr(importlib.import_module(module), attr)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
