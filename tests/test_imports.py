"""The package's imports point one way: no module imports, even indirectly, one that imports it,
and the errors a researcher can cause live in `errors`, which imports nothing of the package."""

from __future__ import annotations

import ast
import pathlib

from conftest import ROOT

PACKAGE = ROOT / 'vgg_flax'


def imported_modules(path: pathlib.Path) -> set[str]:
    """The package's modules that the module at `path` imports anywhere in it (a function's
    imports and those only for type checking too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == 'vgg_flax':
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith('vgg_flax.'):
                found.add(node.module.split('.')[1])
        elif isinstance(node, ast.Import):
            found |= {
                alias.name.split('.')[1]
                for alias in node.names
                if alias.name.startswith('vgg_flax.')
            }
    return found


def import_graph() -> dict[str, set[str]]:
    return {path.stem: imported_modules(path) for path in sorted(PACKAGE.glob('*.py'))}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports in `graph` (its modules in order, the first again at the end), if any."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            if found := visit(imported, [*path, module]):
                return found
        done.add(module)
        return None

    for module in graph:
        if found := visit(module, []):
            return found
    return None


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert {'config_schema', 'errors', 'train'} <= set(graph)
    assert 'config_schema' in graph['validation'] and 'errors' in graph['run_dir']
    assert cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
    assert cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_no_module_imports_itself_through_others():
    assert cycle(import_graph()) is None


def test_the_errors_module_imports_nothing_of_the_package():
    assert imported_modules(PACKAGE / 'errors.py') == set()


def test_every_exception_class_of_the_package_is_in_the_errors_module():
    defined = {
        (path.name, node.name)
        for path in PACKAGE.glob('*.py')
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(
            isinstance(base, ast.Name) and base.id.endswith(('Error', 'Exception'))
            for base in node.bases
        )
    }
    assert defined and all(path == 'errors.py' for path, _ in defined), defined
