"""fastmail's configuration layer: nginx's config language and directive tables, typed.

Owns `load()`, the module list in nginx's merge order and the directive registry built from it.
Nothing outside fastmail/conf parses config text; everything reads the objects in model.py.
"""

from __future__ import annotations

import os
from types import ModuleType

from fastmail.conf import (
    accesslog,
    auth_http,
    foreign,
    guard,
    imap,
    mail,
    main,
    pop3,
    proxy,
    realip,
    sieve,
    smtp,
    ssl,
)
from fastmail.conf.errors import ConfigError
from fastmail.conf.model import (
    LEVELS,
    AccessLog,
    AuthHttpUrl,
    Config,
    EventsConf,
    Listen,
    ListenSocket,
    LogTarget,
    MailConf,
    MainConf,
    Resolver,
    ServerConf,
    SessionCache,
)
from fastmail.conf.parser import INCLUDE, Ctx, Loader
from fastmail.conf.table import MAIN, Directive, Registry

# nginx's merge order for the mail modules (core, ssl, pop3, imap, smtp, auth_http, proxy,
# realip: each module over every server in file order, the first failure stops), then
# fastmail's own; main.py's directives are not merged
MODULES: tuple[ModuleType, ...] = (
    mail, ssl, pop3, imap, smtp, auth_http, proxy, realip, sieve, accesslog, guard,
)  # fmt: skip


def _build_registry() -> Registry:
    reg = Registry()
    reg.add(INCLUDE)
    for mod in (main, foreign, *MODULES):
        for d in mod.DIRECTIVES:
            reg.add(d)
    return reg


REGISTRY = _build_registry()
DIRECTIVES: tuple[Directive, ...] = tuple(REGISTRY.ordered)


def _notices(ld: Loader) -> list[str]:
    return [n for n in (foreign.notice(ld),) if n]


def load(path: str, prefix: str, params: str | None = None) -> Config:
    """Parse, merge and check a config as `nginx -t` does before opening files and binding.

    `path` is used as given: the caller has already put a relative -c under the prefix (once,
    as nginx does: `-p t1/ -c t1/a.conf` opens t1/t1/a.conf). `params` is the -g string. Raises
    ConfigError; its `after_parse` attribute is True for errors nginx finds after printing
    "syntax is ok" (no events{}, worker_connections too low).
    """
    if not prefix.endswith("/"):
        prefix += "/"
    conf_prefix = os.path.dirname(path) + "/"
    ld = Loader(REGISTRY, prefix, conf_prefix)
    top = Ctx(kind=MAIN)
    try:
        if params:
            ld.parse_param(params, top)
        ld.parse_file(path, top, located=False)
    except ConfigError as e:
        e.warnings = list(ld.warnings)
        e.notices = _notices(ld)
        e.after_parse = False  # type: ignore[attr-defined]
        raise
    try:
        main_conf = main.build_main(ld, top)
        events = main.build_events(ld)
        mail_conf: MailConf | None = ld.state.get("mail_conf")
        if mail_conf is not None:
            for srv in mail_conf.servers:
                if srv.error_log is None:
                    srv.error_log = main_conf.error_log
            n = len(mail_conf.sockets)
            if events.worker_connections < n + 1:
                raise ConfigError(
                    f"{events.worker_connections} worker_connections are not enough "
                    f"for {n} listening sockets"
                )
    except ConfigError as e:
        e.warnings = list(ld.warnings)
        e.notices = _notices(ld)
        e.after_parse = True  # type: ignore[attr-defined]
        raise
    return Config(
        path=path,
        prefix=prefix,
        conf_prefix=conf_prefix,
        main=main_conf,
        events=events,
        mail=mail_conf,
        files=ld.files,
        warnings=ld.warnings,
        notices=_notices(ld),
    )


__all__ = [
    "LEVELS",
    "AccessLog",
    "AuthHttpUrl",
    "Config",
    "ConfigError",
    "DIRECTIVES",
    "EventsConf",
    "Listen",
    "ListenSocket",
    "LogTarget",
    "MailConf",
    "MainConf",
    "Resolver",
    "ServerConf",
    "SessionCache",
    "load",
]
