"""Decide whether a failed DataLoader load is retried or goes to a person (Dagster Pipes script).

Run by ``dataloader__retry_analysis`` as a local subprocess or a Databricks run, with Pipes extras
``{"params": request}`` (see ``build_analysis_request`` in the code location's retry analysis). It
asks the configured chat model (``DATALOADER_AI_*``, read once into ``script_env.ScriptEnv``; see
``retry.advisor``) and falls back to the rules classifier, then reports:

- materialization metadata ``decision``, ``confidence``, ``reason``, ``decider``, ``retry_count``;
- custom message ``{"retry_decision": {...}}`` with the same fields plus how they were reached.

It never changes the control table itself: the asset applies the decision with a guarded
transition, so a decision reported twice cannot act twice. The script should not fail: every model
problem ends in a rules decision; only a missing or broken request is an error.

Imports only the standard library, ``openai`` (through ``retry.advisor``), ``dagster_pipes`` and
sibling modules, because on Databricks only this directory is shipped.
"""

from __future__ import annotations

import os
import sys


def _import_as_package() -> None:
    """Make ``databricks_scripts`` importable as a package when this file is run by its path.

    The same as in ``dataloader_pipe.py`` (an entry script cannot import it before it ran): the
    directory comes from a code object's file name, since a Databricks spark_python_task may
    ``exec(compile(...))`` the file without ``__file__``. The directory above
    ``databricks_scripts/`` goes first on ``sys.path``, the script's own directory is taken off,
    so no sibling also loads as a top-level module.
    """
    here = os.path.dirname(os.path.abspath(_import_as_package.__code__.co_filename))
    parent = os.path.dirname(here)
    real_here, real_parent = os.path.realpath(here), os.path.realpath(parent)
    sys.path[:] = [
        p for p in sys.path if os.path.realpath(p or os.curdir) not in (real_here, real_parent)
    ]
    sys.path.insert(0, parent)


_import_as_package()

from dagster_pipes import open_dagster_pipes

from databricks_scripts.contract import (
    PARAMS_EXTRA,
    RETRY_DECISION_MESSAGE_KEY,
    Decision,
)
from databricks_scripts.pipes_io import choose_pipes_io
from databricks_scripts.redaction import redact
from databricks_scripts.retry.advisor import AdvisorConfig, decide_retry
from databricks_scripts.script_env import ScriptEnv


def analyse(request: dict, env: ScriptEnv) -> dict:
    """The decision for one request, with ``retry_count`` echoed for the asset's metadata."""
    if not isinstance(request, dict) or "error_message" not in request:
        raise ValueError(
            f"Pipes extras {PARAMS_EXTRA!r} must be the analysis request with 'error_message'"
        )
    config = AdvisorConfig.for_request(request, env.ai_env)
    result = decide_retry(request, config, secrets=env.secrets)
    result["retry_count"] = int(request.get("retry_count") or 0)
    return result


def main() -> int:
    env = ScriptEnv.from_environ()
    params_loader, context_loader, message_writer, io_kind = choose_pipes_io(env)
    if io_kind == "none":
        print(
            "dataloader_retry_pipe.py is started by Dagster Pipes (dataloader__retry_analysis); "
            "no Pipes bootstrap found.",
            file=sys.stderr,
        )
        return 2
    with open_dagster_pipes(
        params_loader=params_loader,
        context_loader=context_loader,
        message_writer=message_writer,
    ) as pipes:
        env.check_runtime()
        request = pipes.get_extra(PARAMS_EXTRA)
        result = analyse(request, env)
        decision = Decision.from_mapping(result)
        pipes.log.info(
            redact(
                f"{request.get('control_key')}: {decision.decision} by {decision.decider} "
                f"(confidence {decision.confidence or 0.0:.2f}): {decision.reason}",
                env.secrets,
            )
        )
        if result.get("model_error"):
            pipes.log.warning(
                f"Model gave no usable answer ({result['model_error']}); rules decided."
            )
        pipes.report_custom_message({RETRY_DECISION_MESSAGE_KEY: result})
        metadata = {**decision.as_dict(), "retry_count": result["retry_count"]}
        pipes.report_asset_materialization(metadata=metadata)
    return 0


if __name__ == "__main__":
    sys.exit(main())
