"""Differential tests: random sequences of source changes and loads, the destination compared
with an oracle computed from the source after every load.

Each example builds a fresh source table on a real database (the embedded PostgreSQL, and
MariaDB/MySQL on 127.0.0.1:3306 where it runs), then plays a sequence of steps drawn by
hypothesis: inserts (several rows may share one cursor value), updates (values to and from NULL),
deletes, a deleted key inserted again, late rows inside the look-back window, a new column, and
loads (plain, forced full reload). Every load runs the Arrow engine exactly as the load script
does (``run_arrow_load`` on a real source reader, into a real Delta table), with small MERGE
chunks and, for append tables, a resumable first load in small chunks.

The oracle is the source itself, read with a plain query at each load, and the rules of the
strategy (see ``Oracle``). A failure prints the shortest sequence hypothesis found.

Profiles: a bounded one runs in ``make test``; ``DATALOADER_DIFF_EXAMPLES=200`` (``make bench``
runs it this way too) draws more and longer sequences.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_loader_pipe import _mysql_or_skip, make_params

from databricks_scripts.contract import DELETED_AT, END_AT, RECORDED_METADATA_ID_PARAM, START_AT
from databricks_scripts.engines.arrow import engine as la
from databricks_scripts.load.params import parse_load_spec
from databricks_scripts.sources import readers as ls

EXAMPLES = int(os.environ.get("DATALOADER_DIFF_EXAMPLES", "4"))
STEPS = 14 if EXAMPLES <= 10 else 30
LOOKBACK_S = 60
BASE = dt.datetime(2024, 3, 1, 12, 0, 0)
VALUE_COLUMNS = ("v", "amount")

# ---- steps ------------------------------------------------------------------------------------

values = st.one_of(st.none(), st.sampled_from(["a", "b", "Grüße", "", "x" * 20]))
amounts = st.one_of(st.none(), st.decimals(min_value=-9999, max_value=9999, places=2))
steps = st.one_of(
    st.tuples(st.just("insert"), st.integers(1, 4), values, amounts, st.booleans()),
    st.tuples(st.just("update"), st.integers(0, 50), values, amounts),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("reinsert"), st.integers(0, 50), values),
    st.tuples(st.just("late"), st.integers(1, LOOKBACK_S // 2), values),
    st.tuples(st.just("add_column")),
    st.tuples(st.just("load")),
    st.tuples(st.just("load")),
    st.tuples(st.just("full_reload")),
)


# ---- the source databases ---------------------------------------------------------------------


class Source:
    """One source table on a real database: DDL, the mutations, and a plain read of its rows."""

    def __init__(self, kind: str, conninfo: str | None):
        self.kind = kind
        self.table = f"dl_diff_{uuid.uuid4().hex[:10]}"
        self.columns: list[str] = ["grp", "id", *VALUE_COLUMNS, "ts"]
        if kind == "postgresql":
            self.conn = psycopg.connect(conninfo, autocommit=True)
            self.reader_class = ls.PostgresReader
        else:
            self.conn = _mysql_or_skip()
            self.reader_class = ls.MySQLReader
        ts_type = "timestamp(6)" if kind == "postgresql" else "datetime(6)"
        self.execute(
            f"CREATE TABLE {self.q(self.table)} (grp smallint NOT NULL, id int NOT NULL, "
            f"v varchar(40), amount decimal(12,2), ts {ts_type} NOT NULL, PRIMARY KEY (grp, id))"
        )

    def q(self, name: str) -> str:
        return f'"{name}"' if self.kind == "postgresql" else f"`{name}`"

    def execute(self, text: str, params: tuple = ()) -> list[tuple]:
        if self.kind == "postgresql":
            cur = self.conn.execute(text.replace("%s", "%s"), params or None)
            return cur.fetchall() if cur.description else []
        with self.conn.cursor() as cur:
            cur.execute(text, params or None)
            return list(cur.fetchall()) if cur.description else []

    def rows(self) -> dict[tuple, dict[str, Any]]:
        cols = ", ".join(self.q(c) for c in self.columns)
        out = {}
        for r in self.execute(f"SELECT {cols} FROM {self.q(self.table)}"):
            row = dict(zip(self.columns, r, strict=True))
            out[(row["grp"], row["id"])] = row
        return out

    def params(self) -> dict[str, Any]:
        if self.kind == "postgresql":
            return {}
        mysql = {"host": "127.0.0.1", "port": 3306, "database": "test", "user": "root"}
        return {"db_type": "mysql", "source_schema_name": "test", "db_config_value": mysql}

    def analyze(self) -> None:
        self.execute(f"ANALYZE {'' if self.kind == 'postgresql' else 'TABLE '}{self.q(self.table)}")

    def drop(self) -> None:
        try:
            self.execute(f"DROP TABLE IF EXISTS {self.q(self.table)}")
        finally:
            self.conn.close()


# ---- the oracle -------------------------------------------------------------------------------


IMAGE_COLUMNS = (*VALUE_COLUMNS, "ts", "extra")  # "extra": the column a step may add


def image(row: dict[str, Any]) -> tuple:
    """A row's values (not its key); a column the table does not have (yet) reads as NULL."""
    return tuple(row.get(c) for c in IMAGE_COLUMNS)


