"""The retry advisor's model client, against the openai stand-in: a real openai client asks, its
waiting is bounded, bad answers are distrusted (the rules decide), no secret leaks, and its settings
(AdvisorConfig) are read and clamped.

The rules themselves are test_retry_classifier.py; the script that runs the advisor under Pipes is
test_retry_script.py.
"""

from __future__ import annotations

import json

import pytest
from openai_standin import OpenAIStandIn, Reply, good_answer, openai_standin, rate_limited

from databricks_scripts.retry.advisor import (
    MAX_RETRIES_CAP,
    RULES_DECIDER,
    TIMEOUT_CAP_SECONDS,
    AdvisorConfig,
    NoAdvice,
    decide_retry,
    parse_advice,
)
from databricks_scripts.retry.classifier import REQUIRES_REVIEW, RETRY_RECOMMENDED
from databricks_scripts.script_env import ScriptEnv

__all__ = ["openai_standin"]  # the fixture, imported so pytest finds it in this module

MODEL = "gpt-test-mini"


@pytest.fixture(autouse=True)
def _clean_ai_env(no_ai_model, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # The Databricks provider's credentials come from the sdk's chain: environment, then a file.
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # A developer's ~/.databrickscfg must not decide which workspace the sdk talks to.
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))


def _request(error: str = "ERROR:  deadlock detected") -> dict:
    return {
        "control_key": "sales.orders",
        "table": {"source": "sales.public.orders", "destination": "main.bronze.orders"},
        "db_type": "postgresql",
        "load_strategy": "incremental",
        "retry_count": 1,
        "error_message": error,
        "recent_attempts": [{"status": "Failed", "message": error}],
    }


def _config(standin: OpenAIStandIn, **overrides) -> AdvisorConfig:
    settings = {
        "model": MODEL,
        "base_url": standin.base_url,
        "api_key": "sk-standin-key-0123456789abcdef",
        "timeout_seconds": 5.0,
        "max_retries": 0,
    }
    settings.update(overrides)
    return AdvisorConfig(**settings)


def test_good_answer_is_used_and_names_the_model(openai_standin: OpenAIStandIn) -> None:
    openai_standin.queue(good_answer(RETRY_RECOMMENDED, 0.92, "A deadlock clears by itself."))

    result = decide_retry(_request(), _config(openai_standin))

    assert result["decision"] == RETRY_RECOMMENDED
    assert result["confidence"] == pytest.approx(0.92)
    assert result["reason"] == "A deadlock clears by itself."
    assert result["decider"] == MODEL
    assert result["rule_decision"] == RETRY_RECOMMENDED
    [sent] = openai_standin.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-standin-key-0123456789abcdef"
    assert sent.body["model"] == MODEL
    assert sent.body["response_format"]["type"] == "json_schema"
    assert "deadlock detected" in sent.body["messages"][-1]["content"]


def test_model_may_overrule_the_rules(openai_standin: OpenAIStandIn) -> None:
    openai_standin.queue(good_answer(REQUIRES_REVIEW, 0.8, "Same deadlock on every attempt."))

    result = decide_retry(_request(), _config(openai_standin))

    assert (result["decision"], result["decider"]) == (REQUIRES_REVIEW, MODEL)
    assert result["rule_decision"] == RETRY_RECOMMENDED


@pytest.mark.parametrize(
    "content",
    [
        "Retry it, probably.",
        '{"decision": "Maybe", "confidence": 0.9, "reason": "x"}',
        '{"decision": "Retry Recommended", "confidence": 1.7, "reason": "x"}',
        '{"decision": "Retry Recommended", "confidence": "high", "reason": "x"}',
        '{"decision": "Retry Recommended", "confidence": 0.9}',
        '["Retry Recommended", 0.9, "x"]',
        "",
    ],
    ids=[
        "prose",
        "bad-decision",
        "confidence-above-1",
        "confidence-text",
        "no-reason",
        "array",
        "empty",
    ],
)
def test_malformed_answer_means_rules_decide(openai_standin: OpenAIStandIn, content: str) -> None:
    openai_standin.queue(Reply(content=content))

    result = decide_retry(_request('relation "orders" does not exist'), _config(openai_standin))

    assert result["decider"] == RULES_DECIDER
    assert result["decision"] == REQUIRES_REVIEW
    assert result["model_error"]
    assert len(openai_standin.requests) == 1


def test_fenced_json_answer_is_accepted() -> None:
    advice = parse_advice(
        '```json\n{"decision": "requires review", "confidence": 1, "reason": "r"}\n```'
    )
    assert advice == {"decision": REQUIRES_REVIEW, "confidence": 1.0, "reason": "r"}
    with pytest.raises(NoAdvice):
        parse_advice('{"decision": "Retry Recommended", "confidence": true, "reason": "r"}')


