"""ngx_mail_imap_module directives: client buffer, capabilities, auth methods.

Owns their parsing and defaults; the IMAP machine (_imap.pyx) builds its replies from them.
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
    set_size,
)

AUTH = ("plain", "login", "cram-md5", "external", "xoauth2", "oauthbearer")

DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "imap_client_buffer",
        MAIL | SERVER,
        TAKE1,
        set_size,
        "imap_client_buffer",
        default=PAGESIZE,
        default_doc="4k",
        syntax="size",
        module="imap",
        doc="Buffer for one client command before login.",
    ),
    Directive(
        "imap_capabilities",
        MAIL | SERVER,
        ONE_MORE,
        add_words,
        "imap_capabilities",
        default=["IMAP4", "IMAP4rev1", "UIDPLUS"],
        default_doc="IMAP4 IMAP4rev1 UIDPLUS",
        syntax="extension ...",
        module="imap",
        doc="Capabilities advertised before login (AUTH= and STARTTLS are added).",
    ),
    Directive(
        "imap_auth",
        MAIL | SERVER,
        ONE_MORE,
        set_bitmask,
        "imap_auth",
        values=AUTH,
        default=["plain"],
        default_doc="plain",
        module="imap",
        syntax="plain | login | cram-md5 | external | xoauth2 | oauthbearer ...",
        doc="Authentication methods offered (xoauth2 and oauthbearer as in freenginx).",
    ),
)
