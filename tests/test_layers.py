"""The layers of ``dagsters/`` hold: no import cycle, product code never imports the local-dev
package, sensors do not import the assets, and only the edge reads the environment. The scripts
(``databricks_scripts/``) have no import cycle either and never import the code location; in both,
imports of the package's own modules inside functions are counted against a ceiling."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dagsters"
# The edge: builds Settings from the environment and the local-dev pieces for the code location.
EDGE = {"dagsters.definitions", "dagsters.local.cli"}
ENVIRONMENT_READERS = {"dagsters.settings", "dagsters.local.cli"}


SCRIPTS = ROOT / "databricks_scripts"
PACKAGES = (PACKAGE, SCRIPTS)


def _modules(package: Path = PACKAGE) -> dict[str, ast.Module]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return found


def _imported_names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return set()


def _imports(tree: ast.AST, top: str = "dagsters") -> set[str]:
    """Names of the ``top`` package's modules a module imports, inside functions too: an import
    moved into a function to dodge a cycle still couples the two modules both ways."""
    names: set[str] = set()
    for node in ast.walk(tree):
        names |= _imported_names(node)
    return {name for name in names if name == top or name.startswith(f"{top}.")}


def _function_level_imports(package: Path) -> list[str]:
    """``module:line name`` for each import of the package's own modules inside a function."""
    top = package.name
    found = []
    for name, tree in _modules(package).items():
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                own = sorted(
                    n for n in _imported_names(node) if n == top or n.startswith(f"{top}.")
                )
                if own:
                    found.append(f"{name}:{node.lineno} {own[0]}")
    return sorted(set(found))