def test_timeout_is_bounded_and_falls_back_to_rules(openai_standin: OpenAIStandIn) -> None:
    openai_standin.default = Reply(
        content=json.dumps({"decision": REQUIRES_REVIEW, "confidence": 1, "reason": "late"}),
        delay_seconds=30,
    )

    result = decide_retry(_request(), _config(openai_standin, timeout_seconds=0.3, max_retries=1))

    assert result["decider"] == RULES_DECIDER
    assert result["decision"] == RETRY_RECOMMENDED  # the rules: a deadlock is transient
    assert "timed out" in result["model_error"]
    assert len(openai_standin.requests) == 2  # one try plus max_retries, then it gives up


def test_429_with_retry_after_is_retried_then_answered(openai_standin: OpenAIStandIn) -> None:
    openai_standin.queue(
        rate_limited(retry_after="0"),
        good_answer(RETRY_RECOMMENDED, 0.9, "Transient deadlock."),
    )

    result = decide_retry(_request(), _config(openai_standin, max_retries=2))

    assert (result["decision"], result["decider"]) == (RETRY_RECOMMENDED, MODEL)
    assert len(openai_standin.requests) == 2


def test_persistent_429_gives_up_after_max_retries(openai_standin: OpenAIStandIn) -> None:
    openai_standin.default = rate_limited(retry_after="0")

    result = decide_retry(
        _request("ORA-00942: table or view does not exist"), _config(openai_standin, max_retries=2)
    )

    assert result["decider"] == RULES_DECIDER
    assert result["decision"] == REQUIRES_REVIEW
    assert "HTTP 429" in result["model_error"]
    assert len(openai_standin.requests) == 3


def test_low_confidence_retry_becomes_review(openai_standin: OpenAIStandIn) -> None:
    openai_standin.queue(good_answer(RETRY_RECOMMENDED, 0.55, "Might be a blip."))

    result = decide_retry(_request(), _config(openai_standin, min_confidence=0.7))

    assert result["decision"] == REQUIRES_REVIEW
    assert result["decider"] == MODEL
    assert result["confidence"] == pytest.approx(0.55)
    assert "0.55 is below 0.70" in result["reason"]


def test_no_model_configured_asks_nobody(openai_standin: OpenAIStandIn) -> None:
    result = decide_retry(_request("(1045, \"Access denied for user 'x'@'y'\")"), AdvisorConfig())

    assert result["decider"] == RULES_DECIDER
    assert result["decision"] == REQUIRES_REVIEW
    assert "model_error" not in result
    assert openai_standin.requests == []


