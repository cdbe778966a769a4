"""The Spark engine behind ``load.engine.Engine``: ``engine.run_spark_load``
(``load.driver.run_load`` on the engine's ``spark_session``) on the Spark session of the compute
it runs on, reading JDBC sources over the partitioning ``DATALOADER_JDBC_*`` allows. On
serverless (``ScriptEnv.on_serverless``) a MERGE is named by a marker commit after it, since
serverless lets a job set none of the Spark confs that name it on classic compute."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from databricks_scripts.engines.spark.engine import run_spark_load
from databricks_scripts.load.interrupt import StopSignal
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.plan import LoadResult
from databricks_scripts.script_env import ScriptEnv


@dataclass(frozen=True)
class SparkEngine:
    env: ScriptEnv
    name: str = "spark"

    def run(
        self,
        spec: LoadSpec,
        password: str | None,
        *,
        log: Callable[[str], None],
        progress_interval: float,
        stop: StopSignal | None,
        hash_key: bytes | None,
    ) -> LoadResult:
        return run_spark_load(
            spec,
            password,
            log=log,
            progress_interval=progress_interval,
            stop=stop,
            partitioning=(self.env.jdbc_rows_per_partition, self.env.jdbc_max_partitions),
            hash_key=hash_key,
            merge_marker=self.env.on_serverless,  # serverless refuses the MERGE's Spark confs
        )
