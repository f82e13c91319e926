"""TLS for sessions: what nginx's mail ssl module does that Python's ssl module cannot say.

Owns the OpenSSL calls Python's ssl lacks (through ctypes on the libssl Python itself uses):
nginx's accept-any verify callback (the verdict becomes a protocol reply, not a failed
handshake), the ALPN select callback that rejects a foreign protocol (1.21.4+), session cache,
ticket key, verify depth, client CA list, ssl_conf_command; then the server-side TLS start on a
uvloop transport, the client-certificate check and replies, the Auth-SSL-* values, SNI choice
among server{} blocks, and the contexts and STARTTLS dialogue for TLS to backends.
Must not parse config text (conf/ssl.py) nor drive a session (session.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import ssl
from collections.abc import Callable
from typing import Any

# uvloop's stubs leave out its (Cython) SSLProtocol class
from uvloop.loop import SSLProtocol as _UvSSLProtocol  # type: ignore[attr-defined]

# --- OpenSSL through ctypes ------------------------------------------------------------------

_c = ctypes
_P = _c.c_void_p


def _load(name: str, fallback: str) -> Any:
    for candidate in (name, ctypes.util.find_library(fallback)):
        if candidate:
            try:
                return _c.CDLL(candidate)
            except OSError:
                pass
    return None


# Python links _ssl against libssl.so.3 here; the same library is already in the process.
_ssl_lib = _load("libssl.so.3", "ssl")
_crypto = _load("libcrypto.so.3", "crypto")

_VERIFY_CB_T = _c.CFUNCTYPE(_c.c_int, _c.c_int, _P)
_ALPN_CB_T = _c.CFUNCTYPE(_c.c_int, _P, _c.POINTER(_P), _c.POINTER(_c.c_ubyte), _P, _c.c_uint, _P)


def _accept_any(ok: int, store: int) -> int:
    # ngx_ssl_verify_callback: the handshake never fails on the certificate; the session
    # checks SSL_get_verify_result afterwards and answers in its protocol
    return 1


_VERIFY_CB = _VERIFY_CB_T(_accept_any)
_ALPN_NAMES = (b"", b"imap", b"pop3", b"smtp", b"managesieve")  # IANA's ALPN ids
_ALPN_INDEX = {"imap": 1, "pop3": 2, "smtp": 3, "sieve": 4}
SSL_TLSEXT_ERR_OK, SSL_TLSEXT_ERR_ALERT_FATAL = 0, 2


def _alpn_select(ssl_p: int, out: Any, outlen: Any, inp: int, inlen: int, arg: int) -> int:
    """ngx_mail_ssl_alpn_select: the server's one protocol name anywhere in the client's list,
    else a fatal no_application_protocol alert (the ALPACA fix of nginx 1.21.4)."""
    try:
        want = _ALPN_NAMES[arg or 0]
        data = _c.string_at(inp, inlen)
        i = 0
        while i < inlen:
            n = data[i]
            if data[i + 1 : i + 1 + n] == want:
                out[0] = inp + i + 1
                outlen[0] = n
                return SSL_TLSEXT_ERR_OK
            i += 1 + n
    except Exception:  # noqa: BLE001 - never raise through OpenSSL
        pass
    return SSL_TLSEXT_ERR_ALERT_FATAL


_ALPN_CB = _ALPN_CB_T(_alpn_select)


def _fn(lib: Any, name: str, res: Any, *args: Any) -> Any:
    f = getattr(lib, name)
    f.restype = res
    f.argtypes = list(args)
    return f


class _Ossl:
    """The bound functions; `ok` is False when the library or the object layout is not as
    expected (then the features that need it are refused at config time)."""

    ok = False

    def __init__(self) -> None:
        if _ssl_lib is None or _crypto is None:
            return
        s, cr = _ssl_lib, _crypto
        i, L, u = _c.c_int, _c.c_long, _c.c_ulong
        try:
            self.ctx_set_verify = _fn(s, "SSL_CTX_set_verify", None, _P, i, _VERIFY_CB_T)
            self.set_verify = _fn(s, "SSL_set_verify", None, _P, i, _VERIFY_CB_T)
            self.ctx_get_verify_mode = _fn(s, "SSL_CTX_get_verify_mode", i, _P)
            self.ctx_get_verify_depth = _fn(s, "SSL_CTX_get_verify_depth", i, _P)
            self.ctx_set_verify_depth = _fn(s, "SSL_CTX_set_verify_depth", None, _P, i)
            self.set_verify_depth = _fn(s, "SSL_set_verify_depth", None, _P, i)
            self.ctx_set_alpn_cb = _fn(s, "SSL_CTX_set_alpn_select_cb", None, _P, _ALPN_CB_T, _P)
            self.get_verify_result = _fn(s, "SSL_get_verify_result", L, _P)
            self.get_ssl_ctx = _fn(s, "SSL_get_SSL_CTX", _P, _P)
            self.ctx_ctrl = _fn(s, "SSL_CTX_ctrl", L, _P, i, L, _P)
            self.ctx_set_timeout = _fn(s, "SSL_CTX_set_timeout", L, _P, L)
            self.ctx_set_sid_ctx = _fn(
                s, "SSL_CTX_set_session_id_context", i, _P, _c.c_char_p, _c.c_uint
            )
            self.load_client_ca = _fn(s, "SSL_load_client_CA_file", _P, _c.c_char_p)
            self.ctx_set_client_ca = _fn(s, "SSL_CTX_set_client_CA_list", None, _P, _P)
            self.conf_new = _fn(s, "SSL_CONF_CTX_new", _P)
            self.conf_flags = _fn(s, "SSL_CONF_CTX_set_flags", _c.c_uint, _P, _c.c_uint)
            self.conf_set_ctx = _fn(s, "SSL_CONF_CTX_set_ssl_ctx", None, _P, _P)
            self.conf_cmd = _fn(s, "SSL_CONF_cmd", i, _P, _c.c_char_p, _c.c_char_p)
            self.conf_type = _fn(s, "SSL_CONF_cmd_value_type", i, _P, _c.c_char_p)
            self.conf_finish = _fn(s, "SSL_CONF_CTX_finish", i, _P)
            self.conf_free = _fn(s, "SSL_CONF_CTX_free", None, _P)
            self.err_string = _fn(cr, "X509_verify_cert_error_string", _c.c_char_p, L)
            _pp = _c.POINTER(_c.c_char_p)
            self.err_get_all = _fn(
                cr, "ERR_get_error_all", u, _pp, _c.POINTER(i), _pp, _pp, _c.POINTER(i)
            )
            self.err_text = _fn(cr, "ERR_error_string_n", None, u, _c.c_char_p, _c.c_size_t)
            self.d2i_x509 = _fn(cr, "d2i_X509", _P, _P, _c.POINTER(_c.c_char_p), L)
            self.x509_free = _fn(cr, "X509_free", None, _P)
            self.subject = _fn(cr, "X509_get_subject_name", _P, _P)
            self.issuer = _fn(cr, "X509_get_issuer_name", _P, _P)
            self.name_print = _fn(cr, "X509_NAME_print_ex", i, _P, _P, i, u)
            self.bio_s_mem = _fn(cr, "BIO_s_mem", _P)
            self.bio_new = _fn(cr, "BIO_new", _P, _P)
            self.bio_ctrl = _fn(cr, "BIO_ctrl", L, _P, i, L, _P)
            self.bio_free = _fn(cr, "BIO_free", i, _P)
        except AttributeError:
            return
        # the struct layouts read below (PySSLContext.ctx, PySSLSocket.ssl) are checked once
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
        try:
            self.ok = bool(ctx_ptr(ctx)) and self.get_ssl_ctx(ssl_ptr(obj)) == ctx_ptr(ctx)
        except (ValueError, OSError):
            self.ok = False

    def errors(self) -> str:
        """The error queue as ngx_ssl_error prints it: each error with `:data` when it has text
        (the file name of a failed fopen(), the SSL_CONF command and value)."""
        texts = []
        buf = _c.create_string_buffer(256)
        data, flags = _c.c_char_p(), _c.c_int()
        while e := self.err_get_all(None, None, None, _c.byref(data), _c.byref(flags)):
            self.err_text(e, buf, 256)
            text = buf.value.decode("latin-1")
            if data.value and flags.value & 0x02:  # ERR_TXT_STRING
                text += ":" + data.value.decode("latin-1")
            texts.append(text)
        return " ".join(texts)


def ctx_ptr(ctx: ssl.SSLContext) -> int:
    """SSL_CTX* of a context (PySSLContext: PyObject_HEAD, then SSL_CTX *ctx)."""
    return _P.from_address(id(ctx) + 16).value or 0


def ssl_ptr(obj: Any) -> int:
    """SSL* of an SSLObject (PySSLSocket: PyObject_HEAD, PyObject *Socket, then SSL *ssl)."""
    inner = getattr(obj, "_sslobj", obj)
    return _P.from_address(id(inner) + 24).value or 0


OSSL = _Ossl()


# --- server contexts (called by conf/ssl.py once per server) --------------------------------

SSL_CTRL_SET_SESS_CACHE_SIZE, SSL_CTRL_SET_SESS_CACHE_MODE = 42, 44
SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
SESS_CACHE_OFF, SESS_CACHE_SERVER, SESS_CACHE_NO_INTERNAL = 0, 2, 0x300
SSL_VERIFY_PEER = 1
SESSION_BYTES = 256  # nginx: one megabyte of shared cache holds about 4000 sessions


class TlsConfigError(Exception):
    """A TLS setting OpenSSL refused; conf/ssl.py turns it into a ConfigError."""


def configure_server(
    ctx: ssl.SSLContext,
    *,
    protocol: str,
    verify: str,
    verify_depth: int,
    client_ca: str | None,
    cache_mode: str,
    cache_builtin: int | None,
    cache_shared_size: int,
    session_timeout: int,
    ticket_key: bytes | None,
    sid: bytes,
    conf_commands: list[tuple[str, str]],
    conf_prefix: str = "",
) -> None:
    """Applies what Python's SSLContext cannot: see the module docstring. A relative file or
    directory in an ssl_conf_command is under `conf_prefix`, as nginx resolves it."""
    if not OSSL.ok:
        if conf_commands:
            raise TlsConfigError('"ssl_conf_command" directive is not supported on this platform')
        return
    p = ctx_ptr(ctx)
    OSSL.ctx_set_alpn_cb(p, _ALPN_CB, _ALPN_INDEX.get(protocol, 0))
    if verify != "off":
        OSSL.ctx_set_verify(p, SSL_VERIFY_PEER, _VERIFY_CB)
        OSSL.ctx_set_verify_depth(p, verify_depth)
        if client_ca:
            names = OSSL.load_client_ca(client_ca.encode())
            if names:
                OSSL.ctx_set_client_ca(p, names)  # takes ownership
    # a session resumes only in the server{} that made it (CVE-2014-3616)
    OSSL.ctx_set_sid_ctx(p, sid[:32], min(len(sid), 32))
    if cache_mode == "off":
        OSSL.ctx_ctrl(p, SSL_CTRL_SET_SESS_CACHE_MODE, SESS_CACHE_OFF, None)
    elif cache_mode == "none":
        OSSL.ctx_ctrl(
            p, SSL_CTRL_SET_SESS_CACHE_MODE, SESS_CACHE_SERVER | SESS_CACHE_NO_INTERNAL, None
        )
        OSSL.ctx_ctrl(p, SSL_CTRL_SET_SESS_CACHE_SIZE, 1, None)
    else:
        # shared:NAME:SIZE becomes a per-worker cache of that many sessions: Python cannot
        # share OpenSSL's cache between processes (tickets resume across workers instead)
        size = cache_builtin if cache_builtin and cache_builtin > 0 else 0
        if cache_shared_size:
            size = max(size, cache_shared_size // SESSION_BYTES)
        OSSL.ctx_ctrl(p, SSL_CTRL_SET_SESS_CACHE_MODE, SESS_CACHE_SERVER, None)
        if size:
            OSSL.ctx_ctrl(p, SSL_CTRL_SET_SESS_CACHE_SIZE, size, None)
    OSSL.ctx_set_timeout(p, session_timeout)
    if ticket_key is not None:
        keys = _c.create_string_buffer(ticket_key_80(ticket_key), 80)
        if OSSL.ctx_ctrl(p, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 80, keys) != 1:
            raise TlsConfigError(f"SSL_CTX_set_tlsext_ticket_keys() failed (SSL: {OSSL.errors()})")
    if conf_commands:
        cctx = OSSL.conf_new()
        try:
            OSSL.conf_flags(cctx, 0x2 | 0x8 | 0x20 | 0x10)  # FILE|SERVER|CERTIFICATE|SHOW_ERRORS
            OSSL.conf_set_ctx(cctx, p)
            for name, value in conf_commands:
                if OSSL.conf_type(cctx, name.encode()) in (2, 3) and not value.startswith("/"):
                    value = conf_prefix + value  # SSL_CONF_TYPE_FILE, SSL_CONF_TYPE_DIR
                if OSSL.conf_cmd(cctx, name.encode(), value.encode()) <= 0:
                    raise TlsConfigError(
                        f'SSL_CONF_cmd("{name}", "{value}") failed (SSL: {OSSL.errors()})'
                    )
            if OSSL.conf_finish(cctx) != 1:
                raise TlsConfigError(f"SSL_CONF_finish() failed (SSL: {OSSL.errors()})")
        finally:
            OSSL.conf_free(cctx)


def ticket_key_80(key: bytes) -> bytes:
    """An nginx ticket key file as OpenSSL's 80-byte name|hmac|aes block. An 80-byte file is
    that layout already; a 48-byte one (name, 16-byte HMAC and AES keys: AES-128 in nginx) is
    widened with SHA-256, so every worker derives the same keys (tickets are not exchangeable
    with nginx for 48-byte files)."""
    if len(key) == 80:
        return key
    name, hmac_key, aes_key = key[:16], key[16:32], key[32:48]
    return (
        name
        + hashlib.sha256(b"fastmail hmac" + hmac_key).digest()
        + hashlib.sha256(b"fastmail aes" + aes_key).digest()
    )


# --- SNI (beyond nginx mail: nginx's http server_name rules for exact and wildcard names) ----


class SniMap:
    """Server names of the server{} blocks sharing one TLS address -> their contexts."""

    __slots__ = ("exact", "wild", "owner")

    def __init__(self) -> None:
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wild: list[tuple[str, ssl.SSLContext]] = []  # ".example.com" suffixes
        self.owner: dict[int, Any] = {}  # id(context) -> whatever the caller keys by

    def add(self, names: list[str], ctx: ssl.SSLContext, owner: Any) -> None:
        self.owner.setdefault(id(ctx), owner)
        for n in names:
            n = n.lower()
            if n.startswith("*."):
                self.wild.append((n[1:], ctx))
            elif n.startswith("."):
                self.exact.setdefault(n[1:], ctx)
                self.wild.append((n, ctx))
            elif n and not n.startswith("~"):
                self.exact.setdefault(n, ctx)

    def find(self, name: str) -> ssl.SSLContext | None:
        name = name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is not None:
            return ctx
        best: tuple[int, ssl.SSLContext] | None = None
        for suffix, c in self.wild:
            if name.endswith(suffix) and (best is None or len(suffix) > best[0]):
                best = (len(suffix), c)
        return best[1] if best else None


def install_sni(default: ssl.SSLContext, sni: SniMap) -> None:
    """Chooses the context (certificates, verify settings) by the client's SNI name; unknown
    or missing names keep the default server's."""

    def choose(obj: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        if not name:
            return None
        ctx = sni.find(name)
        if ctx is None or ctx is obj.context:
            return None
        obj.context = ctx
        if OSSL.ok:
            # SSL_set_SSL_CTX keeps the first context's verify settings; nginx's servername
            # handler copies them, so do we
            s, p = ssl_ptr(obj), ctx_ptr(ctx)
            mode = OSSL.ctx_get_verify_mode(p)
            OSSL.set_verify(s, mode, _VERIFY_CB if mode else _VERIFY_CB_T(0))
            OSSL.set_verify_depth(s, OSSL.ctx_get_verify_depth(p))
        return None

    default.sni_callback = choose


# --- the handshake on a uvloop transport ----------------------------------------------------


def start_server_tls(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    protocol: asyncio.Protocol,
    ctx: ssl.SSLContext,
    early: bytes,
    on_done: Callable[[asyncio.Future[None]], None],
) -> asyncio.Transport:
    """loop.start_tls without its scheduling gap: the handshake starts now, `early` bytes
    (read with or after a PROXY header) are its first input, and `on_done(waiter)` runs when
    it ends. uvloop ignores pause_reading() inside connection_made, so bytes can come before
    a start_tls task would run; this takes them in order. The deadline is the caller's."""
    waiter: asyncio.Future[None] = loop.create_future()
    sp = _UvSSLProtocol(
        loop,
        protocol,
        ctx,
        waiter,
        True,
        None,
        call_connection_made=False,
        ssl_handshake_timeout=86400.0,
        ssl_shutdown_timeout=5.0,
    )
    transport.pause_reading()
    transport.set_protocol(sp)
    sp.connection_made(transport)
    app: asyncio.Transport = sp._get_app_transport(None)
    waiter.add_done_callback(on_done)
    view = memoryview(early)
    while view and not waiter.done():
        buf = sp.get_buffer(len(view))
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        sp.buffer_updated(n)
        view = view[n:]
    transport.resume_reading()
    return app


def handshake_error_text(exc: BaseException) -> str:
    """nginx's log text for a failed handshake (without the ` while ...` part)."""
    if isinstance(exc, ssl.SSLError):
        lib = (exc.reason or "").lower().replace("_", " ")
        return f"SSL_do_handshake() failed (SSL: {lib})"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, EOFError)):
        return "peer closed connection in SSL handshake"
    return f"SSL_do_handshake() failed ({exc})"


