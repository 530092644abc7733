"""Names a package exports but imports on first use, for modules that pull in a heavy dependency.

The one place the project defers imports at package level: ``middleware`` defers ``LiteLLMBackend``
(litellm takes seconds to import) and the config, local-model and evaluation names (more than a pipeline
needs to start), and ``judge`` defers the reward model (torch). Everything else is imported at the top of
its module.

    __getattr__, __dir__ = lazy_exports(__name__, globals(), {"LiteLLMBackend": ".remote"})
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], table: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` for ``package``: each name in ``table`` (name -> module,
    relative to ``package``) is imported when first asked for, then kept in ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
