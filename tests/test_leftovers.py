"""No leftovers: everything the service's modules define is used by the service.

A function, class or constant in ``scoring/`` or ``queues/`` that only the
tests call is code nobody runs in production, and a second, untested
version of whatever the service really does. The shipped code is
``queues/``, ``scoring/``, ``bench/`` and the ``server`` script; a name
counts as used when that code refers to it anywhere other than where it
is defined (strings and docstrings do not count).
"""
import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("queues", "scoring")
SHIPPED = [REPO / "server"] + sorted(path for folder in PACKAGES + ("bench",) for path in (REPO / folder).rglob("*.py"))


def defined(tree):
    """Top-level functions, classes and upper-case constants of a module."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            yield node.name, node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    yield target.id, node


def referenced(tree, skip=None):
    """Names a module refers to (loads, attributes, imports), outside the node ``skip``."""
    skipped = set(ast.walk(skip)) if skip is not None else set()
    names = set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            names.update(alias.name for alias in node.names)
    return names


@functools.lru_cache(maxsize=None)
def parsed():
    return {path: ast.parse(path.read_text(), str(path)) for path in SHIPPED}


#: Every module of the packages, subpackages included (queues/http/...).
MODULES = [path for path in SHIPPED if path.relative_to(REPO).parts[0] in PACKAGES and path.name != "__init__.py"]


@pytest.mark.parametrize("module", MODULES, ids=lambda path: str(path.relative_to(REPO)))
def test_every_name_a_module_defines_is_used_by_shipped_code(module):
    trees = parsed()
    elsewhere = set()
    for path, tree in trees.items():
        if path != module:
            elsewhere |= referenced(tree)
    unused = []
    for name, node in defined(trees[module]):
        if name not in elsewhere and name not in referenced(trees[module], skip=node):
            unused.append(name)
    assert not unused, "%s defines %s, which only tests (or nothing) use: remove it or make the service use it" % (
        module.relative_to(REPO), ", ".join(unused))