# --- client certificates (ngx_mail_verify_cert) and Auth-SSL-* -------------------------------

X509_V_OK = 0
# ngx_ssl_verify_error_optional: what optional_no_ca forgives
_OPTIONAL_ERRORS = frozenset((18, 19, 2, 20, 21, 27))

CERT_REPLIES = {
    "imap": (b"* BYE SSL certificate error\r\n", b"* BYE No required SSL certificate\r\n"),
    "pop3": (b"-ERR SSL certificate error\r\n", b"-ERR No required SSL certificate\r\n"),
    "smtp": (b"421 4.7.1 SSL certificate error\r\n", b"421 4.7.1 No required SSL certificate\r\n"),
    "sieve": (b'BYE "SSL certificate error"\r\n', b'BYE "No required SSL certificate"\r\n'),
}


def verify_result(obj: ssl.SSLObject) -> int:
    return int(OSSL.get_verify_result(ssl_ptr(obj))) if OSSL.ok else X509_V_OK


def verify_error_string(rc: int) -> str:
    if not OSSL.ok:
        return str(rc)
    return (OSSL.err_string(rc) or b"").decode("latin-1")


def check_client_cert(obj: ssl.SSLObject, mode: str, protocol: str) -> tuple[bytes, str] | None:
    """None to proceed, else (reply, info log text) as ngx_mail_verify_cert answers."""
    if mode == "off":
        return None
    rc = verify_result(obj)
    if rc != X509_V_OK and (mode != "optional_no_ca" or rc not in _OPTIONAL_ERRORS):
        text = f"client SSL certificate verify error: ({rc}:{verify_error_string(rc)})"
        return CERT_REPLIES[protocol][0], text
    if mode == "on" and obj.getpeercert(binary_form=True) is None:
        return CERT_REPLIES[protocol][1], "client sent no required SSL certificate"
    return None


