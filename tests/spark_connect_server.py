"""pyspark's own Spark Connect server on this machine, for the Spark engine's Connect tests.

Serverless compute and standard access mode clusters give a script a Spark Connect session: no
``sparkContext``, no RDD API, job tags instead of job groups. pyspark 4 ships the server
(``jars/spark-connect_*.jar``); ``connect_server`` starts it as a child JVM through pyspark's own
``bin/spark-submit`` (which adds the JVM options Arrow needs on Java 17), bound to 127.0.0.1, with
the PostgreSQL JDBC driver from the local Maven repository when there is one. No Delta Lake: its
jars come from Maven Central, which is not reachable here, so the server's tables are Parquet.

``connect`` opens a Spark Connect client session on it beside any classic SparkSession this test
process holds (the Connect builder, like tests/sail_spark.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PG_JARS = sorted(
    (Path.home() / ".m2/repository/org/postgresql/postgresql").glob("*/postgresql-*.jar")
)
START_SECONDS = 600  # a bound, not an expectation: it starts in ~15 s on an idle 2-core machine


def why_not() -> str | None:
    """Why the server cannot start here (None: it can)."""
    if shutil.which("java") is None:
        return "java is not installed: the Spark Connect server is a JVM"
    try:
        import pyspark
    except ImportError:
        return "pyspark is not installed"
    home = Path(pyspark.__file__).parent
    if not list((home / "jars").glob("spark-connect_*.jar")):
        return f"pyspark {pyspark.__version__} ships no Spark Connect server jar (pyspark 4 does)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def connect_server(workdir: Path) -> Iterator[str]:
    """The server on a free loopback port; yields its ``sc://`` URL. Its log is
    ``workdir/server.log`` (named in the error when it does not start)."""
    import pyspark

    home = Path(pyspark.__file__).parent
    port = _free_port()
    conf = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "2",
        "spark.sql.warehouse.dir": str(workdir / "warehouse"),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={workdir}",
    }
    command = [str(home / "bin" / "spark-submit"), "--master", "local[2]"]
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    if PG_JARS:
        command += ["--jars", str(PG_JARS[-1])]
    command += ["--class", "org.apache.spark.sql.connect.service.SparkConnectServer"]
    command.append("spark-internal")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the Spark Connect server did not start:\n{tail}")
            time.sleep(0.3)
        yield f"sc://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def connect(url: str) -> Any:
    """A Spark Connect client session (UTC). pyspark builds Connect columns while
    ``SPARK_CONNECT_MODE_ENABLED`` is set: the caller restores it when done."""
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    return ConnectSession.builder.remote(url).config("spark.sql.session.timeZone", "UTC").create()
