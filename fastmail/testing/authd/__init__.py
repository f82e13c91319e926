"""The reference auth_http server: which backend a mail login goes to, and whether it may.

Speaks the auth_http protocol of nginx's mail proxy (and fastmail's), over HTTP/1.0 or HTTP/1.1
keep-alive, with users, password hashes (hashlib.scrypt) and backends in SQLite. It is the
example to copy when writing your own auth service, and the server the tests, the demo and
bench/ use; tests add rules (forced WAIT, slow or garbage answers) and read `requests`, the log
of every request received. It must not import the proxy: it has to work in front of nginx too.
Its parts: users.py (the SQLite database and the password hashes), messages.py (a request, an
answer, the test rules), server.py (the decision and the HTTP connections), cli.py.

    python -m fastmail.testing.authd --db users.sqlite adduser alice --password secret \\
        --imap 127.0.0.1:1143 --pop3 127.0.0.1:1110 --smtp 127.0.0.1:1025 \\
        --sieve 127.0.0.1:4190
    python -m fastmail.testing.authd --db users.sqlite --listen 127.0.0.1:9000
"""

from fastmail.testing.authd.cli import main, serve
from fastmail.testing.authd.messages import (
    AuthQuery,
    Reply,
    Rule,
    load_rules,
    once,
    percent_decode,
    rule_from_json,
)
from fastmail.testing.authd.server import FAIL_TEXT, TEMP_TEXT, AuthServer, rcpt_domain
from fastmail.testing.authd.users import (
    DEFAULT_USER,
    PROTOCOLS,
    SCHEMA,
    Backend,
    User,
    UserDB,
    hash_password,
    verify_password,
)

__all__ = [
    "DEFAULT_USER",
    "FAIL_TEXT",
    "PROTOCOLS",
    "SCHEMA",
    "TEMP_TEXT",
    "AuthQuery",
    "AuthServer",
    "Backend",
    "Reply",
    "Rule",
    "User",
    "UserDB",
    "hash_password",
    "load_rules",
    "main",
    "once",
    "percent_decode",
    "rcpt_domain",
    "rule_from_json",
    "serve",
    "verify_password",
]
