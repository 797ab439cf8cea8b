"""Public names imported on first use (PEP 562): the package root and the faces of `method/`, `run/` and
`evaluation/` declare what they export, and importing them loads nothing heavy until a name is used."""

from __future__ import annotations

import importlib
from typing import Any


def lazy_exports(namespace: dict[str, Any], exports: dict[str, tuple[str, ...]]):
    """`(__all__, __getattr__, __dir__)` for the package whose `globals()` is `namespace`. `exports` maps each module
    (a dotted name, or a name inside the package) to the public names it defines; a name, once used, becomes a plain
    attribute of the package."""
    package = namespace["__name__"]
    module_of = {name: module if "." in module else f"{package}.{module}"
                 for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # the next lookup is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    return sorted(module_of), __getattr__, __dir__
