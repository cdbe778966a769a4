"""LakebaseResource: embedded default, secrets never shown, a fresh OAuth token per new connection."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import psycopg
import pytest
from helpers import start_password_enforcing_server
from psycopg import sql

from dagsters.local.demo import DEMO_DATABASE, seed_demo
from dagsters.local.embedded_lakebase import (
    EmbeddedServer,
    start_embedded_server,
    stop_embedded_server,
)
from dagsters.local.lakebase import lakebase_resource
from dagsters.local.migrate import apply_migrations, migrate_control_database
from dagsters.resources.databricks_workspace import DatabricksWorkspaceResource
from dagsters.resources.lakebase import (
    LakebaseResource,
    databricks_token_provider,
    oauth_connection_class,
    reset_client_cache,
)
from dagsters.settings import load_settings
from dagsters.utils.lakebase_client import LakebaseError

PAT = "dapi0123456789abcdef0123456789abcdef"  # fake workspace token for the stand-in
ROLE = "token_user"


@pytest.fixture(autouse=True)
def _fresh_client_cache():
    reset_client_cache()
    yield
    reset_client_cache()


# -- embedded default -------------------------------------------------------------------------------


def test_without_host_the_embedded_lakebase_is_started_migrated_and_seeded(tmp_path):
    settings = load_settings({"DATALOADER_HOME": str(tmp_path / "home")})
    pgdata = tmp_path / "home" / "pgdata"
    try:
        resource = lakebase_resource(settings)
        assert isinstance(resource, LakebaseResource)  # what the sensors and assets ask for
        client = resource.get_client()
        assert resource.get_client() is client  # one pool per process and configuration
        due = client.get_control_tables()
        assert sorted(r.control_key for r in due) == [
            "demo.customers",
            "demo.orders",
            "demo.products",
        ]
        orders = next(r for r in due if r.control_key == "demo.orders")
        assert orders.load_strategy == "incremental"
        assert orders.db_config_value["database"] == DEMO_DATABASE
        assert "password" not in json.dumps(orders.db_config_value)

        # A restart re-seeds without duplicating rows, keeps a person's edits, adds nothing.
        server = start_embedded_server(pgdata)
        with psycopg.connect(server.conninfo("dataloader")) as conn:
            conn.execute(
                "UPDATE table_control SET is_active = false WHERE control_key = 'demo.orders'"
            )
        with psycopg.connect(server.conninfo(DEMO_DATABASE)) as conn:
            before = conn.execute("SELECT count(*) FROM shop.orders").fetchone()[0]
        seed_demo(server)
        with psycopg.connect(server.conninfo(DEMO_DATABASE)) as conn:
            assert conn.execute("SELECT count(*) FROM shop.orders").fetchone()[0] == before
        with psycopg.connect(server.conninfo("dataloader")) as conn:
            rows = conn.execute(
                "SELECT control_key, is_active FROM table_control ORDER BY control_key"
            ).fetchall()
        assert rows == [("demo.customers", True), ("demo.orders", False), ("demo.products", True)]
    finally:
        reset_client_cache()
        stop_embedded_server(pgdata)


# -- secrets --------------------------------------------------------------------------------------


def test_repr_and_str_never_show_the_password(monkeypatch):
    monkeypatch.setenv("LAKEBASE_PASSWORD", "EnvPassw0rd!")
    explicit = LakebaseResource(host="127.0.0.1", user="svc", password="Sup3rSecret!")
    from_settings = LakebaseResource.from_settings(
        load_settings({"LAKEBASE_HOST": "127.0.0.1", "LAKEBASE_PASSWORD": "EnvPassw0rd!"})
    )
    for resource in (explicit, from_settings):
        for text in (repr(resource), str(resource), f"{resource}", resource.conninfo()):
            assert "Sup3rSecret!" not in text and "EnvPassw0rd!" not in text
        assert "password='***'" in repr(resource)


def test_from_settings_keeps_the_password_an_environment_reference(monkeypatch):
    monkeypatch.setenv("LAKEBASE_PASSWORD", "EnvPassw0rd!")
    settings = load_settings({"LAKEBASE_HOST": "db.example.com", "LAKEBASE_PASSWORD": "x"})
    resource = LakebaseResource.from_settings(settings)
    # What the UI shows as the resource's config: the variable's name, never its value.
    assert isinstance(resource.password, dg.EnvVar) and resource.password == "LAKEBASE_PASSWORD"
    # Resolved when the resource is set up for a run (and when used outside one). It holds the
    # databricks_workspace resource, so Dagster sets it up as a context manager.
    with resource.process_config_and_initialize_cm() as initialized:
        assert initialized.password == "EnvPassw0rd!"
    assert resource._settings().password == "EnvPassw0rd!"
    assert LakebaseResource.from_settings(load_settings({})).password is None


def test_connection_failure_shows_neither_password_in_errors_nor_logs(monkeypatch, caplog):
    monkeypatch.delenv("LAKEBASE_PASSWORD", raising=False)
    # Port 1 on loopback refuses at once: a real failed connect, no address off this machine.
    resource = LakebaseResource(
        host="127.0.0.1",
        port=1,
        user="svc",
        password="Sup3rSecret!",
        sslmode="disable",
        pool_timeout_seconds=2,  # fail fast; the behaviour under test is the message
    )
    with caplog.at_level(logging.DEBUG):
        client = resource.get_client()
        with pytest.raises(LakebaseError) as err:
            client.get_control_tables()
    assert "Sup3rSecret!" not in str(err.value) and "Sup3rSecret!" not in caplog.text
    assert err.value.__cause__ is None and "Sup3rSecret!" not in repr(client)


# -- OAuth against a password-enforcing PostgreSQL and a loopback Databricks stand-in -------------


@pytest.fixture(scope="module")
def password_pg(tmp_path_factory) -> Iterator[EmbeddedServer]:
    """A separate embedded server where ROLE must log in with its (scram) password.

    The embedded server initialises with trust auth; an hba line for ROLE placed first makes PostgreSQL
    enforce the password for that role only, so a stale token really is refused.
    """
    pgdata = tmp_path_factory.mktemp("oauth_pg") / "pgdata"
    server = start_password_enforcing_server(pgdata, ROLE, "control", superuser=True)
    apply_migrations(server.conninfo("control"))
    yield server
    stop_embedded_server(pgdata)


class _CredentialStandIn(ThreadingHTTPServer):
    """The two Databricks credential endpoints; each token issued becomes ROLE's password."""

    def __init__(self, server: EmbeddedServer):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.pg = server
        self.requests: list[tuple[str, dict, str]] = []
        self.tokens: list[str] = []
        self.fail = False


