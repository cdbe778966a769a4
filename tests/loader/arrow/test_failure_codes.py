"""Foreign errors classified by their drivers' codes (issue 24, item 3), the text as the fallback.

- the code is read from the real exception objects of the drivers the loader uses (ADBC and
  psycopg for PostgreSQL, PyMySQL for MySQL/MariaDB) and parsed from text where only text is left;
- a code that decides wins over the words; a generic one (HY000) leaves the text to decide;
- the misses named in the issue (a statement timeout, connection-slot exhaustion, a network timeout
  inside a communication-link failure, an expired OAuth token) are retried, here with errors the
  real servers raise: PostgreSQL's statement_timeout, a role's connection limit and a deadlock;
  MariaDB's max_statement_time, a user's connection limit, a lock wait timeout and a deadlock;
- the code travels on the wire (custom message and stderr tag), and through the real load asset
  to ``table_control.last_failure_code`` and ``historical_metadata.failure_code`` (sql/018).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from helpers import add_control_row, control_row, history, typed_control_row
from psycopg import sql
from test_load_asset import claim_and_materialize

from dagsters.policy.retry_analysis import build_analysis_request, decide_by_rules
from dagsters.runners.outcome import error_code_from
from databricks_scripts.contract import (
    ERROR_CODE_KEY,
    RETRY_RECOMMENDED,
    code_from_message,
    code_from_stderr,
    error_from_stderr,
    error_message,
    stderr_error_line,
)
from databricks_scripts.load.plan import LoadStepError
from databricks_scripts.retry.advisor import AdvisorConfig, decide_retry
from databricks_scripts.retry.classifier import (
    _CODE_ONLY_RULES,
    _RULES,
    PERMANENT,
    REQUIRES_REVIEW,
    TRANSIENT,
    classify_error,
)
from databricks_scripts.retry.codes import code_from_text, code_of, rule_for_code

MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "database": "test"}

# -- codes in text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("ERROR:  canceling statement due to statement timeout. SQLSTATE: 57014", "sqlstate:57014"),
        ("SQLSTATE[08006] [7] could not connect", "sqlstate:08006"),
        ("org.postgresql.util.PSQLException (SQL state [40001])", "sqlstate:40001"),
        (
            "(1213, 'Deadlock found when trying to get lock; try restarting transaction')",
            "mysql:1213",
        ),
        ("mysql.connector.errors.DatabaseError: 1040 (08004): Too many connections", "mysql:1040"),
        ("ERROR 1045 (28000): Access denied for user 'x'@'y'", "mysql:1045"),
        (
            "(18456, b\"Login failed for user 'loader'.DB-Lib error message 20018\")",
            "sqlserver:18456",
        ),
        ("Msg 1205, Level 13, State 51, Line 1 Transaction was deadlocked", "sqlserver:1205"),
        (
            (
                "('40001', '[40001] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Transaction"
                " was deadlocked (1205) (SQLExecDirectW)')"
            ),
            "sqlserver:1205",
        ),
        (
            "('08S01', '[08S01] [Microsoft][ODBC Driver 18]Communication link failure')",
            "sqlstate:08S01",
        ),
        ("ORA-12170: TNS:Connect timeout occurred", "oracle:ORA-12170"),
        ("DPY-4011: the database or network closed the connection", "oracle:DPY-4011"),
        (
            "[DELTA_CONCURRENT_APPEND.WITH_PARTITION_HINT] Files were added",
            "databricks:DELTA_CONCURRENT_APPEND.WITH_PARTITION_HINT",
        ),
        (
            '{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "x"}',
            "databricks:TEMPORARILY_UNAVAILABLE",
        ),
        ("Generic S3 error: HTTP status code: 503, body: SlowDown", "http:503"),
        ("response: 429 Too Many Requests", "http:429"),
        ("connection to server at host failed: timeout expired", None),
    ],
)
def test_codes_are_parsed_from_the_forms_drivers_print_them_in(text, code):
    assert code_from_text(text) == code


def test_a_vendor_number_speaks_before_its_generic_sqlstate_and_a_generic_one_decides_nothing():
    assert code_from_text("1205 (HY000): Lock wait timeout exceeded") == "mysql:1205"
    assert rule_for_code("sqlstate:HY000") is None
    assert rule_for_code("sqlstate:42000") is None  # MySQL's syntax OR access: the number decides
    # A generic state leaves the words to decide.
    generic = classify_error("Lock wait timeout exceeded", "sqlstate:HY000")
    assert (generic.rule, generic.code) == ("lock_conflict", "sqlstate:HY000")


@pytest.mark.parametrize(
    ("code", "rule", "category"),
    [
        ("sqlstate:08006", "connection", TRANSIENT),
        ("sqlstate:40P01", "lock_conflict", TRANSIENT),
        ("sqlstate:53300", "source_unavailable", TRANSIENT),
        ("sqlstate:57014", "statement_cancelled", TRANSIENT),
        ("sqlstate:57P01", "source_unavailable", TRANSIENT),
        ("sqlstate:57P04", "missing_object", PERMANENT),
        ("sqlstate:28P01", "authentication", PERMANENT),
        ("sqlstate:42501", "permission", PERMANENT),
        ("sqlstate:42P01", "missing_object", PERMANENT),
        ("sqlstate:42804", "sql_refused", PERMANENT),
        ("sqlstate:22P02", "data_type", PERMANENT),
        ("sqlstate:23505", "constraint", PERMANENT),
        ("mysql:1040", "source_unavailable", TRANSIENT),
        ("mysql:2013", "connection", TRANSIENT),
        ("mysql:1045", "authentication", PERMANENT),
        ("mysql:1146", "missing_object", PERMANENT),
        ("sqlserver:1205", "lock_conflict", TRANSIENT),
        ("sqlserver:40613", "source_unavailable", TRANSIENT),
        ("sqlserver:18456", "authentication", PERMANENT),
        ("oracle:ORA-01013", "statement_cancelled", TRANSIENT),
        ("oracle:ORA-28001", "authentication", PERMANENT),
        ("oracle:DPY-6005", "connection", TRANSIENT),
        ("databricks:DELTA_CONCURRENT_DELETE_READ", "delta_conflict", TRANSIENT),
        ("databricks:UNRESOLVED_COLUMN.WITH_SUGGESTION", "missing_object", PERMANENT),
        ("http:503", "throttling", TRANSIENT),
        ("http:403", "permission", PERMANENT),
    ],
)
def test_a_code_decides_over_the_words(code, rule, category):
    # The words say nothing (or the opposite); the code decides, and the reason names it.
    result = classify_error("something odd happened", code)
    assert (result.rule, result.category, result.code) == (rule, category, code)
    assert code.split(":", 1)[1] in result.reason


def test_every_rule_a_code_names_exists():
    from databricks_scripts.retry import codes as fc

    names = {r.name for r in (*_RULES, *_CODE_ONLY_RULES)}
    tables = (fc._SQLSTATE_EXACT, fc._SQLSTATE_CLASS, fc._MYSQL, fc._SQLSERVER, fc._ORACLE)
    named = {v for t in (*tables, fc._DATABRICKS, fc._HTTP) for v in t.values() if v}
    assert named <= names, named - names


def test_our_own_cancellation_openings_are_not_overruled_by_a_code():
    result = classify_error("Cancelled - Dagster run abc was terminated (HTTP 503)")
    assert result.decision == REQUIRES_REVIEW


@pytest.mark.parametrize(
    ("message", "decision"),
    [
        ("Token expired: the OAuth access token has expired", RETRY_RECOMMENDED),
        ("The security token included in the request is expired", RETRY_RECOMMENDED),
        ("HTTP 401 Unauthorized: ExpiredTokenException", RETRY_RECOMMENDED),
        ("ORA-28001: the password has expired", REQUIRES_REVIEW),
        ("HTTP 401 Unauthorized: invalid access token", REQUIRES_REVIEW),
    ],
)
def test_an_expired_token_is_retried_but_an_expired_password_or_a_bad_token_is_not(
    message, decision
):
    # Every run takes a fresh OAuth token; a password is not renewed by a new run.
    assert classify_error(message).decision == decision


# -- the wire -------------------------------------------------------------------------------------


def test_the_error_channel_carries_the_code_and_only_a_well_formed_one():
    message = error_message("load failed: boom", None, "sqlstate:57014")
    assert code_from_message(message) == "sqlstate:57014"
    line = stderr_error_line("load failed: boom", None, "sqlstate:57014")
    assert line == "DATALOADER_ERROR: [code=sqlstate:57014] load failed: boom\n"
    assert code_from_stderr([line.strip()]) == "sqlstate:57014"
    assert error_from_stderr([line.strip()]) == "load failed: boom"
    assert error_code_from([message]) == "sqlstate:57014"
    assert error_code_from([], [line.strip()]) == "sqlstate:57014"
    # One of our kinds carries no code; a malformed code never crosses.
    assert ERROR_CODE_KEY not in error_message("x", "bad_config", "sqlstate:57014")
    assert ERROR_CODE_KEY not in error_message("x", None, "secret value with spaces")
    assert code_from_stderr(["DATALOADER_ERROR: [code=nope] x"]) is None


# -- real drivers ---------------------------------------------------------------------------------


def _wrapped(exc: BaseException) -> LoadStepError:
    """The loader's own wrapper around a driver error (``raise ... from exc``)."""
    try:
        raise LoadStepError("read source", f"{type(exc).__name__}: {exc}") from exc
    except LoadStepError as step:
        return step


