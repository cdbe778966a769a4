"""Foreign errors by the codes their drivers give: which code, and what it decides.

A failure DataLoader did not raise itself (a driver's, a cluster's, the cloud's) is classified by
its code where it has one, and by its text only when it has none or the code decides nothing
(``retry.classifier.classify_error``). A code is written ``<family>:<value>``:

- ``sqlstate:57014``: a SQLSTATE (PostgreSQL's own codes; ODBC/JDBC/Spark states of any source);
  decided by the exact state, else by its two-character class (08 connection, 40 rollback, ...);
- ``mysql:1040``: a MySQL/MariaDB error number;
- ``sqlserver:1205``: a SQL Server error number;
- ``oracle:ORA-01013`` / ``oracle:DPY-4011``: an Oracle or python-oracledb code;
- ``databricks:DELTA_CONCURRENT_APPEND``: a Databricks/Spark error class or REST error code;
- ``http:503``: an HTTP status (cloud storage, the workspace's REST API).

:func:`code_of` reads it from the real exception (psycopg's ``sqlstate``, PyMySQL's ``args[0]``,
mysql-connector's ``errno``, pymssql's number, oracledb's ``full_code``, ADBC's ``sqlstate``,
pyspark's error class, an HTTP error's status), walking the chain of causes; :func:`code_from_text`
parses one from a message where only text is left. The code travels to
``table_control.last_failure_code`` and ``historical_metadata.failure_code`` (sql/018).

Standard library only: shipped to Databricks with the scripts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from databricks_scripts.contract import FAILURE_CODE_FAMILIES as FAMILIES
from databricks_scripts.contract import known_code

TRANSIENT = "transient"
PERMANENT = "permanent"

# Rule names are retry.classifier's (the same explanation whether a code or the text decided).
# None: the code is known but decides nothing by itself (a generic state); the text decides.
_SQLSTATE_EXACT: dict[str, str | None] = {
    "57014": "statement_cancelled",  # query_canceled: statement_timeout, pg_cancel_backend
    "57P04": "missing_object",  # database_dropped
    "55P03": "lock_conflict",  # lock_not_available (lock_timeout, NOWAIT)
    "55006": "lock_conflict",  # object_in_use
    "53100": "out_of_space",  # disk_full
    "53400": "bad_configuration",  # configuration_limit_exceeded
    "40002": "constraint",  # transaction_integrity_constraint_violation
    "25P03": "timeout",  # idle_in_transaction_session_timeout
    "72000": "lock_conflict",  # snapshot_too_old
    "58030": "source_unavailable",  # io_error
    "HYT00": "timeout",  # ODBC: timeout expired
    "HYT01": "timeout",  # ODBC: connection timeout expired
    "42501": "permission",  # insufficient_privilege
    "42000": None,  # ODBC/MySQL: syntax error OR access rule violation; the number decides
    "42P01": "missing_object",
    "42703": "missing_object",
    "42883": "missing_object",
    "42S02": "missing_object",
    "42S22": "missing_object",
    "42601": "syntax",
    "HY000": None,  # general error: the vendor's number or the text decides
}
_SQLSTATE_CLASS: dict[str, str] = {
    "08": "connection",
    "28": "authentication",
    "40": "lock_conflict",
    "53": "source_unavailable",
    "57": "source_unavailable",
    "42": "sql_refused",
    "22": "data_type",
    "23": "constraint",
    "44": "constraint",
    "0A": "bad_configuration",
    "3D": "missing_object",
    "3F": "missing_object",
    "54": "sql_refused",
    "0L": "permission",
    "0P": "permission",
    "IM": "bad_configuration",
}

_MYSQL: dict[int, str] = {
    **dict.fromkeys((1040, 1203, 1226, 1053, 1037, 1038, 1041), "source_unavailable"),
    **dict.fromkeys((2002, 2003, 2006, 2013, 2055, 1152, 1158, 1159, 1160, 1161), "connection"),
    **dict.fromkeys((1927, 4031), "connection"),  # connection killed; closed for inactivity
    **dict.fromkeys((1205, 1213), "lock_conflict"),
    # max_execution_time (MySQL), max_statement_time (MariaDB), KILL QUERY
    **dict.fromkeys((3024, 1969, 1317), "statement_cancelled"),
    **dict.fromkeys((1021, 1114), "out_of_space"),
    2005: "bad_configuration",  # unknown server host
    **dict.fromkeys((1045, 1698, 1251, 1820, 1862, 2059), "authentication"),
    **dict.fromkeys((1044, 1142, 1143, 1227, 1370, 1130, 1129), "permission"),
    **dict.fromkeys((1049, 1146, 1054, 1109, 1051), "missing_object"),
    **dict.fromkeys((1064, 1149), "syntax"),
    **dict.fromkeys((1062, 1048, 1451, 1452, 1216, 1217, 1169), "constraint"),
    **dict.fromkeys((1264, 1366, 1406, 1292, 1265, 1365), "data_type"),
}

_SQLSERVER: dict[int, str] = {
    **dict.fromkeys((1205, 1222, 3960), "lock_conflict"),
    -2: "timeout",  # the client's command timeout
    20003: "timeout",  # pymssql/FreeTDS: server connection timed out
    # Azure SQL's transient list, and out of memory / lock resources
    **dict.fromkeys(
        (40197, 40501, 40613, 49918, 49919, 49920, 10928, 10929, 701, 8645, 1204),
        "source_unavailable",
    ),
    **dict.fromkeys((233, 64, 121, 10053, 10054, 10060, 20004, 20006, 20009, 20047), "connection"),
    **dict.fromkeys((18456, 18452, 18486, 18487, 18488), "authentication"),
    **dict.fromkeys((229, 230, 262, 300, 916), "permission"),
    **dict.fromkeys((208, 207, 911, 2812, 4060), "missing_object"),
    **dict.fromkeys((102, 156, 170), "syntax"),
    **dict.fromkeys((2627, 2601, 515, 547), "constraint"),
    **dict.fromkeys((245, 241, 8114, 8115, 8152, 2628, 220, 232, 242), "data_type"),
    **dict.fromkeys((9002, 1105), "out_of_space"),
}

_ORACLE: dict[str, str] = {
    **dict.fromkeys(
        [
            "ORA-00018",
            "ORA-00020",
            "ORA-02391",
            "ORA-01033",
            "ORA-01034",
            "ORA-01089",
            "ORA-12516",
            "ORA-12518",
            "ORA-12519",
            "ORA-12520",
            "ORA-12526",
            "ORA-12528",
            "ORA-04031",
            "ORA-04030",
        ],
        "source_unavailable",
    ),
    **dict.fromkeys(
        ["ORA-00054", "ORA-00060", "ORA-01555", "ORA-08177", "ORA-04021", "ORA-30006", "ORA-00051"],
        "lock_conflict",
    ),
    "ORA-01013": "statement_cancelled",  # user requested cancel (a call timeout sends it too)
    "DPY-4024": "timeout",  # call timeout exceeded
    "DPY-4005": "timeout",  # timed out waiting for the pool
    **dict.fromkeys(
        [
            "ORA-03113",
            "ORA-03114",
            "ORA-03135",
            "ORA-12170",
            "ORA-12537",
            "ORA-12541",
            "ORA-12543",
            "ORA-12547",
            "ORA-12571",
            "ORA-12514",
            "ORA-12535",
            "ORA-00028",
            "ORA-01012",
            "ORA-02396",
            "ORA-25408",
            "DPY-4011",
            "DPY-6005",
            "DPY-6000",
            "DPY-1001",
        ],
        "connection",
    ),
    **dict.fromkeys(
        ["ORA-01017", "ORA-28000", "ORA-28001", "ORA-01045", "ORA-01005", "DPY-4001"],
        "authentication",
    ),
    "ORA-01031": "permission",
    **dict.fromkeys(["ORA-00942", "ORA-00904", "ORA-04043", "ORA-01918"], "missing_object"),
    **dict.fromkeys(
        ["ORA-00900", "ORA-00933", "ORA-00936", "ORA-00907", "ORA-00923", "ORA-00911"], "syntax"
    ),
    **dict.fromkeys(
        [
            "ORA-01722",
            "ORA-01861",
            "ORA-12899",
            "ORA-01438",
            "ORA-01830",
            "ORA-01843",
            "ORA-01847",
            "ORA-01840",
            "ORA-01841",
            "ORA-01858",
            "ORA-06502",
            "ORA-01426",
        ],
        "data_type",
    ),
    **dict.fromkeys(
        ["ORA-00001", "ORA-01400", "ORA-02291", "ORA-02292", "ORA-02290"], "constraint"
    ),
    **dict.fromkeys(["ORA-12154", "DPY-4000", "DPY-4027"], "bad_configuration"),
    **dict.fromkeys(
        ["ORA-01652", "ORA-01653", "ORA-01654", "ORA-01688", "ORA-30036", "ORA-01536"],
        "out_of_space",
    ),
}

# Databricks / Spark error classes (the part before a '.' sub-class decides when the whole does
# not) and the REST API's error codes.
_DATABRICKS: dict[str, str | None] = {
    **dict.fromkeys(
        [
            "DELTA_METADATA_CHANGED",
            "DELTA_PROTOCOL_CHANGED",
            "DELTA_CONCURRENT_APPEND",
            "DELTA_CONCURRENT_DELETE_READ",
            "DELTA_CONCURRENT_DELETE_DELETE",
            "DELTA_CONCURRENT_TRANSACTION",
            "DELTA_CONCURRENT_WRITE",
        ],
        "delta_conflict",
    ),
    **dict.fromkeys(
        [
            "TEMPORARILY_UNAVAILABLE",
            "REQUEST_LIMIT_EXCEEDED",
            "RESOURCE_EXHAUSTED",
            "TOO_MANY_REQUESTS",
            "UNAVAILABLE",
        ],
        "throttling",
    ),
    "DEADLINE_EXCEEDED": "timeout",
    "INTERNAL_ERROR": "unexpected",
    **dict.fromkeys(
        [
            "TABLE_OR_VIEW_NOT_FOUND",
            "SCHEMA_NOT_FOUND",
            "CATALOG_NOT_FOUND",
            "NO_SUCH_CATALOG_EXCEPTION",
            "PATH_NOT_FOUND",
            "RESOURCE_DOES_NOT_EXIST",
            "NOT_FOUND",
            "UNRESOLVED_COLUMN",
            "UNRESOLVED_ROUTINE",
            "ROUTINE_NOT_FOUND",
        ],
        "missing_object",
    ),
    "PARSE_SYNTAX_ERROR": "syntax",
    **dict.fromkeys(["PERMISSION_DENIED", "INSUFFICIENT_PERMISSIONS"], "permission"),
    "UNAUTHENTICATED": None,  # an expired token (a new run takes a fresh one) or a bad one
    **dict.fromkeys(
        [
            "CAST_INVALID_INPUT",
            "CAST_OVERFLOW",
            "DATATYPE_MISMATCH",
            "DELTA_FAILED_TO_MERGE_FIELDS",
            "NUMERIC_VALUE_OUT_OF_RANGE",
            "ARITHMETIC_OVERFLOW",
            "DIVIDE_BY_ZERO",
        ],
        "data_type",
    ),
    **dict.fromkeys(
        [
            "DELTA_MULTIPLE_SOURCE_ROW_MATCHING_TARGET_ROW_IN_MERGE",
            "DELTA_NOT_NULL_CONSTRAINT_VIOLATED",
            "DELTA_VIOLATE_CONSTRAINT_WITH_VALUES",
        ],
        "constraint",
    ),
    **dict.fromkeys(["INVALID_PARAMETER_VALUE", "QUOTA_EXCEEDED"], "bad_configuration"),
    **dict.fromkeys(
        ["UC_NOT_ENABLED", "UC_COMMAND_NOT_SUPPORTED", "UNAUTHORIZED_ACCESS"], "unity_catalog"
    ),
}

_HTTP: dict[int, str | None] = {
    408: "timeout",
    429: "throttling",
    500: "unexpected",
    502: "throttling",
    503: "throttling",
    504: "throttling",
    401: None,  # an expired token (transient here) or a refused one: the text decides
    403: "permission",
    404: "missing_object",
}


def rule_for_code(code: str | None) -> str | None:
    """The retry.classifier rule a code decides, or None when it decides nothing by itself."""
    family, _, value = (code or "").partition(":")
    if not value:
        return None
    if family == "sqlstate":
        value = value.upper()
        if value in _SQLSTATE_EXACT:
            return _SQLSTATE_EXACT[value]
        return _SQLSTATE_CLASS.get(value[:2])
    if family in ("mysql", "sqlserver", "http"):
        table: dict[int, str | None] = {"mysql": _MYSQL, "sqlserver": _SQLSERVER, "http": _HTTP}[
            family
        ]
        try:
            return table.get(int(value))
        except ValueError:
            return None
    if family == "oracle":
        return _ORACLE.get(value.upper())
    if family == "databricks":
        value = value.upper()
        if value in _DATABRICKS:
            return _DATABRICKS[value]
        head = value.split(".", 1)[0]
        if head.startswith("DELTA_CONCURRENT_"):
            return "delta_conflict"
        if head.startswith("UNRESOLVED_") or head.endswith("_NOT_FOUND"):
            return "missing_object"
        return _DATABRICKS.get(head)
    return None


def best_code(codes: list[str]) -> str | None:
    """The code that speaks for a failure: the first that decides something, vendor numbers
    before SQLSTATEs before error classes before HTTP statuses; else the first one at all."""
    valid = [c for c in codes if known_code(c)]
    for family in FAMILIES:
        for code in valid:
            if code.startswith(family + ":") and rule_for_code(code) is not None:
                return code
    return valid[0] if valid else None


# ---------------------------------------------------------------------------------------------
# From the exception objects the drivers raise.


def code_of(exc: BaseException | None) -> str | None:
    """The code of a failure, read from the exceptions of its chain (``__cause__``, else
    ``__context__``) as their drivers give it; their texts are parsed when no such code decides."""
    found: list[str] = []
    for one in _chain(exc):
        found.extend(_codes_of_exception(one))
    if not any(rule_for_code(code) for code in found):
        for one in _chain(exc):
            found.extend(codes_in_text(str(one)))
    return best_code(found)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 20:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _codes_of_exception(exc: BaseException) -> list[str]:
    carried = known_code(getattr(exc, "failure_code", None))
    if carried:
        return [carried]
    module = type(exc).__module__ or ""
    codes: list[str] = []
    first = exc.args[0] if exc.args else None
    if module.startswith("pymysql"):
        codes += _number("mysql", first)
    elif module.startswith(("mysql.", "mariadb")):
        codes += _number("mysql", getattr(exc, "errno", None))
    elif module.startswith(("pymssql", "_mssql")):
        codes += _number("sqlserver", getattr(exc, "number", None) or first)
    elif module.startswith(("oracledb", "cx_Oracle")):
        full = getattr(first, "full_code", None)
        if isinstance(full, str) and full:
            codes.append(f"oracle:{full}")
    elif module.startswith("pyodbc") and exc.args:
        codes += codes_in_text(str(exc.args[-1]))  # the native number: "... (1205) (SQL...)"
    codes += _state_and_class(exc)
    codes += _http_status(exc)
    return codes


def _number(family: str, value: object) -> list[str]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [f"{family}:{value}"]
    return []


def _state_and_class(exc: BaseException) -> list[str]:
    """SQLSTATE (psycopg ``sqlstate``, psycopg2 ``pgcode``, ADBC ``sqlstate``, mysql-connector,
    pyodbc ``args[0]``) and a Spark/Databricks error class (pyspark, databricks-sdk)."""
    codes: list[str] = []
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if (type(exc).__module__ or "").startswith("pyodbc") and exc.args:
        state = state or exc.args[0]
    for method in ("getSqlState", "getCondition", "getErrorClass"):
        getter = getattr(exc, method, None)
        if callable(getter):
            try:
                value = getter()
            except Exception:  # noqa: BLE001 - an old pyspark without the method's backing
                value = None
            if isinstance(value, str) and value:
                if method == "getSqlState":
                    state = state or value
                else:
                    codes.append(f"databricks:{value}")
    error_code = getattr(exc, "error_code", None)
    if isinstance(error_code, str) and re.fullmatch(r"[A-Z][A-Z0-9_.]+", error_code):
        codes.append(f"databricks:{error_code}")
    if isinstance(state, str) and re.fullmatch(r"[0-9A-Z]{5}", state):
        codes.append(f"sqlstate:{state}")
    return codes


def _http_status(exc: BaseException) -> list[str]:
    """An HTTP error's status: ``status_code`` (azure-core, openai), ``response.status_code``
    (requests), botocore's ``response['ResponseMetadata']``, urllib's ``code``."""
    candidates = [getattr(exc, "status_code", None)]
    response = getattr(exc, "response", None)
    candidates.append(getattr(response, "status_code", None))
    if isinstance(response, dict):
        candidates.append((response.get("ResponseMetadata") or {}).get("HTTPStatusCode"))
    if type(exc).__name__ == "HTTPError":
        candidates.append(getattr(exc, "code", None))
    for value in candidates:
        if isinstance(value, int) and 100 <= value <= 599:
            return [f"http:{value}"]
    return []


# ---------------------------------------------------------------------------------------------
# From text, where only text is left (a Databricks run's state message, a stderr line, a JDBC
# stack trace): the forms the drivers print their codes in.

_TEXT_FORMS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # PyMySQL's args repr "(1205, 'Lock wait timeout ...')"; mysql-connector "1205 (HY000): ..."
    ("mysql", re.compile(r"\((\d{4}), [\"']")),
    ("mysql", re.compile(r"(?<![\w.-])(\d{4}) \([0-9A-Z]{5}\): ")),
    ("mysql", re.compile(r"\bERROR (\d{4}) \([0-9A-Z]{5}\)")),
    ("mysql", re.compile(r"\bMySQL(?: server)? error (\d{4})\b", re.IGNORECASE)),
    # pymssql's "(18456, b'Login failed ...')", sqlcmd's "Msg 1205, Level 13", pyodbc's native
    # number "[SQL Server]... (1205) (SQLExecDirectW)"
    ("sqlserver", re.compile(r"\((\d{1,5}), b[\"']")),
    ("sqlserver", re.compile(r"\bMsg (\d{1,5}), Level \d+")),
    ("sqlserver", re.compile(r"\[SQL Server\][^\n]*?\((-?\d{1,5})\) \(SQL\w+\)")),
    ("oracle", re.compile(r"\b(ORA-\d{5})\b")),
    ("oracle", re.compile(r"\b(DPY-\d{4})\b")),
    # "SQLSTATE: 42P01", "SQLSTATE[08006]", "(SQLSTATE 57014)", "SQL state [40001]", pyodbc's
    # "('08S01', '[08S01] ..."
    ("sqlstate", re.compile(r"\b(?:SQLSTATE|SQL ?[Ss]tate)\s*[:=\[(]?\s*['\"]?([0-9A-Z]{5})\b")),
    ("sqlstate", re.compile(r"\('([0-9A-Z]{5})', '\[\1\]")),
    ("sqlstate", re.compile(r"(?<![\w.-])\d{4} \(([0-9A-Z]{5})\): ")),
    # "[DELTA_CONCURRENT_APPEND] ...", "error_code": "RESOURCE_DOES_NOT_EXIST", "Error code: X"
    # (not libpq's result status "[PGRES_FATAL_ERROR]:")
    (
        "databricks",
        re.compile(r"\[(?!PGRES_)([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?:\.[A-Z0-9_]+)?)\](?!:)"),
    ),
    ("databricks", re.compile(r"\berror_code[\"']?\s*[:=]\s*[\"']?([A-Z][A-Z0-9_]+)")),
    # "HTTP 503", "HTTP/1.1 429", "status code: 503", "StatusCode: 503", "503 Service Unavailable"
    ("http", re.compile(r"\bHTTP(?:/\d(?:\.\d)?)?(?: status)?(?: code)?[: ]\s*([1-5]\d\d)\b")),
    (
        "http",
        re.compile(
            r"\b(?:status[ _]?code|StatusCode|HTTPStatusCode|response code)[\"']?\s*[:=]?\s*"
            r"([1-5]\d\d)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "http",
        re.compile(
            r"\b([45]\d\d) (?:Too Many Requests|Service Unavailable|Bad Gateway|Gateway Time-?out|"
            r"Internal Server Error|Unauthorized|Forbidden|Not Found|Request Time-?out)\b"
        ),
    ),
)


# PostgreSQL's own primary messages (fixed in its source, one SQLSTATE each), for the text a
# stream leaves: an Arrow reader raises libpq's words as an OSError without the state.
_POSTGRES_WORDS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(words), state)
    for words, state in (
        (r"canceling statement due to (?:statement timeout|user request)", "57014"),
        (r"canceling statement due to lock timeout", "55P03"),
        (r"canceling statement due to conflict with recovery", "40001"),
        (r"could not serialize access due to", "40001"),
        (r"\bdeadlock detected\b", "40P01"),
        (r"too many connections for (?:role|database)|sorry, too many clients already", "53300"),
        (r"remaining connection slots are reserved", "53300"),
        (r"terminating connection due to administrator command", "57P01"),
        (r"the database system is (?:starting up|shutting down|in recovery mode)", "57P03"),
        (r"terminating connection due to idle-in-transaction timeout", "25P03"),
        (r"password authentication failed for user", "28P01"),
        (r"permission denied for (?:table|schema|relation|database|sequence)", "42501"),
        (r'relation "[^"]+" does not exist', "42P01"),
        (r'column "[^"]+" does not exist', "42703"),
        (r"duplicate key value violates unique constraint", "23505"),
        (r"invalid input syntax for type", "22P02"),
    )
)


def codes_in_text(text: str | None) -> list[str]:
    """Every code ``text`` prints in a driver's form, in order of appearance; else the SQLSTATE
    of PostgreSQL's own words when the text holds them."""
    found: list[tuple[int, str]] = []
    for family, form in _TEXT_FORMS:
        for match in form.finditer(text or ""):
            found.append((match.start(), f"{family}:{match.group(1)}"))
    if not found:
        for words, state in _POSTGRES_WORDS:
            word = words.search(text or "")
            if word:
                found.append((word.start(), f"sqlstate:{state}"))
    return [code for _, code in sorted(found)]


def code_from_text(text: str | None) -> str | None:
    """The code that speaks for a failure whose text is all that is left (:func:`best_code`)."""
    return best_code(codes_in_text(text))