def _order(values: tuple) -> tuple:
    return tuple((v is None, v) for v in values)


@dataclass
class Oracle:
    """What the destination must hold after each load, from the source's rows at that load.

    - append (incremental, no keys): every source row read is appended, except a row inside the
      look-back window identical to one already loaded;
    - merge / keyed incremental: the current view equals the source; without delete detection a
      key gone from the source keeps its last loaded row; soft keeps it marked ``__DELETED_AT``;
    - scd2: per key, the sequence of distinct images seen at loads, the last one open unless the
      key was gone at a load with delete detection.
    """

    strategy: str
    keyed: bool
    detection: str
    watermark: dt.datetime | None = None
    append: list[tuple] = field(default_factory=list)
    current: dict[tuple, tuple] = field(default_factory=dict)
    deleted: set = field(default_factory=set)
    versions: dict[tuple, list[tuple]] = field(default_factory=dict)
    open_keys: set = field(default_factory=set)

    def load(self, rows: dict[tuple, dict], columns: list[str], full: bool) -> None:
        first = self.watermark is None and not self.append and not self.current
        # A forced reload overwrites the table, except where it keeps history (scd2, soft
        # deletes): there it reads every row and merges them as any load would.
        if full and self.strategy != "scd2" and self.detection != "soft":
            self.append, self.current, self.deleted = [], {}, set()
        lower = None
        if not (full or first) and self.watermark is not None:
            lower = self.watermark - dt.timedelta(seconds=LOOKBACK_S)
        read = {k: r for k, r in rows.items() if lower is None or r["ts"] > lower}
        if read:
            top = max(r["ts"] for r in read.values())
            self.watermark = top if self.watermark is None or full else max(self.watermark, top)
        if self.strategy == "incremental" and not self.keyed:
            have = set(self.append)
            for r in read.values():
                img = (r["grp"], r["id"], *image(r))
                wm_before = lower + dt.timedelta(seconds=LOOKBACK_S) if lower else None
                if wm_before is None or r["ts"] > wm_before or img not in have:
                    self.append.append(img)
                    have.add(img)
            return
        if self.strategy == "scd2":
            self._scd2(rows, read, columns)
            return
        for k, r in read.items():
            self.current[k] = image(r)
            self.deleted.discard(k)
        if self.detection != "none":
            for k in list(self.current):
                if k not in rows:
                    if self.detection == "hard":
                        del self.current[k]
                    else:
                        self.deleted.add(k)

    def _scd2(self, rows, read, columns) -> None:
        for k, r in read.items():
            img = image(r)
            history = self.versions.setdefault(k, [])
            if k in self.open_keys and history[-1] == img:
                continue
            history.append(img)
            self.open_keys.add(k)
        if self.detection != "none":
            self.open_keys -= {k for k in self.open_keys if k not in rows}


