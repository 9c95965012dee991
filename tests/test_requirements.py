"""requirements-service.txt is what production installs: it must hold everything the shipped code imports,
and requirements.txt (what the README and CI install) must include it."""
import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / "server"] + sorted(path for folder in ("queues", "scoring") for path in (REPO / folder).glob("*.py"))
OURS = {"queues", "scoring", "bench", "tests"}


def names(path):
    """Distribution names a requirements file lists (pins and extras dropped, includes skipped)."""
    found = []
    for line in (REPO / path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            found.append(re.split(r"[\[=<>!~ ]", line)[0])
    return found


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def with_dependencies(distributions):
    """The distributions and everything they require, as installed here."""
    seen, todo = set(), [canonical(name) for name in distributions]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo.extend(canonical(re.split(r"[\[=<>!~ ;(]", requirement)[0]) for requirement in requires
                    if "extra ==" not in requirement)
    return seen


def imported_modules():
    """Top-level modules the shipped code imports, wherever the import is (commands import lazily)."""
    modules = set()
    for path in SHIPPED:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - OURS - {"__future__"}


def test_requirements_txt_includes_the_service_requirements():
    assert "-r requirements-service.txt" in (REPO / "requirements.txt").read_text().splitlines()
    assert not set(names("requirements.txt")) & set(names("requirements-service.txt"))  # each pinned once


def test_a_production_install_has_every_package_the_service_imports():
    provided = importlib.metadata.packages_distributions()
    installable = with_dependencies(names("requirements-service.txt"))
    missing = {module for module in imported_modules()
               if not {canonical(name) for name in provided.get(module, [])} & installable}
    assert not missing, "the service imports %s, which requirements-service.txt does not install" % sorted(missing)


@pytest.mark.parametrize("tool", ["pytest", "mongomock", "moto", "hypothesis", "selenium", "secantusdb"])
def test_a_production_install_pulls_no_test_tool(tool):
    assert canonical(tool) not in with_dependencies(names("requirements-service.txt"))
