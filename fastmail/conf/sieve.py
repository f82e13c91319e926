"""ManageSieve directives (beyond nginx, which has no ManageSieve): client buffer, the SIEVE
extensions announced, auth methods.

Owns their parsing and defaults; the ManageSieve machine (_sieve.pyx) builds its capability
lines from them.
"""

from __future__ import annotations

from fastmail._sieve import DEFAULT_EXTENSIONS
from fastmail.conf.table import (
    MAIL,
    ONE_MORE,
    PAGESIZE,
    SERVER,
    TAKE1,
    Directive,
    add_words,
    set_bitmask,
    set_size,
)

AUTH = ("plain", "login", "external", "xoauth2", "oauthbearer")

DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "sieve_client_buffer",
        MAIL | SERVER,
        TAKE1,
        set_size,
        "sieve_client_buffer",
        default=PAGESIZE,
        default_doc="4k",
        syntax="size",
        module="sieve",
        ext=True,
        doc="Buffer for one client command before login, its literals included.",
    ),
    Directive(
        "sieve_capabilities",
        MAIL | SERVER,
        ONE_MORE,
        add_words,
        "sieve_capabilities",
        default=list(DEFAULT_EXTENSIONS),
        default_doc="what Dovecot 2.3 announces: " + " ".join(DEFAULT_EXTENSIONS),
        syntax="extension ...",
        module="sieve",
        ext=True,
        doc='The Sieve extensions announced in the "SIEVE" capability before login (with '
        'enotify, "NOTIFY" "mailto" is announced too); list what the backend supports. '
        "IMPLEMENTATION, SASL, STARTTLS and VERSION are added.",
    ),
    Directive(
        "sieve_auth",
        MAIL | SERVER,
        ONE_MORE,
        set_bitmask,
        "sieve_auth",
        values=AUTH,
        default=["plain"],
        default_doc="plain",
        module="sieve",
        ext=True,
        syntax="plain | login | external | xoauth2 | oauthbearer ...",
        doc="SASL mechanisms offered for AUTHENTICATE.",
    ),
)
