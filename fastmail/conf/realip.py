"""ngx_mail_realip_module: set_real_ip_from (trusted senders of the PROXY protocol header).

Owns parsing addresses/CIDRs/hostnames into CIDR strings; the address replacement itself is in
server.py. A server's list replaces mail{}'s list.
"""

from __future__ import annotations

import ipaddress
import socket

from fastmail.conf.mail import resolve_host
from fastmail.conf.parser import Ctx, Loader
from fastmail.conf.table import MAIL, SERVER, TAKE1, Directive


def set_real_ip_from(ld: Loader, ctx: Ctx, d: Directive, args: list[str]) -> None:
    v = args[0]
    out: list[str] = ctx.values.setdefault("set_real_ip_from", [])
    if v == "unix:":
        out.append("unix:")
        return
    try:
        net = ipaddress.ip_network(v, strict=False)
    except ValueError:
        net = None
    if net is not None and "/" in v and ":" not in v and v.count(".") != 3:
        net = None  # nginx takes dotted quads only
    if net is not None:
        if "/" in v and net.network_address != ipaddress.ip_interface(v).ip:
            ld.warn(f"low address bits of {v} are meaningless")
        out.append(str(net))
        return
    try:
        addrs = resolve_host(v)
    except ValueError as e:
        raise ld.error(f'{e} in set_real_ip_from "{v}"') from None
    for fam, a in addrs:
        out.append(f"{a}/{32 if fam == socket.AF_INET else 128}")


DIRECTIVES: tuple[Directive, ...] = (
    Directive(
        "set_real_ip_from",
        MAIL | SERVER,
        TAKE1,
        set_real_ip_from,
        "set_real_ip_from",
        default=[],
        syntax="address | CIDR | unix:",
        module="realip",
        doc="Trusted addresses whose PROXY protocol header sets the client address.",
    ),
)
