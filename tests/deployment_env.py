"""A complete deployment environment (npd/prod on Dagster+): every setting a deployment needs.

Tests start from it and remove or break one value to see the code location refuse to load.
"""

from __future__ import annotations

# Values that are secrets in real life; none may appear in an error message.
LAKEBASE_PASSWORD = "lakebase-secret-0001"
MODELS_TOKEN = "models-token-0002"


def deployment_env(environment: str = "prod", **overrides: str | None) -> dict[str, str]:
    """The environment of a ready deployment; ``NAME=None`` removes a variable."""
    env = {
        "DAGSTER_ENVIRONMENT": environment,
        "DAGSTER_CLOUD_DEPLOYMENT_NAME": environment,
        "DAGSTER_CLOUD_URL": "https://acme.agent.dagster.cloud",
        "LAKEBASE_HOST": "instance-1.database.cloud.databricks.com",
        "LAKEBASE_USER": "dataloader",
        "LAKEBASE_PASSWORD": LAKEBASE_PASSWORD,
        "DATALOADER_EXECUTION": "databricks",
        "DATABRICKS_HOST": "https://adb-1.2.azuredatabricks.net",
        "DATABRICKS_CLUSTER_ID": "0101-000000-abc",
        "DATALOADER_DATABRICKS_VOLUME_PATH": "/Volumes/prod/dataloader/pipes",
        "DATABRICKS_WAREHOUSE_ID": "wh-1",
        "DATALOADER_MODELS_URL": f"https://x-access-token:{MODELS_TOKEN}@git.example.com/m.git",
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env
