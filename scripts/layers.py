"""The import layers of the worker's packages, checked: every import must look down.

    python -m scripts.layers          print the imports between layers, then any upward ones

Layers, lowest first: models (the wire contract and connection definitions) <- pools (FTP
sessions and their pools) <- agents.transfer (one transfer, no Faust) <- agents (Faust agents and
what they use) <- app (the worker's composition, views, metrics) <- app.cli (operator tooling)
<- app (the package itself: the entry point ``faust -A app`` loads). Imports inside a layer are
free; ``tests/unit/test_layers.py`` fails on any import from a lower layer to a higher one.
"""

from __future__ import annotations

import sys
from collections import Counter

import grimp

PACKAGES = ("models", "pools", "agents", "app")
# Most specific first: a module belongs to the first layer whose prefix it has.
LAYERS: tuple[tuple[str, str], ...] = (
    ("app.cli", "app.cli"),
    ("app.", "app"),
    ("app", "entry"),
    ("agents.transfer", "agents.transfer"),
    ("agents", "agents"),
    ("pools", "pools"),
    ("models", "models"),
)
ORDER = ("models", "pools", "agents.transfer", "agents", "app", "app.cli", "entry")


def layer_of(module: str) -> str:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix if prefix.endswith(".") else prefix + "."):
            return layer
    raise ValueError(f"{module} is in no layer")


def imports() -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import between two modules of our packages,
    TYPE_CHECKING-only imports included (they are dependencies all the same)."""
    graph = grimp.build_graph(*PACKAGES)
    found = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            details = graph.get_import_details(importer=importer, imported=imported)
            line = min((d["line_number"] for d in details), default=0)
            found.append((importer, imported, line))
    return found


def upward(found: list[tuple[str, str, int]]) -> list[str]:
    """Imports from a lower layer to a higher one, as 'importer:line -> imported'."""
    bad = []
    for importer, imported, line in found:
        if ORDER.index(layer_of(importer)) < ORDER.index(layer_of(imported)):
            bad.append(f"{importer}:{line} -> {imported}")
    return bad


def main() -> int:
    found = imports()
    edges = Counter((layer_of(a), layer_of(b)) for a, b, _ in found if layer_of(a) != layer_of(b))
    print("imports between layers (importer layer -> imported layer: count)")
    for (src, dst), count in sorted(edges.items(), key=lambda e: (ORDER.index(e[0][0]), e[0][1])):
        print(f"  {src:16} -> {dst:16} {count}")
    bad = upward(found)
    print(f"upward imports: {len(bad)}")
    for line in bad:
        print(f"  {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
