"""Fake PostgreSQL and MySQL servers that record what a client sends before it is authenticated.

Stand-ins for "a server of one's own choosing" (issue 17): each accepts TCP connections, offers no
TLS, asks for the password in clear text, records it, and refuses the login. A test points a load
at one and then reads ``connections``: whether the client asked for TLS, its startup parameters or
handshake, and any password it sent.

Every accepted connection is recorded at accept time; ``settle()`` waits (with a deadline) until
every connection made so far has been accepted and handled to its end, so an assertion that
nothing arrived is not a race.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

PG_SSL_REQUEST = 80877103
PG_GSSENC_REQUEST = 80877104
PG_PROTOCOL_3 = 196608

MYSQL_CAPABILITIES = 0x1 | 0x8 | 0x200 | 0x8000 | 0x80000  # no CLIENT_SSL (0x800)
MYSQL_CLIENT_SSL = 0x800


@dataclass
class Recorded:
    """What one client connection sent."""

    ssl_requested: bool = False
    startup: dict[str, str] = field(default_factory=dict)
    handshake_user: str | None = None
    handshake_flags: int | None = None
    password: str | None = None
    raw: bytes = b""
    done: bool = False
    sentinel: bool = False


class _FakeServer:
    def __init__(self, host: str = "127.0.0.1"):
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self.host = host
        self.port = self._sock.getsockname()[1]
        self.connections: list[Recorded] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True, name="fake-db-accept").start()

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        self._closed = True
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def settle(self, timeout: float = 30.0) -> list[Recorded]:
        """The client connections made so far, each handled to its end (sentinels left out)."""
        marker = os.urandom(8).hex()
        with socket.create_connection((self.host, self.port), timeout=timeout) as probe:
            probe.sendall(b"SENTINEL" + marker.encode())
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with self._lock:
                    seen = any(r.sentinel and marker.encode() in r.raw for r in self.connections)
                    busy = any(not r.done for r in self.connections if not r.sentinel)
                if seen and not busy:
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the fake server did not settle before the deadline")
        with self._lock:
            return [r for r in self.connections if not r.sentinel]

    # -- plumbing --------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            record = Recorded()
            with self._lock:
                self.connections.append(record)
            threading.Thread(
                target=self._serve, args=(conn, record), daemon=True, name="fake-db-conn"
            ).start()

    def _serve(self, conn: socket.socket, record: Recorded) -> None:
        conn.settimeout(30)
        try:
            self.handle(conn, record)
        except (OSError, EOFError, struct.error):
            pass
        finally:
            record.done = True
            conn.close()

    @staticmethod
    def _read(conn: socket.socket, n: int, record: Recorded) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        record.raw += data
        return data

    def _sentinel(self, first: bytes, conn: socket.socket, record: Recorded) -> bool:
        if first != b"SENT":
            return False
        record.sentinel = True
        record.raw += conn.recv(64)
        return True

    def handle(self, conn: socket.socket, record: Recorded) -> None:
        raise NotImplementedError


class FakePostgres(_FakeServer):
    """Answers SSLRequest/GSSENCRequest with 'N', asks for a cleartext password, records it."""

    def handle(self, conn: socket.socket, record: Recorded) -> None:
        while True:
            head = self._read(conn, 4, record)
            if self._sentinel(head, conn, record):
                return
            (length,) = struct.unpack("!i", head)
            body = self._read(conn, length - 4, record)
            (code,) = struct.unpack("!i", body[:4])
            if code in (PG_SSL_REQUEST, PG_GSSENC_REQUEST):
                record.ssl_requested = record.ssl_requested or code == PG_SSL_REQUEST
                conn.sendall(b"N")
                continue
            if code != PG_PROTOCOL_3:
                return
            parts = body[4:].split(b"\0")
            record.startup = {
                parts[i].decode(): parts[i + 1].decode()
                for i in range(0, len(parts) - 1, 2)
                if parts[i]
            }
            conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            kind = self._read(conn, 1, record)
            (length,) = struct.unpack("!i", self._read(conn, 4, record))
            payload = self._read(conn, length - 4, record)
            if kind == b"p":
                record.password = payload.rstrip(b"\0").decode("utf-8", "replace")
            fields = b"SFATAL\0VFATAL\0C28P01\0Mfake server: login refused\0\0"
            conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)
            return


def _mysql_packet(seq: int, payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


class FakeMySQL(_FakeServer):
    """Sends a handshake without TLS, records the response, switches to mysql_clear_password and
    records the password that comes back."""

    def _packet(self, conn: socket.socket, record: Recorded) -> tuple[int, bytes]:
        head = self._read(conn, 4, record)
        length = int.from_bytes(head[:3], "little")
        return head[3], self._read(conn, length, record)

    def handle(self, conn: socket.socket, record: Recorded) -> None:
        scramble = os.urandom(20).replace(b"\0", b"\1")
        payload = (
            b"\x0a5.7.99-fake\0"
            + struct.pack("<I", 7)
            + scramble[:8]
            + b"\0"
            + struct.pack("<H", MYSQL_CAPABILITIES & 0xFFFF)
            + bytes([33])
            + struct.pack("<H", 2)
            + struct.pack("<H", MYSQL_CAPABILITIES >> 16)
            + bytes([21])
            + b"\0" * 10
            + scramble[8:]
            + b"\0"
            + b"mysql_native_password\0"
        )
        conn.sendall(_mysql_packet(0, payload))
        first = conn.recv(4, socket.MSG_PEEK)
        if first == b"SENT":
            self._sentinel(self._read(conn, 4, record), conn, record)
            return
        seq, response = self._packet(conn, record)
        (flags,) = struct.unpack("<I", response[:4])
        record.handshake_flags = flags
        record.ssl_requested = bool(flags & MYSQL_CLIENT_SSL)
        if record.ssl_requested:
            return  # a real server would start TLS here; this one cannot
        user_end = response.index(b"\0", 32)
        record.handshake_user = response[32:user_end].decode()
        conn.sendall(_mysql_packet(seq + 1, b"\xfemysql_clear_password\0"))
        seq, password = self._packet(conn, record)
        record.password = password.rstrip(b"\0").decode("utf-8", "replace")
        error = b"\xff" + struct.pack("<H", 1045) + b"#28000fake server: access denied"
        conn.sendall(_mysql_packet(seq + 1, error))


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (None when it has none)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent (UDP connect)
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


__all__: list[Any] = ["FakeMySQL", "FakePostgres", "Recorded", "non_loopback_address"]
