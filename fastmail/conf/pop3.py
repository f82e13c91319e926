"""ngx_mail_pop3_module directives: capabilities and auth methods.

Owns their parsing and defaults; the POP3 machine (_pop3.pyx) builds its replies from them.
`plain` also enables SASL LOGIN (there is no `login` keyword), as in nginx.
"""

from __future__ import annotations

from fastmail.conf.table import MAIL, ONE_MORE, SERVER, Directive, add_words, set_bitmask

AUTH = ("plain", "apop", "cram-md5", "external", "xoauth2", "oauthbearer")

DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "pop3_capabilities",
        MAIL | SERVER,
        ONE_MORE,
        add_words,
        "pop3_capabilities",
        default=["TOP", "USER", "UIDL"],
        default_doc="TOP USER UIDL",
        syntax="extension ...",
        module="pop3",
        doc="Capabilities listed by CAPA (SASL and STLS lines are added).",
    ),
    Directive(
        "pop3_auth",
        MAIL | SERVER,
        ONE_MORE,
        set_bitmask,
        "pop3_auth",
        values=AUTH,
        default=["plain"],
        default_doc="plain",
        module="pop3",
        syntax="plain | apop | cram-md5 | external | xoauth2 | oauthbearer ...",
        doc="Authentication methods offered; `plain` means USER/PASS, AUTH PLAIN and AUTH LOGIN.",
    ),
)