def destination(path, columns: list[str]) -> list[dict]:
    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def check(oracle: Oracle, path, columns: list[str], history: list) -> None:
    rows = destination(path, columns)
    where = f"after steps {history}"
    if oracle.strategy == "incremental" and not oracle.keyed:
        got = sorted(((r["grp"], r["id"], *image(r)) for r in rows), key=_order)
        assert got == sorted(oracle.append, key=_order), where
        return
    if oracle.strategy == "scd2":
        got: dict[tuple, list] = {}
        open_keys = set()
        for r in sorted(rows, key=lambda r: (r[START_AT], r[END_AT] is None)):
            got.setdefault((r["grp"], r["id"]), []).append(image(r))
            if r[END_AT] is None:
                assert (r["grp"], r["id"]) not in open_keys, f"two open versions {where}"
                open_keys.add((r["grp"], r["id"]))
        assert got == oracle.versions, where
        assert open_keys == oracle.open_keys, where
        return
    got_current = {(r["grp"], r["id"]): image(r) for r in rows}
    assert got_current == oracle.current, where
    soft = {(r["grp"], r["id"]) for r in rows if r.get(DELETED_AT) is not None}
    assert soft == oracle.deleted, where


# ---- the driver -------------------------------------------------------------------------------


class Run:
    """Plays one sequence of steps against one source table and its Delta destination."""

    def __init__(self, source: Source, lake_root, strategy: str, detection: str, keyed: bool):
        self.source = source
        self.clock = BASE
        self.next_id = 0
        self.gone: list[tuple] = []
        self.attempt = 0
        self.watermark = None
        self.keyed = keyed
        self.params = make_params(
            "host=x port=1 dbname=x user=x",
            source.table,
            load_strategy=strategy,
            incremental_column="ts",
            merge_keys=["grp", "id"] if keyed else None,
            delete_detection=detection,
            delete_max_fraction=1.0,
            lookback_window_seconds=LOOKBACK_S,
            **source.params(),
        )
        if source.kind == "postgresql":
            self.params["db_config_value"] = source.pg_config
        self.path = lake_root / "lake" / "landing" / self.params["destination_table_name"]
        self.oracle = Oracle(strategy, keyed, detection)
        self.history: list[tuple] = []

    def tick(self) -> dt.datetime:
        self.clock += dt.timedelta(seconds=7, microseconds=123)
        return self.clock

    def keys(self) -> list[tuple]:
        return sorted(self.source.rows())

    def step(self, s: tuple) -> None:
        self.history.append(s)
        kind, t = s[0], self.source.q(self.source.table)
        if kind == "insert":
            _, n, v, amount, same_ts = s
            ts = self.tick()
            for _ in range(n):
                self.next_id += 1
                ts_row = ts if same_ts else self.tick()
                self.source.execute(
                    f"INSERT INTO {t} (grp, id, v, amount, ts) VALUES (%s, %s, %s, %s, %s)",
                    (self.next_id % 3, self.next_id, v, amount, ts_row),
                )
        elif kind == "update" and (keys := self.keys()):
            grp, id_ = keys[s[1] % len(keys)]
            self.source.execute(
                f"UPDATE {t} SET v = %s, amount = %s, ts = %s WHERE grp = %s AND id = %s",
                (s[2], s[3], self.tick(), grp, id_),
            )
        elif kind == "delete" and (keys := self.keys()):
            grp, id_ = keys[s[1] % len(keys)]
            self.source.execute(f"DELETE FROM {t} WHERE grp = %s AND id = %s", (grp, id_))
            self.gone.append((grp, id_))
        elif kind == "reinsert" and self.gone:
            grp, id_ = self.gone.pop(s[1] % len(self.gone))
            self.source.execute(
                f"INSERT INTO {t} (grp, id, v, amount, ts) VALUES (%s, %s, %s, NULL, %s)",
                (grp, id_, s[2], self.tick()),
            )
        elif kind == "late":
            # Committed late with a cursor inside the look-back window, behind the newest row.
            self.next_id += 1
            ts = self.clock - dt.timedelta(seconds=s[1])
            self.source.execute(
                f"INSERT INTO {t} (grp, id, v, amount, ts) VALUES (%s, %s, %s, NULL, %s)",
                (self.next_id % 3, self.next_id, s[2], ts),
            )
        elif kind == "add_column" and "extra" not in self.source.columns:
            self.source.execute(f"ALTER TABLE {t} ADD COLUMN extra int")
            self.source.columns.append("extra")
            self.source.execute(
                f"UPDATE {t} SET extra = id, ts = %s WHERE id %% 2 = 0", (self.tick(),)
            )
        elif kind in ("load", "full_reload"):
            self.load(full=kind == "full_reload")

    def load(self, *, full: bool) -> None:
        if self.oracle.strategy == "scd2" and full:
            full = False  # scd2 keeps history: a forced reload is not part of its contract here
        self.attempt += 1
        first = self.attempt == 1
        if first and not self.keyed:
            self.source.analyze()  # the row estimate that turns on the chunked first load
        params = {
            **self.params,
            "metadata_id": self.attempt,
            "incremental_value": self.watermark,
            "force_full_reload": full,
            RECORDED_METADATA_ID_PARAM: self.attempt - 1 or None,
        }
        spec = parse_load_spec(params)
        snapshot = self.source.rows()
        reader = self.source.reader_class(spec, None, batch_bytes=1 << 16, batch_rows=3)
        try:
            result = la.run_arrow_load(
                spec,
                reader,
                self.path,
                log=lambda _m: None,
                merge_chunk_rows=4,
                first_load_chunks=(3, 1),
            )
        finally:
            reader.close()
        self.watermark = result.watermark_after
        self.oracle.load(snapshot, self.source.columns, full)
        check(self.oracle, self.path, self.source.columns, self.history)
        verification = result.verification
        assert verification is not None, "every load here is verified (verify_depth counts)"
        assert verification.passed, (
            f"reconciliation failed on a correct load: {verification.description} "
            f"{verification.facts} after steps {self.history}"
        )
        assert not verification.description.startswith("not verified"), verification


