"""Dagster internals stay in dagsters/dagster_compat.py, and what it relies on is still there.

If a dagster or dagster-databricks upgrade renames, re-signs or stops calling the polling method
the Databricks runner overrides, these tests fail by name instead of the runner silently losing
the early run link and the cancellation on termination.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

import dagster as dg
import dagster_databricks.pipes as databricks_pipes
import pytest
from dagster_databricks.pipes import (
    BasePipesDatabricksClient,
    PipesDatabricksClient,
    PipesDatabricksServerlessClient,
)

from dagsters import dagster_compat
from dagsters.dagster_compat import POLL_METHOD, POLL_PARAMETERS, tracked_databricks_client

DAGSTERS = Path(__file__).resolve().parents[2] / "dagsters"
CLIENTS = (PipesDatabricksClient, PipesDatabricksServerlessClient)


def _source_tree(function) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(function)))


def _calls(node: ast.AST) -> list[str]:
    return [
        n.func.attr
        for n in ast.walk(node)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    ]


def _first_line(tree: ast.AST, attribute: str) -> int:
    return min(
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == attribute
    )


def test_only_the_compat_module_imports_dagster_internals():
    importers = []
    for path in DAGSTERS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            if any(m.split(".")[0].startswith("dagster") and "._" in m for m in modules):
                importers.append(path.relative_to(DAGSTERS).as_posix())
    assert sorted(set(importers)) == ["dagster_compat.py"]


def test_the_error_classes_are_the_ones_dagster_databricks_raises_and_catches():
    assert databricks_pipes.DagsterPipesExecutionError is dagster_compat.DagsterPipesExecutionError
    assert databricks_pipes.DagsterExecutionInterruptedError is dg.DagsterExecutionInterruptedError


def test_the_overridden_polling_method_keeps_its_name_and_signature():
    method = getattr(BasePipesDatabricksClient, POLL_METHOD, None)
    assert method is not None, f"dagster-databricks no longer has {POLL_METHOD}"
    assert tuple(inspect.signature(method).parameters) == POLL_PARAMETERS
    # It raises the execution error the runner catches when the run does not succeed.
    raised = [
        n.exc.func.id
        for n in ast.walk(_source_tree(method))
        if isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call)
    ]
    assert raised and set(raised) == {"DagsterPipesExecutionError"}


@pytest.mark.parametrize("client_class", CLIENTS, ids=lambda c: c.__name__)
def test_run_polls_through_the_method_and_cancels_on_interrupt(client_class):
    """run() submits, then calls the polling method inside a try that cancels on interrupt."""
    tree = _source_tree(client_class.run)
    guarded = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Try) and POLL_METHOD in _calls(ast.Module(node.body, []))
    ]
    assert len(guarded) == 1, f"{client_class.__name__}.run no longer polls via {POLL_METHOD}"
    [handler] = guarded[0].handlers
    assert getattr(handler.type, "id", None) == "DagsterExecutionInterruptedError"
    assert "cancel_run" in _calls(handler)
    # ...after the run is submitted: the run id it is called with exists.
    assert _first_line(tree, "submit") < _first_line(tree, POLL_METHOD)


class _Tracker:
    def __init__(self) -> None:
        self.run_ids: list[int] = []
        self.interrupted = False

    def submitted(self, run_id: int) -> None:
        self.run_ids.append(run_id)


@pytest.mark.parametrize("client_class", CLIENTS, ids=lambda c: c.__name__)
def test_the_tracked_client_overrides_exactly_the_polling_method(client_class):
    extra = (
        {"volume_path": "/Volumes/c/s/v"} if client_class is PipesDatabricksServerlessClient else {}
    )
    client = tracked_databricks_client(client_class, _Tracker(), client=None, **extra)
    assert isinstance(client, client_class)
    override = getattr(type(client), POLL_METHOD)
    assert override is not getattr(client_class, POLL_METHOD)
    assert tuple(inspect.signature(override).parameters) == POLL_PARAMETERS
    own = [name for name in vars(type(client)) if not name.startswith("__")]
    assert set(own) - {"_abc_impl"} == {POLL_METHOD}


def test_the_run_body_the_fork_server_launcher_calls_keeps_its_name_and_signature():
    """dataloader dev's run launcher runs a run as `dagster api execute_run` does, through its
    body: renamed or re-signed by an upgrade, every local run would fail at start."""
    from dagster._cli import api

    body = getattr(api, dagster_compat.RUN_BODY, None)
    assert body is not None, f"dagster._cli.api no longer has {dagster_compat.RUN_BODY}"
    assert tuple(inspect.signature(body).parameters) == dagster_compat.RUN_BODY_PARAMETERS