def _caught(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - the driver's own exception is the subject
        return exc
    raise AssertionError("the server did not refuse")


def _retried(exc: BaseException, code: str | None) -> None:
    """The code read from the wrapped exception, and the decision on the text the row gets."""
    step = _wrapped(exc)
    assert code_of(step) == code
    result = classify_error(str(step), code_of(step))
    assert result.decision == RETRY_RECOMMENDED, (result, str(step))


def test_postgres_statement_timeout_through_adbc_and_psycopg(source_db):
    import adbc_driver_manager.dbapi
    import adbc_driver_postgresql.dbapi

    with adbc_driver_postgresql.dbapi.connect(_uri(source_db)) as conn, conn.cursor() as cur:
        cur.execute("SET statement_timeout = '50ms'")
        exc = _caught(lambda: (cur.execute("SELECT pg_sleep(5)"), cur.fetchall()))
    assert isinstance(exc, adbc_driver_manager.dbapi.Error)
    _retried(exc, "sqlstate:57014")
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("SET statement_timeout = '50ms'")
        exc = _caught(lambda: conn.execute("SELECT pg_sleep(5)"))
    assert isinstance(exc, psycopg.errors.QueryCanceled) and exc.sqlstate == "57014"
    _retried(exc, "sqlstate:57014")


def test_postgres_connection_limit_of_a_role(source_db):
    role = f"tiny_{uuid.uuid4().hex[:8]}"
    with _pg_role(source_db, role, "CONNECTION LIMIT 1") as conninfo, psycopg.connect(conninfo):
        exc = _caught(lambda: psycopg.connect(conninfo))
    assert "too many connections for role" in str(exc)
    # libpq gives no SQLSTATE for a refused start-up: PostgreSQL's own words name 53300.
    assert getattr(exc, "sqlstate", None) is None
    _retried(exc, "sqlstate:53300")
    assert classify_error(str(exc)).rule == "source_unavailable"


def test_postgres_deadlock(source_db):
    with psycopg.connect(source_db, autocommit=True) as setup:
        setup.execute("CREATE TABLE locks (id int PRIMARY KEY, v int)")
        setup.execute("INSERT INTO locks VALUES (1, 0), (2, 0)")
    exc = _deadlock(
        lambda: psycopg.connect(source_db),
        "UPDATE locks SET v = v + 1 WHERE id = %s",
    )
    assert isinstance(exc, psycopg.errors.DeadlockDetected)
    _retried(exc, "sqlstate:40P01")


@pytest.fixture
def mariadb() -> Iterator[object]:
    pymysql = pytest.importorskip("pymysql")
    try:
        conn = pymysql.connect(**MYSQL, connect_timeout=3, autocommit=True)
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"no MariaDB at 127.0.0.1:3306 (root, database test): {exc}")
    table = f"locks_{uuid.uuid4().hex[:8]}"
    with conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int) ENGINE=InnoDB")
        cur.execute(f"INSERT INTO {table} VALUES (1, 0), (2, 0)")
    conn.table = table
    yield conn
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
    conn.close()