COMBINATIONS = [
    ("incremental", "none", False),
    ("incremental", "soft", True),
    ("incremental", "hard", True),
    ("merge", "none", True),
    ("merge", "soft", True),
    ("merge", "hard", True),
    ("scd2", "none", True),
    ("scd2", "soft", True),
    ("scd2", "hard", True),
]


@pytest.fixture(params=["postgresql", "mysql"])
def source_kind(request, source_db):
    if request.param == "mysql":
        _mysql_or_skip().close()
    return request.param, source_db


@pytest.mark.parametrize(("strategy", "detection", "keyed"), COMBINATIONS)
def test_the_destination_equals_the_oracle_after_every_load(
    source_kind, tmp_path_factory, strategy, detection, keyed
):
    kind, conninfo = source_kind

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=EXAMPLES <= 10,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        print_blob=True,
    )
    @given(st.lists(steps, min_size=1, max_size=STEPS))
    def play(sequence):
        lake_root = tmp_path_factory.mktemp("lake")
        source = Source(kind, conninfo)
        source.pg_config = make_params(conninfo, "x")["db_config_value"]
        try:
            run = Run(source, lake_root, strategy, detection, keyed)
            # Always: a first load, the drawn steps, and a last load.
            for s in [("insert", 4, "a", Decimal("1.00"), False), ("load",), *sequence, ("load",)]:
                run.step(s)
        finally:
            source.drop()

    play()
