"""The Pipes scripts' own settings, read from the process environment in this one place.

The entry scripts (``dataloader_pipe.py``, ``dataloader_retry_pipe.py``) build one ``ScriptEnv`` in
``main()`` and pass it down; no other module of ``databricks_scripts`` reads ``os.environ``. The
code location has its own settings (``dagsters/settings.py``); both share the lists of secret
variables (``redaction.secrets_from_env``) and AI settings (``retry.advisor``) by calling those
functions with their own environment mapping.

Standard library only: it is shipped to Databricks with the scripts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from databricks_scripts import local_secrets
from databricks_scripts.redaction import SECRET_ENV_PREFIX, secrets_from_env

DEFAULT_BATCH_BYTES = 16 * 1024 * 1024
DEFAULT_BATCH_ROWS = 50_000
DEFAULT_PROGRESS_SECONDS = 10.0
# Big tables (docs/loader.md, "Big tables"): rows per MERGE commit of an upsert, and the resumable
# first load's chunk size and the estimated source size from which a first load goes in chunks.
DEFAULT_MERGE_CHUNK_ROWS = 150_000
DEFAULT_FIRST_LOAD_CHUNK_ROWS = 5_000_000
DEFAULT_FIRST_LOAD_CHUNKED_ABOVE_ROWS = 20_000_000
DEFAULT_DBFS_ROOT = "/dbfs"
# Spark engine's partitioned JDBC reads (engines.spark.partitions): rows one connection reads, and
# the most connections one load opens unless its control row says otherwise.
DEFAULT_JDBC_ROWS_PER_PARTITION = 500_000
DEFAULT_JDBC_MAX_PARTITIONS = 8
# The variables the retry advisor reads (``retry.advisor.AdvisorConfig.from_env``).
AI_ENV_PREFIX = "DATALOADER_AI_"
AI_ENV_NAMES = ("OPENAI_API_KEY",)
# The oldest Databricks Runtime the scripts support (docs/databricks.md, "Supported runtimes and
# compute"): 15.4 LTS, Spark 3.5 (named parameters in spark.sql) and Python 3.11.
MIN_DATABRICKS_RUNTIME = (15, 4)
MIN_PYTHON = (3, 11)

# What a Pipes script started on this machine may inherit (the local runner builds the child's
# environment from these lists, not by removing what looks secret): the process basics, the
# locale, and each script's own documented settings. Anything else the code location holds (the
# Lakebase login, alert webhooks, the models repository URL and token, cloud keys, ...) stays out.
RUNTIME_ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "JAVA_HOME",
        "SPARK_HOME",
        "SYSTEMROOT",
    }
)
RUNTIME_ENV_PREFIXES = ("LC_",)
# ScriptEnv.from_environ's settings (the README's table).
SCRIPT_SETTING_NAMES = frozenset(
    {
        "DATALOADER_ENGINE",
        "DATABRICKS_RUNTIME_VERSION",
        "DATALOADER_HOME",
        "DATALOADER_LAKE_ROOT",
        "DATALOADER_BATCH_BYTES",
        "DATALOADER_BATCH_ROWS",
        "DATALOADER_PROGRESS_SECONDS",
        "DATALOADER_TARGET_FILE_BYTES",
        "DATALOADER_MERGE_CHUNK_ROWS",
        "DATALOADER_FIRST_LOAD_CHUNK_ROWS",
        "DATALOADER_FIRST_LOAD_CHUNKED_ABOVE_ROWS",
        "DATALOADER_JDBC_ROWS_PER_PARTITION",
        "DATALOADER_JDBC_MAX_PARTITIONS",
        "DATALOADER_DBFS_ROOT",
        "DATALOADER_VOLUMES_ROOT",
    }
)


def is_script_base_env_var(name: str) -> bool:
    """Whether every Pipes script may inherit ``name`` (process basics, locale, its settings)."""
    return (
        name in RUNTIME_ENV_NAMES
        or name.startswith(RUNTIME_ENV_PREFIXES)
        or name in SCRIPT_SETTING_NAMES
    )


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ScriptEnv:
    """Everything a Pipes script takes from its environment.

    - ``engine``: ``DATALOADER_ENGINE`` as given (lower case; the load script checks it is
      ``arrow`` or ``spark``), None when unset: the load script then picks ``spark`` on a
      Databricks runtime and ``arrow`` elsewhere.
    - ``databricks_runtime``: ``DATABRICKS_RUNTIME_VERSION``, set only on Databricks clusters.
    - ``lake_root``: where the Arrow engine keeps Delta tables (``DATALOADER_LAKE_ROOT``, else
      ``$DATALOADER_HOME/lake``, else ``.dataloader/lake`` next to this folder).
    - ``batch_bytes``/``batch_rows``/``progress_seconds``: ``DATALOADER_BATCH_BYTES``,
      ``DATALOADER_BATCH_ROWS``, ``DATALOADER_PROGRESS_SECONDS``.
    - ``target_file_bytes``: ``DATALOADER_TARGET_FILE_BYTES``, the Arrow engine's Delta data
      file size (None: delta-rs's default, about 100 MiB).
    - ``merge_chunk_rows``: ``DATALOADER_MERGE_CHUNK_ROWS``, rows per MERGE commit of an upsert.
    - ``first_load_chunk_rows``/``first_load_chunked_above_rows``:
      ``DATALOADER_FIRST_LOAD_CHUNK_ROWS`` and ``DATALOADER_FIRST_LOAD_CHUNKED_ABOVE_ROWS``: an
      incremental table's first load of a source estimated above the second goes in commits of
      about the first (0 turns resumable first loads off).
    - ``jdbc_rows_per_partition``/``jdbc_max_partitions``: ``DATALOADER_JDBC_ROWS_PER_PARTITION``,
      ``DATALOADER_JDBC_MAX_PARTITIONS``, how the Spark engine splits a JDBC read.
    - ``dbfs_root``/``volumes_root``: where ``/dbfs`` and ``/Volumes`` paths are on this machine
      (``DATALOADER_DBFS_ROOT``, ``DATALOADER_VOLUMES_ROOT``; a local Databricks stand-in moves
      them).
    - ``secrets``: every secret value this process can see, to be masked wherever text goes.
    - ``source_secrets``: the ``DATALOADER_SECRET__<SCOPE>__<KEY>`` variables (source passwords
      resolved locally, see ``load.params.secret_env_var``).
    - ``ai_env``: the ``DATALOADER_AI_*`` variables and ``OPENAI_API_KEY``, for the advisor.
    - ``invalid``: what was malformed (see :meth:`check`).
    """

    engine: str | None = None
    databricks_runtime: str | None = None
    lake_root: Path = field(default_factory=lambda: default_lake_root(None))
    # DATALOADER_HOME (else .dataloader next to this folder): where the local secret store is.
    home: Path = field(default_factory=lambda: local_secrets.default_home({}))
    batch_bytes: int = DEFAULT_BATCH_BYTES
    batch_rows: int = DEFAULT_BATCH_ROWS
    progress_seconds: float = DEFAULT_PROGRESS_SECONDS
    target_file_bytes: int | None = None
    merge_chunk_rows: int = DEFAULT_MERGE_CHUNK_ROWS
    first_load_chunk_rows: int = DEFAULT_FIRST_LOAD_CHUNK_ROWS
    first_load_chunked_above_rows: int = DEFAULT_FIRST_LOAD_CHUNKED_ABOVE_ROWS
    jdbc_rows_per_partition: int = DEFAULT_JDBC_ROWS_PER_PARTITION
    jdbc_max_partitions: int = DEFAULT_JDBC_MAX_PARTITIONS
    dbfs_root: str = DEFAULT_DBFS_ROOT
    volumes_root: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)
    source_secrets: Mapping[str, str] = field(default_factory=_empty, repr=False)
    ai_env: Mapping[str, str] = field(default_factory=_empty, repr=False)
    invalid: tuple[str, ...] = ()

    @property
    def on_databricks(self) -> bool:
        return bool(self.databricks_runtime)

    @property
    def engine_name(self) -> str:
        """``DATALOADER_ENGINE``, else ``spark`` on Databricks and ``arrow`` elsewhere (the load
        script's ``choose_engine`` checks it)."""
        return self.engine or ("spark" if self.on_databricks else "arrow")

    @property
    def on_serverless(self) -> bool:
        """Serverless compute names its environment ``client.<n>`` instead of a runtime."""
        return bool(self.databricks_runtime and self.databricks_runtime.startswith("client."))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ScriptEnv:
        """Read the settings once (``environ`` defaults to this process's environment).

        Never raises: a malformed number keeps its default and is named in ``invalid``, so the
        retry script is not stopped by a loader setting; the load script calls :meth:`check`.
        """
        env = dict(os.environ if environ is None else environ)
        invalid: list[str] = []

        def number(name: str, default: float) -> float:
            value = env.get(name)
            try:
                return float(value) if value else default
            except ValueError:
                invalid.append(f"{name} must be a number, got {value!r}")
                return default

        return cls(
            engine=(env.get("DATALOADER_ENGINE") or "").strip().lower() or None,
            databricks_runtime=env.get("DATABRICKS_RUNTIME_VERSION") or None,
            lake_root=default_lake_root(env),
            home=local_secrets.default_home(env),
            batch_bytes=int(number("DATALOADER_BATCH_BYTES", DEFAULT_BATCH_BYTES)),
            batch_rows=int(number("DATALOADER_BATCH_ROWS", DEFAULT_BATCH_ROWS)),
            progress_seconds=number("DATALOADER_PROGRESS_SECONDS", DEFAULT_PROGRESS_SECONDS),
            target_file_bytes=int(number("DATALOADER_TARGET_FILE_BYTES", 0)) or None,
            merge_chunk_rows=int(number("DATALOADER_MERGE_CHUNK_ROWS", DEFAULT_MERGE_CHUNK_ROWS))
            or DEFAULT_MERGE_CHUNK_ROWS,
            first_load_chunk_rows=int(
                number("DATALOADER_FIRST_LOAD_CHUNK_ROWS", DEFAULT_FIRST_LOAD_CHUNK_ROWS)
            )
            or DEFAULT_FIRST_LOAD_CHUNK_ROWS,
            first_load_chunked_above_rows=int(
                number(
                    "DATALOADER_FIRST_LOAD_CHUNKED_ABOVE_ROWS",
                    DEFAULT_FIRST_LOAD_CHUNKED_ABOVE_ROWS,
                )
            ),
            jdbc_rows_per_partition=max(
                1,
                int(number("DATALOADER_JDBC_ROWS_PER_PARTITION", DEFAULT_JDBC_ROWS_PER_PARTITION)),
            ),
            jdbc_max_partitions=max(
                1, int(number("DATALOADER_JDBC_MAX_PARTITIONS", DEFAULT_JDBC_MAX_PARTITIONS))
            ),
            dbfs_root=env.get("DATALOADER_DBFS_ROOT") or DEFAULT_DBFS_ROOT,
            volumes_root=env.get("DATALOADER_VOLUMES_ROOT") or None,
            secrets=tuple(secrets_from_env(env)),
            source_secrets=MappingProxyType(
                {k: v for k, v in env.items() if k.upper().startswith(SECRET_ENV_PREFIX)}
            ),
            ai_env=MappingProxyType(
                {k: v for k, v in env.items() if k.startswith(AI_ENV_PREFIX) or k in AI_ENV_NAMES}
            ),
            invalid=tuple(invalid),
        )

    def check_runtime(self) -> None:
        """Raise RuntimeError when the Databricks Runtime or Python is older than supported."""
        import sys

        problem = runtime_problem(self.databricks_runtime, tuple(sys.version_info[:3]))
        if problem:
            raise RuntimeError(problem)

    def check(self) -> None:
        """Raise ValueError naming every malformed setting (the load script's first step)."""
        if self.invalid:
            raise ValueError("; ".join(self.invalid))


def runtime_problem(runtime: str | None, python: tuple[int, ...]) -> str | None:
    """Why this runtime cannot run the scripts, or None when it can.

    ``runtime`` is ``DATABRICKS_RUNTIME_VERSION``: ``15.4``, ``16.4.x-scala2.12``, ... on classic
    compute; serverless sets a ``client.<n>`` environment version, which is always current.
    """
    floor = ".".join(map(str, MIN_DATABRICKS_RUNTIME))
    if python[:2] < MIN_PYTHON:
        have = ".".join(map(str, python[:3]))
        return (
            f"Python {have} is too old: the DataLoader scripts need Python "
            f"{'.'.join(map(str, MIN_PYTHON))}+ (Databricks Runtime {floor} LTS or later)"
        )
    if not runtime or not runtime[:1].isdigit():
        return None
    parts = runtime.split(".")
    try:
        version = (int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0)
    except ValueError:
        return None
    if version < MIN_DATABRICKS_RUNTIME:
        return (
            f"Databricks Runtime {runtime} is not supported: the DataLoader scripts need "
            f"Databricks Runtime {floor} LTS or later (Spark 3.5, Python 3.11); choose a newer "
            "spark_version for the cluster"
        )
    return None


def default_lake_root(env: Mapping[str, str] | None) -> Path:
    env = env or {}
    root = env.get("DATALOADER_LAKE_ROOT")
    if root:
        return Path(root)
    home = env.get("DATALOADER_HOME")
    if home:
        return Path(home) / "lake"
    return Path(__file__).resolve().parents[1] / ".dataloader" / "lake"