def test_mariadb_statement_timeout(mariadb):
    with mariadb.cursor() as cur:
        exc = _caught(
            lambda: cur.execute("SET STATEMENT max_statement_time=0.05 FOR SELECT SLEEP(5)")
        )
    assert exc.args[0] == 1969
    _retried(exc, "mysql:1969")


def test_mariadb_connection_limit_of_a_user(mariadb):
    import pymysql

    user = f"tiny_{uuid.uuid4().hex[:8]}"
    with mariadb.cursor() as cur:
        cur.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{user}'")
        cur.execute(f"GRANT SELECT ON test.* TO '{user}'@'%' WITH MAX_USER_CONNECTIONS 1")
    try:
        login = {**MYSQL, "user": user, "password": f"pw-{user}"}
        with pymysql.connect(**login):
            exc = _caught(lambda: pymysql.connect(**login))
    finally:
        with mariadb.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{user}'@'%'")
    assert exc.args[0] in (1203, 1226), exc.args  # the user's limit; 1040 is the server's
    _retried(exc, f"mysql:{exc.args[0]}")


def test_mariadb_lock_wait_timeout_and_deadlock(mariadb):
    import pymysql

    table = mariadb.table
    holder = pymysql.connect(**MYSQL)
    waiter = pymysql.connect(**MYSQL)
    try:
        with holder.cursor() as hold, waiter.cursor() as wait:
            hold.execute(f"UPDATE {table} SET v = 1 WHERE id = 1")
            wait.execute("SET SESSION innodb_lock_wait_timeout = 1")
            exc = _caught(lambda: wait.execute(f"UPDATE {table} SET v = 2 WHERE id = 1"))
    finally:
        holder.close()
        waiter.close()
    assert exc.args[0] == 1205
    _retried(exc, "mysql:1205")
    exc = _deadlock(lambda: pymysql.connect(**MYSQL), f"UPDATE {table} SET v = v + 1 WHERE id = %s")
    assert exc.args[0] == 1213
    _retried(exc, "mysql:1213")


