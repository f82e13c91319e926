"""Fuzz target: the auth_http answer, read and interpreted two ways (fastmail/_authproto.pyx's C
reader and interpret_headers, against auth_http.ResponseReader on httptools and interpret),
and the auth_http request both ways (RequestTemplate against build_request).

Input: byte 0 chooses; with its top bit clear the rest is an auth server's answer, else the
rest is AuthRequest fields (user, password, HELO, MAIL FROM, RCPT TO, cut by common.SEP).
Invariants, on every input:
- no exception escapes from either path;
- the C reader and ResponseReader agree on the answer read whole (done or not, the error,
  the header list, keep-alive or drain) and the AuthResults agree field by field for every
  kind of login, with and without host names allowed (support/auth_answers.check_answer);
- read in two pieces at every offset and one byte at a time, the C reader reads what it reads
  whole (check_splits);
- the two requests are the same bytes; with user, password and SMTP fields free of CR, LF and
  NUL (what the client machines hand over, checked by their targets) every header line is
  whole: `Name: value` with no CR, LF or NUL; user and password are escaped whatever they hold.
"""

from __future__ import annotations

from fastmail._core import AuthRequest, has_ctl
from support.auth_answers import check_answer, check_splits, read_split, read_whole

from . import common

PROTOCOLS = (b"imap", b"pop3", b"smtp", b"sieve")
METHODS = (b"plain", b"login", b"apop", b"cram-md5", b"external", b"none", b"xoauth2")
SALT = b"<1896.697170952@mail.example.com>\r\n"


def answer(data: bytes) -> None:
    check_answer(data)
    check_splits(data)
    whole = read_whole(data)[:3]
    common.check(read_split([data[i : i + 1] for i in range(len(data))])[:3] == whole, "bytewise")


def request(knob: int, data: bytes) -> None:
    f = data.split(common.SEP) + [b""] * 5
    auth = AuthRequest(PROTOCOLS[knob & 3], METHODS[(knob >> 2) % len(METHODS)], f[0], f[1])
    if knob & 0x40:
        auth.salt = SALT
    auth.smtp_helo, auth.smtp_from, auth.smtp_to = f[2], f[3], f[4]
    host = b"client.example.org" if auth.protocol == b"smtp" else None
    if any(has_ctl(x) for x in f[2:5]):
        # nginx copies these raw; the machines never hand such bytes over (their targets
        # check it): here only the two builders must agree
        auth.smtp_helo = auth.smtp_helo.replace(b"\r", b"").replace(b"\n", b"")
        auth.smtp_helo = auth.smtp_helo.replace(b"\0", b"")
        auth.smtp_from = auth.smtp_to = b""
    common.check_request(auth, host)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 0x80:
        request(data[0], data[1:])
    else:
        answer(data[1:])


def seeds() -> list[bytes]:
    from unit.test_auth_http import READ_CASES

    from support.auth_answers import AUTHS  # noqa: F401  (the cases' module is importable)

    out = [b"\x00" + a for a in READ_CASES]
    for sent in common.transcripts(
        ["unit/test_auth_proto.py", "unit/test_auth_http.py", "unit/test_auth_client.py"],
        frozenset(("feed", "read_whole", "check_answer", "parse_response", "sendall", "send")),
    ):
        out += [b"\x00" + s for s in sent if s.startswith(b"HTTP/")]
    out.append(b"\x80alice\xfe\xfds3cret%\xfe\xfdclient.example.org\xfe\xfd<a@b>\xfe\xfd<c@d>")
    out.append(b"\xc9us er\xfe\xfd\x00\x01\xff")
    return out