_XN_FLAG_RFC2253 = 0x317 | (1 << 16) | (1 << 20) | (1 << 24)


def _dn(der: bytes, which: str) -> bytes:
    if not OSSL.ok:
        return b""
    buf = _c.c_char_p(der)
    x = OSSL.d2i_x509(None, _c.byref(buf), len(der))
    if not x:
        return b""
    bio = OSSL.bio_new(OSSL.bio_s_mem())
    try:
        name = OSSL.subject(x) if which == "subject" else OSSL.issuer(x)
        OSSL.name_print(bio, name, 0, _XN_FLAG_RFC2253)
        ptr = _c.c_char_p()
        n = OSSL.bio_ctrl(bio, 3, 0, _c.cast(_c.byref(ptr), _P))  # BIO_get_mem_data
        return _c.string_at(_c.cast(ptr, _P).value or 0, n) if n > 0 else b""
    finally:
        OSSL.bio_free(bio)
        OSSL.x509_free(x)


def _der_item(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `pos`, inside `end`."""
    if pos + 2 > end:
        raise ValueError("truncated")
    tag, n = der[pos], der[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if not 0 < k <= 4 or pos + k > end:
            raise ValueError("bad length")
        n = int.from_bytes(der[pos : pos + k], "big")
        pos += k
    if pos + n > end:
        raise ValueError("truncated")
    return tag, pos, pos + n


def cert_serial(der: bytes) -> bytes:
    """Auth-SSL-Serial as nginx writes it (i2a_ASN1_INTEGER of X509_get_serialNumber): the
    serial's magnitude in upper-case hex, `-` first when negative, `00` for zero; b"" when
    `der` is not a certificate. OpenSSL breaks the hex with a backslash-newline every 35
    bytes, which would split nginx's header; no legal serial is that long (RFC 5280: 20
    octets), and fastmail leaves the break out. Read straight from the DER (Certificate ->
    tbsCertificate -> optional [0] version -> INTEGER) so that no X.509 library is needed."""
    try:
        tag, start, end = _der_item(der, 0, len(der))
        if tag != 0x30:
            return b""
        tag, start, end = _der_item(der, start, end)  # tbsCertificate
        if tag != 0x30:
            return b""
        tag, start, stop = _der_item(der, start, end)
        if tag == 0xA0:  # [0] EXPLICIT version
            tag, start, stop = _der_item(der, stop, end)
    except ValueError:
        return b""
    if tag != 0x02 or start == stop:
        return b""
    n = int.from_bytes(der[start:stop], "big", signed=True)
    m = abs(n)
    digits = m.to_bytes(max(1, (m.bit_length() + 7) // 8), "big").hex().upper()
    return ("-" + digits if n < 0 else digits).encode()


def ssl_info(obj: ssl.SSLObject, verify: str) -> dict[str, bytes]:
    """The values auth_http.build_request turns into Auth-SSL-* lines (auth_http.md §3.2)."""
    info: dict[str, bytes] = {}
    info["protocol"] = (obj.version() or "").encode()
    cipher = obj.cipher()
    info["cipher"] = cipher[0].encode() if cipher else b""
    if verify == "off":
        return info
    der = obj.getpeercert(binary_form=True)
    if der is None:
        info["verify"] = b"NONE"
        return info
    rc = verify_result(obj)
    info["verify"] = (
        b"SUCCESS" if rc == X509_V_OK else b"FAILED:" + verify_error_string(rc).encode()
    )
    info["subject"] = _dn(der, "subject")
    info["issuer"] = _dn(der, "issuer")
    info["serial"] = cert_serial(der)
    info["fingerprint"] = hashlib.sha1(der).hexdigest().encode()  # noqa: S324 - nginx's choice
    info["cert"] = ssl.DER_cert_to_PEM_cert(der).encode()
    return info


# --- TLS to backends (beyond nginx) ----------------------------------------------------------

BACKEND_MODES = ("off", "on", "starttls")
_backend_contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}


def backend_context(verify: bool, cafile: str | None) -> ssl.SSLContext:
    """One client context per (verify, CA file), shared by a worker's sessions."""
    key = (verify, cafile)
    ctx = _backend_contexts.get(key)
    if ctx is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            if cafile:
                ctx.load_verify_locations(cafile=cafile)
            else:
                ctx.load_default_certs()
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _backend_contexts[key] = ctx
    return ctx