def _deadlock(connect: Callable[[], object], update: str) -> BaseException:
    """Two transactions take rows 1 and 2, then each asks for the other's: the server ends one."""
    first, second = connect(), connect()
    errors: list[BaseException] = []
    took = threading.Barrier(2, timeout=30)

    def run(conn, mine: int, theirs: int) -> None:
        try:
            with conn.cursor() as cur:
                cur.execute(update, (mine,))
                took.wait()
                cur.execute(update, (theirs,))
            conn.rollback()
        except Exception as exc:  # noqa: BLE001 - the deadlock victim's error is the subject
            errors.append(exc)
            conn.rollback()

    threads = [
        threading.Thread(target=run, args=(first, 1, 2)),
        threading.Thread(target=run, args=(second, 2, 1)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    first.close()
    second.close()
    assert len(errors) == 1, errors  # exactly one victim
    return errors[0]


def _uri(conninfo: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    return (
        f"postgresql://{params['user']}@/{params['dbname']}"
        f"?host={params['host']}&port={params['port']}"
    )


class _pg_role:
    """A throwaway login role with ``options`` on the embedded server; its conninfo."""

    def __init__(self, conninfo: str, role: str, options: str):
        self.conninfo, self.role, self.options = conninfo, role, options

    def __enter__(self) -> str:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN " + self.options).format(sql.Identifier(self.role))
            )
        params = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        return psycopg.conninfo.make_conninfo(**{**params, "user": self.role})

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(self.role)))


