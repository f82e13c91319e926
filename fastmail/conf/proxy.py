"""ngx_mail_proxy_module directives: the backend side (buffer, timeout, XCLIENT, PROXY header).

Owns only their parsing and defaults; the backend login and relay are _login.pyx,
_smtplogin.pyx and _relay.pyx.
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
    set_num,
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
        doc="Log in to the SMTP backend with AUTH PLAIN (the auth_http user/password); "
        "`proxy_smtp_auth_method` can make it AUTH LOGIN.",
    ),
    Directive(
        "proxy_smtp_auth_method",
        MAIL | SERVER,
        TAKE1,
        set_enum,
        "proxy_smtp_auth_method",
        values=("plain", "login"),
        default="plain",
        default_doc="plain",
        syntax="plain | login",
        module="proxy",
        ext=True,
        doc="The mechanism of `proxy_smtp_auth`: `login` is the AUTH LOGIN dialogue (user "
        "name and password each answering a 334), for backends that take no PLAIN "
        "(Exchange). The auth_http reply header `Auth-SMTP-Auth-Method: off|plain|login` "
        "chooses per login, over both directives (`off`: no AUTH, XCLIENT carries `LOGIN=` "
        "as nginx does); another value is an auth_http error.",
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
        "pipelined when the backend announces PIPELINING, POP3 XCLIENT (proxy_client_id) "
        "with USER, IMAP ID (proxy_client_id) with the LOGIN. Off: nginx's exact bytes.",
    ),
    Directive(
        "proxy_client_id",
        MAIL | SERVER,
        FLAG,
        set_flag,
        "proxy_client_id",
        default=False,
        default_doc="off",
        syntax="on | off",
        module="proxy",
        ext=True,
        doc="Tell the backend who the client is, in its own dialect, before the login: IMAP "
        '`ID ("x-originating-ip" ... "x-originating-port" ... "x-connected-ip" ... '
        '"x-connected-port" ...)` with the client (after realip) and the address it reached '
        "(unless the greeting's CAPABILITY list lacks ID); POP3 `XCLIENT ADDR= PORT=` when "
        "the greeting announces `[XCLIENT]`; SMTP: the client's own HELO/EHLO name instead of "
        "`server_name` when `xclient` is off, or when the backend's EHLO reply does not list "
        "XCLIENT (where nginx sends XCLIENT anyway and fails). Dovecot honours ID and XCLIENT "
        "from its `login_trusted_networks` (its log and `doveadm who` then show the client). "
        "Off: nginx's exact bytes.",
    ),
    Directive(
        "proxy_next_upstream_tries",
        MAIL | SERVER,
        TAKE1,
        set_num,
        "proxy_next_upstream_tries",
        default=1,
        default_doc="1",
        syntax="number",
        module="proxy",
        ext=True,
        doc="Backends a login may try, the first included (nginx's http meaning). When the "
        "backend auth_http named cannot be reached (connect refused or failed, no greeting "
        "within `timeout`, closed or reset before the login is through, a failed TLS "
        "handshake; not a login the backend refused), fastmail asks auth_http again with "
        "`Auth-Failed-Server: ip:port` (one line per backend that failed) and "
        "`Auth-Backend-Attempt: n` (the try this answer is for) after nginx's headers, and "
        "logs in to the backend that answer names, with a fresh `timeout`. The client sees "
        "nothing of it; when no try is left, or the new answer is a failure or names a backend "
        "that already failed, it gets the reply it would have had without. `1`: nginx's (the "
        "login fails); `0`: no limit but those.",
    ),
)