def backend_starttls_done(protocol: str, stage: int, buf: bytes) -> tuple[int, int, bytes]:
    """The backend STARTTLS dialogue over the buffered reply bytes. Returns (status, used,
    next command): status 0 = need more bytes, 1 = this stage done (send the command; stage
    advances), 2 = TLS may start, -1 = refused. Stage 0 reads the greeting; SMTP's stage 1
    reads the EHLO reply."""
    end = _reply_end(protocol, stage, buf)
    if end < 0:
        return 0, 0, b""
    reply = buf[:end]
    last = reply[reply.rstrip(b"\r\n").rfind(b"\n") + 1 :]
    if stage == 0:
        ok = last.startswith({"imap": b"* OK", "pop3": b"+OK", "smtp": b"220"}[protocol])
        if not ok:
            return -1, end, b""
        if protocol == "smtp":
            return 1, end, b"EHLO fastmail\r\n"
        return 1, end, b"S0 STARTTLS\r\n" if protocol == "imap" else b"STLS\r\n"
    if protocol == "smtp" and stage == 1:
        if not last.startswith(b"250"):
            return -1, end, b""
        return 1, end, b"STARTTLS\r\n"
    ok = last.startswith({"imap": b"S0 OK", "pop3": b"+OK", "smtp": b"220"}[protocol])
    return (2 if ok else -1), end, b""


def _reply_end(protocol: str, stage: int, buf: bytes) -> int:
    """Length of the first complete reply in `buf`, or -1."""
    pos = 0
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            return -1
        line = buf[pos : nl + 1]
        pos = nl + 1
        if protocol == "smtp":
            if len(line) < 4 or line[3:4] != b"-":
                return pos
        elif protocol == "imap" and stage > 0:
            if line.startswith(b"S0 "):
                return pos
        else:
            return pos