def _cycle(package: Path) -> list[str] | None:
    """The first import cycle between the package's modules (function-level imports count)."""
    modules = _modules(package)
    graph = {
        name: {dep for dep in _imports(tree, package.name) if dep in modules and dep != name}
        for name, tree in modules.items()
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in done:
            return None
        if name in visiting:
            return [*visiting[visiting.index(name) :], name]
        visiting.append(name)
        for dep in sorted(graph[name]):
            cycle = visit(dep)
            if cycle:
                return cycle
        visiting.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name)
        if cycle:
            return cycle
    return None


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_import_cycle_between_modules(package):
    cycle = _cycle(package)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import(tmp_path, monkeypatch):
    fake = tmp_path / "databricks_scripts"
    fake.mkdir()
    (fake / "a.py").write_text("from databricks_scripts.b import x\n", encoding="utf-8")
    (fake / "b.py").write_text(
        "def f():\n    from databricks_scripts.a import y\n", encoding="utf-8"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _cycle(fake) == ["databricks_scripts.a", "databricks_scripts.b", "databricks_scripts.a"]
    assert _function_level_imports(fake) == ["databricks_scripts.b:2 databricks_scripts.a"]


# Imports of a package's own modules inside functions: each hides a dependency from the reader
# (and, before the scan above, hid cycles). Lazy imports of third-party modules (pyarrow.compute,
# deltalake, pyspark) are not counted. The ceilings only go down: lower one when you remove some.
FUNCTION_LEVEL_IMPORT_CEILING = {"dagsters": 15, "databricks_scripts": 19}


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_function_level_imports_of_own_modules_stay_under_their_ceiling(package):
    found = _function_level_imports(package)
    ceiling = FUNCTION_LEVEL_IMPORT_CEILING[package.name]
    assert len(found) <= ceiling, f"{len(found)} > {ceiling}:\n" + "\n".join(found)


def test_the_scripts_never_import_the_code_location():
    # databricks_scripts is shipped to Databricks alone; only the contract crosses, from there.
    offenders = {
        name: sorted(_imports(tree, "dagsters")) for name, tree in _modules(SCRIPTS).items()
    }
    assert {name: deps for name, deps in offenders.items() if deps} == {}


# The scripts' packages (issue 24): the engine-neutral rules (load/) import no engine and no
# reader; the readers (sources/) and each engine build on load/ (the Arrow engine on its readers
# too); the two engines never import each other (a rule both need belongs in load/); retry/ stands
# alone. Only the entry scripts (dataloader_pipe, dataloader_retry_pipe) put the pieces together.
SHARED = {"contract", "failures", "redaction", "script_env", "local_secrets", "pipes_io"}
PACKAGE_MAY_IMPORT = {
    "load": SHARED,
    "sources": SHARED | {"load"},
    "engines.arrow": SHARED | {"load", "sources"},  # its readers are sources/
    "engines.spark": SHARED | {"load"},
    "retry": SHARED,
    **{shared: SHARED for shared in SHARED},
}


def _script_package(module: str) -> str:
    """``load`` for databricks_scripts.load.params, ``contract`` for databricks_scripts.contract."""
    parts = module.split(".")[1:]
    return ".".join(parts[:-1]) if len(parts) > 1 else (parts[0] if parts else "")


def test_the_scripts_packages_import_only_what_their_layer_may():
    modules = _modules(SCRIPTS)
    packages = {
        ".".join(("databricks_scripts", *p.relative_to(SCRIPTS).parent.parts))
        for p in SCRIPTS.rglob("__init__.py")
    }
    wrong = []
    for name, tree in modules.items():
        mine = _script_package(name)
        if name in packages or mine not in PACKAGE_MAY_IMPORT:
            continue  # a package's docstring, or an entry script
        for imported in _imports(tree, "databricks_scripts"):
            if imported not in modules or imported in packages:
                continue  # a name imported from a module, or the package of a module import
            theirs = _script_package(imported)
            if theirs != mine and theirs not in PACKAGE_MAY_IMPORT[mine]:
                wrong.append(f"{name} imports {imported}")
    assert wrong == []
    assert len(modules) > 40  # the scan sees the subpackages


def test_the_domain_layer_is_not_dagster_shaped_and_policy_holds_no_sql():
    # control/ (SQL) and policy/ (rules and decisions) are the domain: neither imports Dagster;
    # policy/ holds no SQL and no database driver (it may call the LakebaseClient facade).
    modules = _modules()
    dagster_in_domain = [
        name
        for name, tree in modules.items()
        if name.startswith(("dagsters.control.", "dagsters.policy."))
        and any(n == "dagster" or n.startswith("dagster.") for n in _all_imports(tree))
    ]
    assert dagster_in_domain == []
    sql_in_policy = [
        name
        for name, tree in modules.items()
        if name.startswith("dagsters.policy.")
        and (
            any(n.split(".")[0] == "psycopg" for n in _all_imports(tree))
            or any(
                isinstance(node, ast.Attribute) and node.attr in ("_transaction", "execute")
                for node in ast.walk(tree)
            )
        )
    ]
    assert sql_in_policy == []
    assert sum(name.startswith("dagsters.policy.") for name in modules) >= 6


def _all_imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        names |= _imported_names(node)
    return names


def test_every_module_imports_on_its_own():
    # Each module first, in a process where no other dagsters module is loaded yet.
    names = sorted(_modules())
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'dagsters']:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module(name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        # No LAKEBASE_HOST needed: importing must not connect to anything.
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_product_code_never_imports_the_local_dev_package():
    offenders = {
        name: sorted(dep for dep in _imports(tree) if dep.startswith("dagsters.local"))
        for name, tree in _modules().items()
        if not name.startswith("dagsters.local") and name not in EDGE
    }
    assert {name: deps for name, deps in offenders.items() if deps} == {}


def test_sensors_take_the_partitions_from_their_own_module_not_from_the_assets():
    for name, tree in _modules().items():
        if name.startswith("dagsters.sensors"):
            assert not any(dep.startswith("dagsters.assets") for dep in _imports(tree)), name


def _reads_environment(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv", "putenv")
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in ("environ", "getenv") for alias in node.names)
        ):
            return True
    return False


def test_only_the_edge_reads_the_environment():
    readers = {name for name, tree in _modules().items() if _reads_environment(tree)}
    assert readers <= ENVIRONMENT_READERS


# Limits for one product file and one function (decorators and docstring included): past them, a
# file or function has more than one reason to change and is split before it grows.
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
PRODUCT_DIRS = ("dagsters", "databricks_scripts")


def _product_files() -> list[Path]:
    return sorted(path for top in PRODUCT_DIRS for path in (ROOT / top).rglob("*.py"))


def test_no_product_file_or_function_is_too_long():
    offenders = []
    for path in _product_files():
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT).as_posix()
        lines = len(text.splitlines())
        if lines > MAX_FILE_LINES:
            offenders.append(f"{where}: {lines} lines (limit {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text, where)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                size = node.end_lineno - first + 1
                if size > MAX_FUNCTION_LINES:
                    offenders.append(
                        f"{where}:{node.lineno} {node.name}: {size} lines"
                        f" (limit {MAX_FUNCTION_LINES})"
                    )
    assert _product_files(), "no product file found"
    assert offenders == [], "\n".join(offenders)