def test_secrets_never_reach_the_model(
    openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    scope_secret = "Plain-Scope-Secret-42"
    monkeypatch.setenv("DATALOADER_SECRET__JDBC__PG_PASSWORD", scope_secret)
    api_key = "sk-standin-key-0123456789abcdef"
    leaks = {
        "key=value password": "password=hunter2-very-secret",
        "url password": "postgresql://loader:S3cr3t-Url-Pw@pg-prod:5432/sales",
        "databricks token": "dapi0123456789abcdef0123456789abcdef",
        "bearer token": "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
        "scope secret echoed by a driver": f"login rejected for secret {scope_secret}",
        "the ai key itself": f"proxy said key {api_key} is invalid",
    }
    request = _request(" | ".join(leaks.values()))
    request["recent_attempts"] = [{"status": "Failed", "message": leaks["url password"]}]
    openai_standin.queue(good_answer(REQUIRES_REVIEW, 0.9, f"Saw password {scope_secret}."))

    result = decide_retry(
        request,
        _config(openai_standin, api_key=api_key),
        secrets=ScriptEnv.from_environ().secrets,
    )

    bodies = "\n".join(r.raw for r in openai_standin.requests)
    assert bodies, "the model was not asked"
    for secret in (
        "hunter2-very-secret",
        "S3cr3t-Url-Pw",
        "dapi0123456789abcdef0123456789abcdef",
        "abcdefghijklmnopqrstuvwxyz012345",
        scope_secret,
        api_key,
    ):
        assert secret not in bodies
    # The key is sent where it belongs, in the Authorization header, and nowhere else.
    assert openai_standin.all_sent_text().count(api_key) == 1
    # A model echoing a secret back does not get it into the decision either.
    assert scope_secret not in result["reason"]
    assert "pg-prod" in bodies  # redaction keeps the useful part of the message


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not AdvisorConfig.from_env({}).enabled
    config = AdvisorConfig.from_env(
        {
            "DATALOADER_AI_MODEL": "gpt-4o-mini",
            "OPENAI_API_KEY": "sk-fallback",
            "DATALOADER_AI_MIN_CONFIDENCE": "0.8",
            "DATALOADER_AI_TIMEOUT_SECONDS": "12",
            "DATALOADER_AI_MAX_RETRIES": "1",
        }
    )
    assert (config.model, config.api_key, config.provider) == (
        "gpt-4o-mini",
        "sk-fallback",
        "openai",
    )
    assert (config.min_confidence, config.timeout_seconds, config.max_retries) == (0.8, 12.0, 1)
    assert "sk-fallback" not in repr(config)

    serving = AdvisorConfig.from_env(
        {
            "DATALOADER_AI_MODEL": "databricks-claude",
            "DATALOADER_AI_BASE_URL": "https://adb-1.azuredatabricks.net/serving-endpoints",
            "OPENAI_API_KEY": "sk-must-not-go-to-databricks",
        }
    )
    assert serving.provider == "databricks"
    assert serving.api_key is None
    with pytest.raises(ValueError, match="DATALOADER_AI_MIN_CONFIDENCE"):
        AdvisorConfig.from_env({"DATALOADER_AI_MIN_CONFIDENCE": "high"})


def test_databricks_serving_endpoint_uses_sdk_credentials(
    openai_standin: OpenAIStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stand-in plays the workspace: the sdk reads host and token from the environment.
    monkeypatch.setenv("DATABRICKS_HOST", openai_standin.root_url)
    monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-standin-token-0000")
    monkeypatch.setenv("DATALOADER_AI_PROVIDER", "databricks")
    monkeypatch.setenv("DATALOADER_AI_MODEL", "databricks-meta-llama-3-3-70b-instruct")
    openai_standin.queue(
        good_answer(RETRY_RECOMMENDED, 0.95, "Cluster was terminated by spot loss.")
    )

    env = ScriptEnv.from_environ()
    result = decide_retry(
        _request("Cluster 0612-1 was terminated. Reason: SPOT_INSTANCE_TERMINATION"),
        AdvisorConfig.from_env(env.ai_env),
        secrets=env.secrets,
    )

    assert result["decider"] == "databricks-meta-llama-3-3-70b-instruct"
    [sent] = openai_standin.requests
    assert sent.path == "/serving-endpoints/chat/completions"
    assert sent.headers["authorization"] == "Bearer dapi-standin-token-0000"
    assert "dapi-standin-token-0000" not in sent.raw


def test_429_asking_for_a_long_wait_is_not_waited_for(openai_standin: OpenAIStandIn) -> None:
    openai_standin.default = rate_limited(retry_after="3600")

    result = decide_retry(_request(), _config(openai_standin, max_retries=2))

    assert result["decider"] == RULES_DECIDER
    assert "HTTP 429" in result["model_error"]
    # openai refuses Retry-After above its MAX_RETRY_AFTER_DELAY (120 s) instead of sleeping.
    assert len(openai_standin.requests) == 1


@pytest.mark.parametrize("response_format", ["json_object", "none"])
def test_response_format_can_be_relaxed_for_older_endpoints(
    openai_standin: OpenAIStandIn, response_format: str
) -> None:
    openai_standin.queue(good_answer(RETRY_RECOMMENDED, 0.9, "Deadlock."))

    result = decide_retry(_request(), _config(openai_standin, response_format=response_format))

    assert result["decider"] == MODEL
    [sent] = openai_standin.requests
    expected = {"type": "json_object"} if response_format == "json_object" else None
    assert sent.body.get("response_format") == expected


def test_configured_timeout_and_retries_are_clamped_to_bounds() -> None:
    huge = AdvisorConfig.from_env(
        {
            "DATALOADER_AI_MODEL": MODEL,
            "DATALOADER_AI_TIMEOUT_SECONDS": "36000",
            "DATALOADER_AI_MAX_RETRIES": "100",
        }
    )
    assert (huge.timeout_seconds, huge.max_retries) == (TIMEOUT_CAP_SECONDS, MAX_RETRIES_CAP)
    silly = AdvisorConfig(model=MODEL, timeout_seconds=0, max_retries=-3)
    assert silly.timeout_seconds > 0 and silly.max_retries == 0


def test_many_configured_retries_still_stop_at_the_cap(openai_standin: OpenAIStandIn) -> None:
    # A short Retry-After, which the client honours, keeps the test from sleeping its backoff.
    openai_standin.default = rate_limited(retry_after="0.01")

    result = decide_retry(_request(), _config(openai_standin, max_retries=50))

    assert result["decider"] == RULES_DECIDER
    assert len(openai_standin.requests) == MAX_RETRIES_CAP + 1
