"""The Arrow engine behind ``load.engine.Engine``: open the source reader, apply column control,
run ``load.driver.run_load`` on the Arrow engine's session (``engine.ArrowSession``) into the
local lake, and always close the reader."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from databricks_scripts.engines.arrow.engine import ArrowSession
from databricks_scripts.load.columns import with_column_control
from databricks_scripts.load.driver import run_load
from databricks_scripts.load.interrupt import StopSignal
from databricks_scripts.load.params import LoadSpec
from databricks_scripts.load.plan import LoadResult, step
from databricks_scripts.script_env import ScriptEnv
from databricks_scripts.sources.readers import open_source


@dataclass(frozen=True)
class ArrowEngine:
    env: ScriptEnv
    name: str = "arrow"

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
        env = self.env
        with step("connect to source"):
            source = open_source(
                spec, password, batch_bytes=env.batch_bytes, batch_rows=env.batch_rows
            )
        try:
            with step("probe source"):
                source = with_column_control(source, hash_key)
            session = ArrowSession(
                source,
                spec.destination_path(env.lake_root),
                progress_interval=progress_interval,
                target_file_size=env.target_file_bytes,
                merge_chunk_rows=env.merge_chunk_rows,
                first_load_chunks=(env.first_load_chunk_rows, env.first_load_chunked_above_rows),
            )
            return run_load(session, spec, log=log, stop=stop)
        finally:
            try:
                source.close()
            except Exception:  # noqa: BLE001, S110 - the load's own outcome is the one to report
                pass
