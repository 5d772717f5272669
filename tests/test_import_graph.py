"""No import cycle between any two relay modules, `if TYPE_CHECKING:` imports included.

The layers and forbidden contracts in pyproject.toml run under `lint-imports`
(scripts/check); import-linter's acyclic_siblings contract compares packages,
not modules, so it cannot allow node -> federation -> node.state while
forbidding a module cycle. This test holds the module graph to no cycles.
"""

from __future__ import annotations

import grimp


def import_cycles(graph: grimp.ImportGraph, package: str) -> list[tuple[str, ...]]:
    """One shortest cycle through each direct import that closes one, sorted."""
    cycles: set[tuple[str, ...]] = set()
    for importer in graph.find_descendants(package) | {package}:
        for imported in graph.find_modules_directly_imported_by(importer):
            if not imported.startswith(package + "."):
                continue
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycle = (importer, *back)
                start = cycle.index(min(cycle[:-1]))  # one rotation per cycle
                cycles.add(cycle[start:-1] + cycle[:start] + (cycle[start],))
    return sorted(cycles)


def test_a_cycle_is_found_where_there_is_one() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    graph.add_import(importer="pkg.d", imported="pkg.a")
    assert import_cycles(graph, "pkg") == [("pkg.a", "pkg.b", "pkg.c", "pkg.a")]


def test_relay_has_no_import_cycle() -> None:
    graph = grimp.build_graph("relay", exclude_type_checking_imports=False, cache_dir=None)
    cycles = import_cycles(graph, "relay")
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
