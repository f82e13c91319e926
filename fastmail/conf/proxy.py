"""ngx_mail_proxy_module directives: the backend side (buffer, timeout, XCLIENT, PROXY header).

Owns only their parsing and defaults; the backend login and relay are _login.pyx/_relay.pyx.
`proxy_protocol` takes mainline's off|on|v2 (the PROXY header sent to the backend).
"""

from __future__ import annotations

from fastmail.conf.table import (
    FLAG,
    MAIL,
    PAGESIZE,
    SERVER,
    TAKE1,
    Directive,
    set_enum,
    set_flag,
    set_msec,
    set_size,
)

DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "proxy",
        MAIL | SERVER,
        FLAG,
        set_flag,
        "proxy",
        default=False,
        default_doc="off",
        syntax="on | off",
        module="proxy",
        doc="Parsed for compatibility; no effect, as in nginx.",
    ),
    Directive(
        "proxy_buffer",
        MAIL | SERVER,
        TAKE1,
        set_size,
        "proxy_buffer",
        default=PAGESIZE,
        default_doc="4k",
        syntax="size",
        module="proxy",
        doc="Size of each relay buffer (client to backend and back).",
    ),
    Directive(
        "proxy_timeout",
        MAIL | SERVER,
        TAKE1,
        set_msec,
        "proxy_timeout",
        default=24 * 3600 * 1000,
        default_doc="24h",
        syntax="time",
        module="proxy",
        doc="Idle timeout of a proxied session (and of the backend login dialogue).",
    ),
    Directive(
        "proxy_pass_error_message",
        MAIL | SERVER,
        FLAG,
        set_flag,
        "proxy_pass_error_message",
        default=False,
        default_doc="off",
        syntax="on | off",
        module="proxy",
        doc="Pass the backend's error reply to the client when its login fails.",
    ),
    Directive(
        "xclient",
        MAIL | SERVER,
        FLAG,
        set_flag,
        "xclient",
        default=True,
        default_doc="on",
        syntax="on | off",
        module="proxy",
        doc="Send XCLIENT with the client's address, name and login to an SMTP backend.",
    ),
    Directive(
        "proxy_smtp_auth",
        MAIL | SERVER,
        FLAG,
        set_flag,
        "proxy_smtp_auth",
        default=False,
        default_doc="off",
        syntax="on | off",
        module="proxy",
        doc="Log in to the SMTP backend with AUTH PLAIN (the auth_http user/password).",
    ),
    Directive(
        "proxy_protocol",
        MAIL | SERVER,
        TAKE1,
        set_enum,
        "proxy_protocol",
        values=("off", "on", "v2"),
        default="off",
        default_doc="off",
        syntax="off | on | v2",
        module="proxy",
        doc="Send a PROXY protocol header (v1, or v2 as in nginx 1.31) to the backend.",
    ),
    Directive(
        "proxy_pipelining",
        MAIL | SERVER,
        FLAG,
        set_flag,
        "proxy_pipelining",
        default=False,
        default_doc="off",
        syntax="on | off",
        module="proxy",
        ext=True,
        doc="Log in to the backend in fewer round trips: IMAP LOGIN as one line (LITERAL+ "
        "literals when the greeting announces LITERAL+, else quoted strings when the "
        "credentials allow, else nginx's synchronizing literals), SMTP MAIL FROM and RCPT TO "
        "pipelined when the backend announces PIPELINING. Off: nginx's exact bytes.",
    ),
)
