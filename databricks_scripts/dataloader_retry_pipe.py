"""Decide whether a failed DataLoader load is retried or goes to a person (Dagster Pipes script).

Run by ``dataloader__retry_analysis`` as a local subprocess or a Databricks run, with Pipes extras
``{"params": request}`` (see ``dagsters/utils/retry_analysis.build_analysis_request``). It asks the
configured chat model (``DATALOADER_AI_*``; see ``retry_advisor``) and falls back to the rules
classifier, then reports:

- materialization metadata ``decision``, ``confidence``, ``reason``, ``decider``, ``retry_count``;
- custom message ``{"retry_decision": {...}}`` with the same fields plus how they were reached.

It never changes the control table itself: the asset applies the decision with a guarded
transition, so a decision reported twice cannot act twice. The script should not fail: every model
problem ends in a rules decision; only a missing or broken request is an error.

Imports only the standard library, ``openai`` (through ``retry_advisor``), ``dagster_pipes`` and
sibling modules, because on Databricks only this directory is shipped.
"""

from __future__ import annotations

import os
import sys

try:
    _HERE = os.path.dirname(os.path.abspath(__file__))
except NameError:  # exec'd without a file (a notebook cell): siblings are in the working directory
    _HERE = os.getcwd()
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from dagster_pipes import open_dagster_pipes
from loader_pipes_io import choose_pipes_io
from redaction import redact
from retry_advisor import AdvisorConfig, decide_retry, secrets_from_env

METADATA_KEYS = ("decision", "confidence", "reason", "decider", "retry_count")


def analyse(request: dict) -> dict:
    """The decision for one request, with ``retry_count`` echoed for the asset's metadata."""
    if not isinstance(request, dict) or "error_message" not in request:
        raise ValueError("Pipes extras 'params' must be the analysis request with 'error_message'")
    result = decide_retry(request, AdvisorConfig.for_request(request))
    result["retry_count"] = int(request.get("retry_count") or 0)
    return result


def main() -> int:
    params_loader, context_loader, message_writer, io_kind = choose_pipes_io()
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
        request = pipes.get_extra("params")
        result = analyse(request)
        secrets = secrets_from_env()
        pipes.log.info(
            redact(
                f"{request.get('control_key')}: {result['decision']} by {result['decider']} "
                f"(confidence {result['confidence']:.2f}): {result['reason']}",
                secrets,
            )
        )
        if result.get("model_error"):
            pipes.log.warning(
                f"Model gave no usable answer ({result['model_error']}); rules decided."
            )
        pipes.report_custom_message({"retry_decision": result})
        pipes.report_asset_materialization(metadata={k: result[k] for k in METADATA_KEYS})
    return 0


if __name__ == "__main__":
    sys.exit(main())
