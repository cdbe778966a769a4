"""Ask a chat model whether a failed load should be retried, and fall back to the rules.

The model is reached through the ``openai`` client, so any OpenAI-compatible endpoint works:
OpenAI itself, a proxy, or a Databricks model-serving endpoint
(``https://<workspace>/serving-endpoints``, authenticated with the databricks-sdk's credentials).
Configuration comes from an environment mapping the caller read (see :class:`AdvisorConfig`). The model is optional: with
no model configured, or no usable answer (timeout, HTTP error, malformed JSON, an answer outside
the schema), :mod:`retry.classifier` decides, and a model answer below the confidence threshold
becomes ``Requires Review``.

Everything sent to the model is redacted first, even though the request is built from redacted
text, because the error messages come from drivers and clusters we do not control.

Imports only the standard library, ``openai`` and sibling modules (``databricks.sdk`` lazily, and
only for Databricks endpoints), because it runs inside the Pipes script on Databricks clusters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from databricks_scripts.contract import DECISIONS, REQUIRES_REVIEW, Decision
from databricks_scripts.failures import DataLoaderFailure, decision_for_kind
from databricks_scripts.redaction import redact
from databricks_scripts.retry.classifier import UNKNOWN, classify_error

RULES_DECIDER = "rules"
DEFAULT_MIN_CONFIDENCE = 0.7
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_RETRIES = 2
# Hard bounds on whatever the configuration says: an analysis must end, so a typo such as a
# timeout of 36000 or 100 retries cannot keep a failed row waiting for hours; the worst case is
# (MAX_RETRIES_CAP + 1) * TIMEOUT_CAP_SECONDS plus the client's short backoffs.
TIMEOUT_CAP_SECONDS = 300.0
_TIMEOUT_FLOOR_SECONDS = 0.1
MAX_RETRIES_CAP = 5
_MAX_REASON_CHARS = 300

_SYSTEM_PROMPT = """\
You triage failed database-to-lakehouse table loads. Given the latest error and recent attempts,
decide whether an automatic retry is likely to succeed.
Answer "Retry Recommended" only for transient faults: dropped or refused connections, timeouts,
deadlocks and lock waits, throttling (429/503), a source or cluster that was restarting, not ready,
terminated or lost (spot loss), or an unexpected internal platform error.
Answer "Requires Review" for faults a retry cannot fix: authentication, permissions, missing tables
or columns, SQL syntax, type or cast errors, constraint violations, bad configuration, and
anything you cannot place. The same error failing repeatedly also suggests review.
Reply with one JSON object only: {"decision": "Retry Recommended" | "Requires Review",
"confidence": number between 0 and 1, "reason": one sentence}."""

_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "decision": {"type": "string", "enum": list(DECISIONS)},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "reason": {"type": "string"},
    },
    "required": ["decision", "confidence", "reason"],
    "additionalProperties": False,
}


# Non-secret settings the code location may hand the script in its request (``advisor``), for
# backends where the script cannot see the code location's environment (an existing Databricks
# cluster). The key is never among them: on Databricks it comes from the sdk's runtime credentials.
ADVISOR_SETTINGS = (
    "model",
    "base_url",
    "provider",
    "min_confidence",
    "timeout_seconds",
    "max_retries",
    "response_format",
)


class NoAdvice(DataLoaderFailure):
    """The model gave no usable answer; the message says why and holds no secrets."""


@dataclass(frozen=True)
class AdvisorConfig:
    """Where and how to ask the model. ``model`` unset means: decide by rules only."""

    model: str | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    provider: str = "openai"  # "openai" (any OpenAI-compatible endpoint) or "databricks"
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_retries: int = DEFAULT_MAX_RETRIES
    response_format: str = "json_schema"  # "json_schema" | "json_object" | "none"

    def __post_init__(self) -> None:
        # Clamp rather than refuse: a refused setting would send every failed row to review.
        timeout = min(max(float(self.timeout_seconds), _TIMEOUT_FLOOR_SECONDS), TIMEOUT_CAP_SECONDS)
        object.__setattr__(self, "timeout_seconds", timeout)
        object.__setattr__(self, "max_retries", min(max(int(self.max_retries), 0), MAX_RETRIES_CAP))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AdvisorConfig:
        """Read ``DATALOADER_AI_*`` settings (``OPENAI_API_KEY`` as the key's fallback)."""
        base_url = _blank_to_none(env.get("DATALOADER_AI_BASE_URL"))
        provider = (_blank_to_none(env.get("DATALOADER_AI_PROVIDER")) or "").lower()
        if not provider:
            provider = "databricks" if base_url and _is_serving_endpoint(base_url) else "openai"
        api_key = _blank_to_none(env.get("DATALOADER_AI_API_KEY"))
        if api_key is None and provider != "databricks":
            # OPENAI_API_KEY is an OpenAI key; sending it to a Databricks workspace would leak it.
            api_key = _blank_to_none(env.get("OPENAI_API_KEY"))
        return cls(
            model=_blank_to_none(env.get("DATALOADER_AI_MODEL")),
            base_url=base_url,
            api_key=api_key,
            provider=provider,
            min_confidence=_float_env(env, "DATALOADER_AI_MIN_CONFIDENCE", DEFAULT_MIN_CONFIDENCE),
            timeout_seconds=_float_env(
                env, "DATALOADER_AI_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS
            ),
            max_retries=int(_float_env(env, "DATALOADER_AI_MAX_RETRIES", DEFAULT_MAX_RETRIES)),
            response_format=(env.get("DATALOADER_AI_RESPONSE_FORMAT") or "json_schema").lower(),
        )

    @classmethod
    def for_request(cls, request: Mapping[str, Any], env: Mapping[str, str]) -> AdvisorConfig:
        """Settings from the script's environment ``env``, gaps filled from ``request["advisor"]``."""
        given = request.get("advisor") if isinstance(request.get("advisor"), Mapping) else {}
        merged = {
            f"DATALOADER_AI_{name.upper()}": str(given[name])
            for name in ADVISOR_SETTINGS
            if given.get(name) not in (None, "")
        }
        merged.update({k: v for k, v in env.items() if v})
        return cls.from_env(merged)

    @property
    def enabled(self) -> bool:
        return bool(self.model)


def advisor_settings_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """The non-secret ``DATALOADER_AI_*`` settings set in ``env``, keyed as in ``ADVISOR_SETTINGS``."""
    settings = {
        name: env.get(f"DATALOADER_AI_{name.upper()}", "").strip() for name in ADVISOR_SETTINGS
    }
    if settings["base_url"]:
        settings["base_url"] = redact(settings["base_url"])  # a proxy URL may carry user:password
    return {name: value for name, value in settings.items() if value}


def decide_retry(
    request: Mapping[str, Any],
    config: AdvisorConfig,
    *,
    secrets: Iterable[str | None] = (),
) -> dict[str, Any]:
    """Return ``{decision, confidence, reason, decider, ...}`` for one failed load.

    The first four keys are a :class:`~databricks_scripts.contract.Decision`. ``decider`` is the
    model name when the model's answer was used, else ``"rules"``. Extra keys (``rule_category``,
    ``rule_decision``, ``model_error``) explain how the decision was reached. ``secrets`` are the
    values the caller holds (``ScriptEnv.secrets``), masked in everything sent to the model.

    A request whose ``failure_kind`` is one of ours (``contract.FAILURE_KINDS``) is decided by
    the kind's rule (``failures.KIND_RULES``): no model is asked and the text is not classified.
    """
    by_kind = decision_for_kind(request.get("failure_kind"))
    if by_kind is not None:
        return {**by_kind.as_dict(), "rule_category": "kind", "rule_decision": by_kind.decision}
    known_secrets = [*secrets, config.api_key]
    code = request.get("failure_code")
    rules = classify_error(
        str(request.get("error_message") or ""), code if isinstance(code, str) else None
    )
    # Fixed confidence: a matched rule is a strong but not certain signal; no match is a guess.
    confidence = 0.5 if rules.category == UNKNOWN else 0.9
    by_rules: dict[str, Any] = {
        **Decision(rules.decision, confidence, rules.reason, RULES_DECIDER).as_dict(),
        "rule_category": rules.category,
        "rule_decision": rules.decision,
    }
    if not config.enabled:
        return by_rules
    try:
        advice = ask_model(request, config, secrets=known_secrets)
    except NoAdvice as exc:
        return {**by_rules, "model_error": redact(str(exc), known_secrets)}
    result = {
        **advice,
        "rule_category": rules.category,
        "rule_decision": rules.decision,
    }
    if advice["confidence"] < config.min_confidence and advice["decision"] != REQUIRES_REVIEW:
        result["decision"] = REQUIRES_REVIEW
        result["reason"] = _clip(
            f"Model confidence {advice['confidence']:.2f} is below {config.min_confidence:.2f}"
            f" (it suggested {advice['decision']}: {advice['reason']})"
        )
    return result


def ask_model(
    request: Mapping[str, Any],
    config: AdvisorConfig,
    *,
    secrets: Iterable[str | None] = (),
) -> dict[str, Any]:
    """Ask the configured model once (with the client's bounded retries); raise NoAdvice if unusable."""
    import openai  # deferred: a rules-only run never needs the client

    if not config.model:
        raise NoAdvice("no model configured")
    base_url, api_key = _endpoint(config)
    known_secrets = [*secrets, api_key, config.api_key]
    payload = json.dumps(_redact_tree(dict(request), known_secrets), default=str, indent=1)
    client = openai.OpenAI(
        api_key=api_key or "unused",  # some compatible servers need no key; the client needs one
        base_url=base_url,
        timeout=config.timeout_seconds,
        max_retries=config.max_retries,
    )
    kwargs: dict[str, Any] = {}
    if config.response_format == "json_schema":
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "retry_decision", "schema": _RESPONSE_SCHEMA, "strict": True},
        }
    elif config.response_format == "json_object":
        kwargs["response_format"] = {"type": "json_object"}
    try:
        # No temperature/max_tokens: reasoning models reject them, and the answer is short anyway.
        completion = client.chat.completions.create(
            model=config.model,
            messages=[
                {"role": "system", "content": _SYSTEM_PROMPT},
                {"role": "user", "content": "Failed load:\n" + payload},
            ],
            **kwargs,
        )
    except openai.APITimeoutError as exc:
        raise NoAdvice(f"model timed out after {config.timeout_seconds:g}s") from exc
    except openai.APIStatusError as exc:
        raise NoAdvice(f"model endpoint answered HTTP {exc.status_code}") from exc
    except openai.OpenAIError as exc:
        raise NoAdvice(f"model call failed: {type(exc).__name__}") from exc
    finally:
        client.close()
    try:
        content = completion.choices[0].message.content
    except (AttributeError, IndexError, TypeError) as exc:
        raise NoAdvice("model answer had no message content") from exc
    advice = parse_advice(content)
    advice["reason"] = redact(advice["reason"], known_secrets)
    advice["decider"] = config.model
    return advice