class _Handler(BaseHTTPRequestHandler):
    server: _CredentialStandIn

    def log_message(self, *args):  # keep test output quiet
        pass

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append((self.path, body, self.headers.get("Authorization", "")))
        if self.path not in ("/api/2.0/database/credentials", "/api/2.0/postgres/credentials"):
            self._reply(404, {"error_code": "NOT_FOUND", "message": self.path})
            return
        if self.server.fail:
            # Echo the caller's token the way a careless proxy might: it must not leak.
            self._reply(
                403,
                {"error_code": "PERMISSION_DENIED", "message": f"bad token {PAT} for request"},
            )
            return
        token = f"lakebase-oauth-{len(self.server.tokens) + 1}-{threading.get_ident()}"
        with psycopg.connect(self.server.pg.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(token)
                )
            )
        self.server.tokens.append(token)
        expiry = "expiration_time" if "database" in self.path else "expire_time"
        self._reply(200, {"token": token, expiry: "2099-01-01T00:00:00Z"})


@pytest.fixture
def databricks(password_pg, monkeypatch, tmp_path) -> Iterator[_CredentialStandIn]:
    stand_in = _CredentialStandIn(password_pg)
    thread = threading.Thread(target=stand_in.serve_forever, daemon=True)
    thread.start()
    for var in (
        "DATABRICKS_CLIENT_ID",
        "DATABRICKS_CLIENT_SECRET",
        "DATABRICKS_CONFIG_PROFILE",
        "DATABRICKS_ACCOUNT_ID",
        "LAKEBASE_PASSWORD",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABRICKS_HOST", f"http://127.0.0.1:{stand_in.server_address[1]}")
    monkeypatch.setenv("DATABRICKS_TOKEN", PAT)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    yield stand_in
    stand_in.shutdown()
    stand_in.server_close()


def _oauth_resource(server: EmbeddedServer, **kwargs) -> LakebaseResource:
    return LakebaseResource(
        host=server.socket_dir,
        port=server.port,
        database="control",
        user=ROLE,
        sslmode="disable",
        auth_mode="oauth",
        # The stand-in makes each new token the role's only password (stricter than Lakebase,
        # where earlier tokens stay valid), so connections are opened one at a time here.
        min_pool_size=0,
        max_pool_size=1,
        **kwargs,
    )


def test_password_is_really_enforced_for_the_token_role(password_pg):
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(
            psycopg.conninfo.make_conninfo(password_pg.conninfo("control"), user=ROLE),
            password="x",
        )


def test_provisioned_instance_token_is_minted_for_every_new_connection(password_pg, databricks):
    resource = _oauth_resource(password_pg, instance_name="dataloader-db")
    assert resource.get_client().get_control_tables() == []
    assert len(databricks.tokens) == 1
    path, body, auth = databricks.requests[-1]
    assert path == "/api/2.0/database/credentials"
    assert body["instance_names"] == ["dataloader-db"] and body["request_id"]
    assert auth == f"Bearer {PAT}"

    # Two more physical connections: two more tokens, each one valid only until the next.
    connection_class = oauth_connection_class(
        databricks_token_provider(instance_name="dataloader-db", endpoint=None)
    )
    conninfo = resource.conninfo()
    with connection_class.connect(conninfo) as first, connection_class.connect(conninfo) as second:
        for conn in (first, second):
            assert conn.execute("SELECT current_user").fetchone()[0] == ROLE
    assert len(databricks.tokens) == 3 and len(set(databricks.tokens)) == 3
    # The older token no longer logs in: each connection really used the token it fetched.
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(conninfo, password=databricks.tokens[1])
    for text in (repr(resource), str(resource)):
        assert not any(t in text for t in databricks.tokens)


def test_autoscaling_endpoint_uses_the_postgres_credentials_api(password_pg, databricks):
    endpoint = "projects/dataloader/branches/production/endpoints/primary"
    resource = _oauth_resource(password_pg, endpoint=endpoint)
    assert resource.get_client().get_control_tables() == []
    path, body, _ = databricks.requests[-1]
    assert (path, body) == ("/api/2.0/postgres/credentials", {"endpoint": endpoint})


def test_credential_errors_name_the_instance_but_not_the_token(databricks):
    databricks.fail = True
    mint = databricks_token_provider(instance_name="dataloader-db", endpoint=None)
    with pytest.raises(LakebaseError, match="dataloader-db") as err:
        mint()
    assert PAT not in str(err.value) and err.value.__cause__ is None


def test_oauth_needs_an_instance_or_endpoint_and_a_user(monkeypatch):
    monkeypatch.delenv("LAKEBASE_USER", raising=False)
    with pytest.raises(LakebaseError, match="DATALOADER_LAKEBASE_INSTANCE"):
        databricks_token_provider(instance_name=None, endpoint=None)
    resource = LakebaseResource(host="127.0.0.1", auth_mode="oauth", instance_name="x")
    with pytest.raises(LakebaseError, match="LAKEBASE_USER"):
        resource.get_client()
    with pytest.raises(LakebaseError, match="auth_mode"):
        LakebaseResource(host="127.0.0.1", auth_mode="kerberos").get_client()


def test_oauth_reaches_the_workspace_named_by_databricks_workspace_url(
    password_pg, databricks, monkeypatch
):
    # The spec's variable: with DATABRICKS_HOST unset the workspace comes from here.
    host = os.environ["DATABRICKS_HOST"]
    monkeypatch.delenv("DATABRICKS_HOST")
    monkeypatch.setenv("DATABRICKS_WORKSPACE_URL", host + "/")
    workspace = DatabricksWorkspaceResource.from_settings(load_settings())
    resource = _oauth_resource(password_pg, instance_name="dataloader-db", workspace=workspace)
    assert resource.get_client().get_control_tables() == []
    assert [path for path, _, _ in databricks.requests] == ["/api/2.0/database/credentials"]


def test_migrations_log_in_like_the_resource_with_oauth(password_pg, databricks):
    # One parser (settings.py) and one connection description for the resource and `migrate`.
    settings = load_settings(
        {
            "LAKEBASE_HOST": password_pg.socket_dir,
            "LAKEBASE_PORT": str(password_pg.port),
            "LAKEBASE_DATABASE": "control",
            "LAKEBASE_USER": ROLE,
            "LAKEBASE_SSLMODE": "disable",
            "DATALOADER_LAKEBASE_AUTH_MODE": "oauth",
            "DATALOADER_LAKEBASE_INSTANCE": "dataloader-db",
        }
    )
    assert migrate_control_database(settings) == []  # the fixture migrated it already
    assert len(databricks.tokens) == 1
    assert databricks.requests[-1][1]["instance_names"] == ["dataloader-db"]