# -- through the load asset to the row and the history --------------------------------------------


def test_a_statement_timeout_reaches_the_row_and_history_with_its_code_and_is_retried(
    control_db, source_db, source, lake_root, db, instance, no_ai_model
):
    # A view that always outlasts the database's statement_timeout: every read of it is cancelled
    # by the server (57014), as a slow source is.
    source.execute("CREATE VIEW slow AS SELECT 1 AS id, (SELECT 1 FROM pg_sleep(5)) AS z")
    dbname = psycopg.conninfo.conninfo_to_dict(source_db)["dbname"]
    source.execute(
        sql.SQL("ALTER DATABASE {} SET statement_timeout = '200ms'").format(sql.Identifier(dbname))
    )
    add_control_row(db, source_db, "pg.slow", "slow", load_strategy="full", incremental_column=None)
    result, _ = claim_and_materialize(control_db, lake_root, instance, "pg.slow")
    assert not result.success
    row = control_row(db, "pg.slow")
    latest = next(h for h in history(db, "pg.slow") if h["metadata_id"] == row["last_metadata_id"])
    assert (row["last_failure_kind"], row["last_failure_code"]) == (None, "sqlstate:57014")
    assert (latest["failure_kind"], latest["failure_code"]) == (None, "sqlstate:57014")
    assert "statement timeout" in row["last_message"]
    # Decided by the code, in the code location and in the retry script alike.
    typed = typed_control_row(db, "pg.slow")
    assert decide_by_rules(typed, "test").decision == RETRY_RECOMMENDED
    request = build_analysis_request(typed, history(db, "pg.slow"))
    assert request["failure_code"] == "sqlstate:57014"
    decided = decide_retry(request, AdvisorConfig.from_env({}))
    assert decided["decision"] == RETRY_RECOMMENDED
    assert "SQLSTATE 57014" in decided["reason"]


def test_an_http_error_gives_its_status_and_a_wrapper_its_causes_code():
    import urllib.error

    throttled = urllib.error.HTTPError("http://127.0.0.1/x", 503, "Service Unavailable", {}, None)
    assert code_of(_wrapped(throttled)) == "http:503"
    # Nothing on the exceptions: the texts of the chain are read.
    assert code_of(_wrapped(OSError("ORA-03113: end-of-file on communication channel"))) == (
        "oracle:ORA-03113"
    )
    assert code_of(_wrapped(ValueError("no code here"))) is None


def test_the_database_accepts_exactly_the_wire_shape_of_a_code(db):
    import re
    from pathlib import Path

    from databricks_scripts.contract import FAILURE_CODE_FAMILIES

    migration = (Path(__file__).resolve().parents[3] / "sql" / "018_failure_codes.sql").read_text()
    listed = re.findall(r"'\^\(([a-z|]+)\):", migration)
    assert listed == ["|".join(FAILURE_CODE_FAMILIES)] * 2
    config_id = add_control_row(db, "host=/nowhere port=5432 dbname=x user=x", "pg.coded", "coded")
    db.execute(
        "UPDATE table_control SET last_failure_code = 'mysql:1040' WHERE config_id = %s",
        (config_id,),
    )
    with pytest.raises(psycopg.errors.CheckViolation, match="last_failure_code_must_be"):
        db.execute(
            "UPDATE table_control SET last_failure_code = 'password=hunter2 x' WHERE config_id = %s",
            (config_id,),
        )
