"""The user database of the reference auth server: users with scrypt password hashes, their
backends per protocol, the protocols' default backends and the SMTP domain routes, in SQLite."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sqlite3
from dataclasses import dataclass

PROTOCOLS = ("imap", "pop3", "smtp", "sieve")  # sieve: ManageSieve (fastmail only)
DEFAULT_USER = "*"  # backends row naming the default backend of a protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,   -- scrypt$ln=14,r=8,p=1$SALT$HASH (base64)
    plain_password TEXT            -- only with --store-plain: CRAM-MD5 and APOP need it
);
CREATE TABLE IF NOT EXISTS backends (
    name TEXT NOT NULL,            -- a user name, or '*' for the protocol's default backend
    protocol TEXT NOT NULL CHECK (protocol IN ('imap', 'pop3', 'smtp', 'sieve')),
    host TEXT NOT NULL,
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    PRIMARY KEY (name, protocol)
);
CREATE TABLE IF NOT EXISTS more_backends (  -- further backends, asked for in `rank` order when
    name TEXT NOT NULL,                     -- the proxy reports one down (Auth-Failed-Server)
    protocol TEXT NOT NULL,
    rank INTEGER NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    PRIMARY KEY (name, protocol, rank)
);
CREATE TABLE IF NOT EXISTS domains (   -- smtp_auth none: route by the RCPT TO domain
    domain TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535)
);
"""


def hash_password(password: str, ln: int = 14, r: int = 8, p: int = 1) -> str:
    """scrypt with a random salt; the parameters are stored so they can be raised later."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=1 << ln, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt$ln={ln},r={r},p={p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(stored: str, password: str) -> bool:
    try:
        scheme, params, salt_b64, digest_b64 = stored.split("$")
        opts = dict(kv.split("=") for kv in params.split(","))
        ln, r, p = int(opts["ln"]), int(opts["r"]), int(opts["p"])
        salt, want = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
    except (ValueError, KeyError):
        return False
    if scheme != "scrypt":
        return False
    got = hashlib.scrypt(
        password.encode("utf-8", "surrogateescape"),
        salt=salt,
        n=1 << ln,
        r=r,
        p=p,
        dklen=len(want),
        maxmem=256 * 1024 * 1024,
    )
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class Backend:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Backend:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"backend must be HOST:PORT, not {text!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    plain_password: str | None


class UserDB:
    """Users, per-protocol backends and SMTP domain routes in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        # One thread at a time uses it, but the CLI creates it before the serving thread runs.
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.executescript(SCHEMA)
        self._allow_sieve()

    def _allow_sieve(self) -> None:
        """A database made before ManageSieve checks protocol against three names: its
        backends table is rebuilt with the current CHECK, rows kept."""
        row = self.conn.execute("SELECT sql FROM sqlite_master WHERE name = 'backends'").fetchone()
        if row is None or "'sieve'" in row[0]:
            return
        create = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS backends") :]
        create = create[: create.index(";") + 1]
        self.conn.executescript(
            "BEGIN; ALTER TABLE backends RENAME TO backends_old; "
            f"{create} INSERT INTO backends SELECT * FROM backends_old; "
            "DROP TABLE backends_old; COMMIT;"
        )

    def close(self) -> None:
        self.conn.close()

    def add_user(
        self,
        name: str,
        password: str,
        backends: dict[str, Backend | list[Backend]] | None = None,
        store_plain: bool = False,
        scrypt_ln: int = 14,
    ) -> None:
        """`backends` per protocol: one, or several in the order they are handed out (the
        next when the proxy reports the earlier ones down)."""
        if not name or name == DEFAULT_USER:
            raise ValueError(f"invalid user name {name!r}")
        with self.conn:
            self.conn.execute(
                "INSERT OR REPLACE INTO users VALUES (?, ?, ?)",
                (name, hash_password(password, ln=scrypt_ln), password if store_plain else None),
            )
            self.conn.execute("DELETE FROM backends WHERE name = ?", (name,))
            self.conn.execute("DELETE FROM more_backends WHERE name = ?", (name,))
            for proto, be in (backends or {}).items():
                self.set_backend(name, proto, be)

    def delete_user(self, name: str) -> bool:
        with self.conn:
            self.conn.execute("DELETE FROM backends WHERE name = ?", (name,))
            self.conn.execute("DELETE FROM more_backends WHERE name = ?", (name,))
            return self.conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0

    def set_backend(self, name: str, protocol: str, backend: Backend | list[Backend]) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}")
        first, *more = backend if isinstance(backend, list) else [backend]
        self.conn.execute(
            "INSERT OR REPLACE INTO backends VALUES (?, ?, ?, ?)",
            (name, protocol, first.host, first.port),
        )
        self.conn.execute(
            "DELETE FROM more_backends WHERE name = ? AND protocol = ?", (name, protocol)
        )
        for rank, be in enumerate(more, 1):
            self.conn.execute(
                "INSERT INTO more_backends VALUES (?, ?, ?, ?, ?)",
                (name, protocol, rank, be.host, be.port),
            )

    def set_default(self, protocol: str, backend: Backend | list[Backend]) -> None:
        self.set_backend(DEFAULT_USER, protocol, backend)

    def set_domain(self, domain: str, backend: Backend) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO domains VALUES (?, ?, ?)",
            (domain.lower(), backend.host, backend.port),
        )

    def user(self, name: str) -> User | None:
        row = self.conn.execute(
            "SELECT name, password_hash, plain_password FROM users WHERE name = ?", (name,)
        ).fetchone()
        return User(*row) if row else None

    def backend(self, name: str, protocol: str) -> Backend | None:
        """The user's backend for the protocol, else the protocol's default."""
        found = self.backends(name, protocol)
        return found[0] if found else None

    def backends(self, name: str, protocol: str) -> list[Backend]:
        """The user's backends for the protocol in order (else the protocol's default ones)."""
        row = self.conn.execute(
            "SELECT name, host, port FROM backends WHERE protocol = ? AND name IN (?, ?) "
            "ORDER BY name = ? LIMIT 1",
            (protocol, name, DEFAULT_USER, DEFAULT_USER),
        ).fetchone()
        if row is None:
            return []
        more = self.conn.execute(
            "SELECT host, port FROM more_backends WHERE name = ? AND protocol = ? ORDER BY rank",
            (row[0], protocol),
        ).fetchall()
        return [Backend(row[1], row[2])] + [Backend(h, p) for h, p in more]

    def domain_backend(self, domain: str) -> Backend | None:
        row = self.conn.execute(
            "SELECT host, port FROM domains WHERE domain = ?", (domain.lower(),)
        ).fetchone()
        return Backend(row[0], row[1]) if row else None

    def _own(self, name: str) -> dict[str, list[Backend]]:
        protos = self.conn.execute("SELECT protocol FROM backends WHERE name = ?", (name,))
        return {proto: self.backends(name, proto) for (proto,) in protos.fetchall()}

    def users(self) -> list[tuple[str, bool, dict[str, list[Backend]]]]:
        rows = self.conn.execute(
            "SELECT name, plain_password IS NOT NULL FROM users ORDER BY name"
        ).fetchall()
        return [(name, bool(plain), self._own(name)) for name, plain in rows]

    def defaults(self) -> dict[str, list[Backend]]:
        return self._own(DEFAULT_USER)

    def domains(self) -> dict[str, Backend]:
        return {d: Backend(h, p) for d, h, p in self.conn.execute("SELECT * FROM domains")}