def parse_advice(content: str | None) -> dict[str, Any]:
    """Validate a model's JSON answer; anything outside the schema is no answer (NoAdvice)."""
    text = (content or "").strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL | re.IGNORECASE)
    if fenced:
        text = fenced.group(1)
    try:
        answer = json.loads(text)
    except ValueError as exc:
        raise NoAdvice("model answer is not JSON") from exc
    if not isinstance(answer, dict):
        raise NoAdvice("model answer is not a JSON object")
    decision = {d.lower(): d for d in DECISIONS}.get(
        str(answer.get("decision", "")).strip().lower()
    )
    if decision is None:
        raise NoAdvice("model answer has no valid decision")
    confidence = answer.get("confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise NoAdvice("model answer has no numeric confidence")
    if not 0.0 <= float(confidence) <= 1.0:
        raise NoAdvice("model confidence is outside 0..1")
    reason = answer.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise NoAdvice("model answer has no reason")
    return {"decision": decision, "confidence": float(confidence), "reason": _clip(reason.strip())}


def _endpoint(config: AdvisorConfig) -> tuple[str | None, str | None]:
    """Base URL and key; Databricks endpoints take both from the databricks-sdk when not given."""
    if config.provider != "databricks" or (config.base_url and config.api_key):
        return config.base_url, config.api_key
    try:
        from databricks.sdk import WorkspaceClient

        workspace = WorkspaceClient()
        base_url = config.base_url or workspace.config.host.rstrip("/") + "/serving-endpoints"
        api_key = config.api_key
        if api_key is None:
            # authenticate() works for every auth type (PAT, OAuth M2M, runtime credentials),
            # where config.token is set only for PATs.
            header = workspace.config.authenticate().get("Authorization", "")
            api_key = header.split(" ", 1)[1] if " " in header else header or None
    except Exception as exc:  # any sdk auth failure means: no model answer, use the rules
        raise NoAdvice(f"Databricks credentials unavailable: {type(exc).__name__}") from exc
    return base_url, api_key


def _is_serving_endpoint(base_url: str) -> bool:
    return "/serving-endpoints" in base_url.rstrip("/")


def _redact_tree(value: Any, secrets: list[str | None]) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _redact_tree(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_tree(v, secrets) for v in value]
    if isinstance(value, str):
        return redact(value, secrets)
    return value


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 1] + "…"


def _blank_to_none(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


def _float_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _blank_to_none(env.get(name))
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc
