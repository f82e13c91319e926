"""ngx_mail_smtp_module directives: client buffer, greeting delay, capabilities, auth methods.

Owns their parsing and defaults; the SMTP machine (_smtp.pyx) builds its replies from them.
"""

from __future__ import annotations

from fastmail.conf.table import (
    MAIL,
    ONE_MORE,
    PAGESIZE,
    SERVER,
    TAKE1,
    Directive,
    add_words,
    set_bitmask,
    set_msec,
    set_size,
)

AUTH = ("plain", "login", "cram-md5", "external", "xoauth2", "oauthbearer", "none")

DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "smtp_client_buffer",
        MAIL | SERVER,
        TAKE1,
        set_size,
        "smtp_client_buffer",
        default=PAGESIZE,
        default_doc="4k",
        syntax="size",
        module="smtp",
        doc="Buffer for client input before the backend is reached.",
    ),
    Directive(
        "smtp_greeting_delay",
        MAIL | SERVER,
        TAKE1,
        set_msec,
        "smtp_greeting_delay",
        default=0,
        default_doc="0",
        syntax="time",
        module="smtp",
        doc="Wait this long before the greeting; a client that talks first is rejected.",
    ),
    Directive(
        "smtp_capabilities",
        MAIL | SERVER,
        ONE_MORE,
        add_words,
        "smtp_capabilities",
        default=[],
        default_doc="—",
        syntax="extension ...",
        module="smtp",
        doc='EHLO extensions advertised, one per line (quote "SIZE 10485760").',
    ),
    Directive(
        "smtp_auth",
        MAIL | SERVER,
        ONE_MORE,
        set_bitmask,
        "smtp_auth",
        values=AUTH,
        default=["plain", "login"],
        default_doc="plain login",
        module="smtp",
        syntax="plain | login | cram-md5 | external | xoauth2 | oauthbearer | none ...",
        doc="Authentication methods advertised; `none` lets clients relay without AUTH.",
    ),
)
