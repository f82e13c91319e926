"""TLS connections: fastmail's own OpenSSL binding, the per-connection half.

The engine owns the sockets (nonblocking, in its poller) and keeps the SSL * these functions
return; each call is one OpenSSL call or a short loop of them, made with the GIL held and no
Python object on the success path. Results are byte counts or the TLS_* codes of _tls.pxd.

nginx's behaviour, function by function (src/event/ngx_event_openssl.c):
- tls_accept / tls_connect: ngx_ssl_create_connection (server side: no renegotiation).
- tls_handshake: ngx_ssl_handshake. A failure is "peer closed connection in SSL handshake"
  (the peer went away: nothing in OpenSSL's error queue) or "SSL_do_handshake() failed (SSL:
  error:...)", with the errno as " (104: Connection reset by peer)"; its level is nginx's
  (ngx_ssl_connection_error: info for clients when the reason is the peer's fault, else crit).
- tls_read: ngx_ssl_recv + ngx_ssl_handle_recv: SSL_read until the buffer is full or OpenSSL
  wants the socket; close_notify, and EOF with nothing in the error queue, are TLS_CLOSED.
- tls_write: ngx_ssl_send_chain's loop of ngx_ssl_write: record after record (partial
  writes) until the buffer is done or the socket is full.
- tls_shutdown: ngx_ssl_shutdown: close_notify, then the peer's (TLS_WANT_READ while it has
  not come; nginx waits 3 s); after a failure or the peer's close nothing more is sent.
- tls_free: SSL_free, as after a quiet shutdown when none was done (the session stays
  resumable, as nginx's close on error or timeout leaves it).
The client-certificate verdict and the Auth-SSL-* values are ngx_mail_verify_cert and the
ngx_ssl_get_* functions the auth_http module calls.
"""

from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.errno cimport errno, ECONNRESET, EPIPE, ENOTCONN, ETIMEDOUT, ECONNREFUSED
from libc.errno cimport ENETDOWN, ENETUNREACH, EHOSTDOWN, EHOSTUNREACH
from libc.string cimport strlen

import os

from fastmail._openssl cimport *
from fastmail._tlsctx cimport CtxData, ctx_data, remove_session, ssl_error

from fastmail._tlsctx import ClientContext, ServerContext, SniMap, TlsConfigError  # noqa: F401


cdef extern from "_debug.h":
    bint FASTMAIL_DEBUG

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    int AF_INET, AF_INET6


# nginx's levels (fastmail.log): what tls_error_level() returns
cdef enum:
    LOG_ALERT = 2
    LOG_CRIT = 3
    LOG_ERR = 4
    LOG_INFO = 7

# how bad the last failure was: nginx's connection level (info for a client, error for a
# backend) when the peer is to blame, else crit (or alert for an odd errno)
cdef enum:
    PEER = 0
    CRIT = 1
    ALERT = 2

cdef str _last_text = ""
cdef int _last_kind = PEER
cdef long _live = 0          # SSL objects not yet freed (debug build)

# an error OpenSSL reported after tls_read had already read bytes: returned by the next call
cdef int _DEFERRED = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL)



DEBUG_BUILD = bool(FASTMAIL_DEBUG)  # live_count() counts


def live_count() -> int:
    """SSL objects made and not freed (counted in the debug build only: 0 otherwise)."""
    return _live


# --- failures ---------------------------------------------------------------------------------

cdef inline bint _peer_errno(int err) noexcept:
    return err in (ECONNRESET, EPIPE, ENOTCONN, ETIMEDOUT, ECONNREFUSED, ENETDOWN, ENETUNREACH,
                   EHOSTDOWN, EHOSTUNREACH)


cdef bint _peer_reason(int n) noexcept:
    """The OpenSSL reasons ngx_ssl_connection_error logs at the connection's level."""
    if n >= SSL_AD_REASON_OFFSET and n <= SSL_AD_REASON_OFFSET + 255:
        return True
    return n in (
        SSL_R_BAD_CHANGE_CIPHER_SPEC, SSL_R_NO_SUITABLE_KEY_SHARE, SSL_R_BAD_KEY_SHARE,
        SSL_R_BAD_EXTENSION, SSL_R_BAD_DIGEST_LENGTH, SSL_R_MISSING_SIGALGS_EXTENSION,
        SSL_R_BAD_PACKET_LENGTH, SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM, SSL_R_BAD_KEY_UPDATE,
        SSL_R_BLOCK_CIPHER_PAD_IS_WRONG, SSL_R_CCS_RECEIVED_EARLY,
        SSL_R_DATA_BETWEEN_CCS_AND_FINISHED, SSL_R_DATA_LENGTH_TOO_LONG,
        SSL_R_DIGEST_CHECK_FAILED, SSL_R_ENCRYPTED_LENGTH_TOO_LONG,
        SSL_R_ERROR_IN_RECEIVED_CIPHER_LIST, SSL_R_EXCESSIVE_MESSAGE_SIZE,
        SSL_R_GOT_A_FIN_BEFORE_A_CCS, SSL_R_HTTPS_PROXY_REQUEST, SSL_R_HTTP_REQUEST,
        SSL_R_LENGTH_MISMATCH, SSL_R_LENGTH_TOO_SHORT, SSL_R_NO_RENEGOTIATION,
        SSL_R_NO_CIPHERS_SPECIFIED, SSL_R_BAD_CIPHER, SSL_R_NO_COMPRESSION_SPECIFIED,
        SSL_R_NO_SHARED_CIPHER, SSL_R_PACKET_LENGTH_TOO_LONG, SSL_R_INVALID_ALERT,
        SSL_R_RECORD_LENGTH_MISMATCH, SSL_R_CLIENTHELLO_TLSEXT, SSL_R_PARSE_TLSEXT,
        SSL_R_CALLBACK_FAILED, SSL_R_NO_APPLICATION_PROTOCOL, SSL_R_UNEXPECTED_MESSAGE,
        SSL_R_UNEXPECTED_RECORD, SSL_R_UNKNOWN_ALERT_TYPE, SSL_R_UNKNOWN_PROTOCOL,
        SSL_R_UNSUPPORTED_PROTOCOL, SSL_R_WRONG_VERSION_NUMBER, SSL_R_BAD_LENGTH,
        SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC, SSL_R_APPLICATION_DATA_AFTER_CLOSE_NOTIFY,
        SSL_R_BAD_LEGACY_VERSION, SSL_R_MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA,
        SSL_R_RECORD_TOO_SMALL, SSL_R_SSL3_SESSION_ID_TOO_LONG, SSL_R_BAD_ECPOINT,
        SSL_R_RENEGOTIATE_EXT_TOO_LONG, SSL_R_RENEGOTIATION_ENCODING_ERR,
        SSL_R_RENEGOTIATION_MISMATCH, SSL_R_UNSAFE_LEGACY_RENEGOTIATION_DISABLED,
        SSL_R_SCSV_RECEIVED_WHEN_RENEGOTIATING, SSL_R_INAPPROPRIATE_FALLBACK,
        SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS, SSL_R_CERT_CB_ERROR, SSL_R_VERSION_TOO_LOW,
        SSL_R_TOO_MANY_WARN_ALERTS, SSL_R_BAD_RECORD_TYPE)


cdef str _errno_text(int err):
    return f" ({err}: {os.strerror(err)})" if err else ""


cdef int _fail(SSL *ssl, int sslerr, int err, str text) noexcept:
    """ngx_ssl_connection_error: records the text and level; returns TLS_FAIL."""
    global _last_text, _last_kind
    cdef int kind = CRIT
    if sslerr == SSL_ERROR_SYSCALL:
        if _peer_errno(err):
            kind = PEER
    elif sslerr == SSL_ERROR_SSL:
        if _peer_reason(ERR_GET_REASON(ERR_peek_last_error())):
            kind = PEER
    try:
        _last_text = ssl_error(text) + _errno_text(err)
    except BaseException:   # noqa: only MemoryError could get here
        _last_text = text
    _last_kind = kind
    _no_more(ssl)
    return TLS_FAIL


cdef int _closed(SSL *ssl, int err, str text) noexcept:
    """ngx_connection_error: the peer went away (info for a client with errno 0 or a reset)."""
    global _last_text, _last_kind
    try:
        _last_text = text + _errno_text(err)
    except BaseException:   # noqa: only MemoryError could get here
        _last_text = text
    _last_kind = PEER if err == 0 or _peer_errno(err) else ALERT
    ERR_clear_error()
    _no_more(ssl)
    return TLS_FAIL


cdef inline void _no_more(SSL *ssl) noexcept:
    # nginx's no_wait_shutdown + no_send_shutdown: nothing more to say or to wait for
    SSL_set_quiet_shutdown(ssl, 1)
    SSL_set_shutdown(ssl, SSL_RECEIVED_SHUTDOWN | SSL_SENT_SHUTDOWN)


cdef str tls_error():
    """The last TLS_FAIL's text as nginx logs it, without the ` while ...` context."""
    return _last_text


cdef int tls_error_level(bint client) noexcept:
    """The last TLS_FAIL's log level: a client's fault at info (a backend's at error), an odd
    errno at alert, anything else at crit."""
    if _last_kind == PEER:
        return LOG_INFO if client else LOG_ERR
    return LOG_ALERT if _last_kind == ALERT else LOG_CRIT


# --- connections -----------------------------------------------------------------------------

cdef SSL *_new(SSL_CTX *ctx, int fd) except NULL:
    global _live
    cdef SSL *ssl = SSL_new(ctx)
    if ssl == NULL:
        raise MemoryError(ssl_error("SSL_new() failed"))
    if SSL_set_fd(ssl, fd) == 0:
        SSL_free(ssl)
        raise OSError(ssl_error("SSL_set_fd() failed"))
    if FASTMAIL_DEBUG:
        _live += 1
    return ssl


cdef SSL *tls_accept(ServerContext ctx, int fd) except NULL:
    """A server-side SSL on the nonblocking socket `fd` (implicit TLS or after STARTTLS)."""
    cdef SSL *ssl = _new(ctx.ctx, fd)
    SSL_set_accept_state(ssl)
    SSL_set_options(ssl, SSL_OP_NO_RENEGOTIATION)
    return ssl


cdef SSL *tls_connect(ClientContext ctx, int fd, bytes name) except NULL:
    """A client-side SSL to a backend. `name` (proxy_ssl_name or the Auth-Server value) is
    sent as SNI unless it is an address, and checked against the certificate when the
    context verifies."""
    cdef SSL *ssl = _new(ctx.ctx, fd)
    cdef unsigned char addr[16]
    cdef bint is_addr
    SSL_set_connect_state(ssl)
    if name:
        is_addr = inet_pton(AF_INET, name, addr) == 1 or inet_pton(AF_INET6, name, addr) == 1
        if not is_addr:
            SSL_set_tlsext_host_name(ssl, name)
        if ctx.verify:
            if is_addr:
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name)
            else:
                SSL_set1_host(ssl, name)
    return ssl


cdef int tls_handshake(SSL *ssl) noexcept:
    cdef int n, sslerr, err
    ERR_clear_error()
    n = SSL_do_handshake(ssl)
    if n == 1:
        if not SSL_is_server(ssl) and SSL_get_verify_mode(ssl) != SSL_VERIFY_NONE:
            return _check_upstream(ssl)
        return TLS_OK
    sslerr = SSL_get_error(ssl, n)
    if sslerr == SSL_ERROR_WANT_READ:
        return TLS_WANT_READ
    if sslerr == SSL_ERROR_WANT_WRITE:
        return TLS_WANT_WRITE
    err = errno if sslerr == SSL_ERROR_SYSCALL else 0
    if sslerr == SSL_ERROR_ZERO_RETURN or ERR_peek_error() == 0:
        return _closed(ssl, err, "peer closed connection in SSL handshake")
    return _fail(ssl, sslerr, err, "SSL_do_handshake() failed")


cdef int _check_upstream(SSL *ssl) noexcept:
    """A backend's certificate, checked after the handshake as nginx's http proxy does (the
    chain, and the name through SSL_set1_host: 62 is a mismatch)."""
    global _last_text, _last_kind
    cdef long rc = SSL_get_verify_result(ssl)
    cdef X509 *cert = SSL_get1_peer_certificate(ssl)
    if cert != NULL:
        X509_free(cert)
        if rc == X509_V_OK:
            return TLS_OK
    try:
        _last_text = (f"upstream SSL certificate verify error: ({rc}:{_verify_text(rc)})"
                      if cert != NULL else "upstream sent no SSL certificate")
    except BaseException:   # noqa: only MemoryError could get here
        _last_text = "upstream SSL certificate verify error"
    _last_kind = PEER
    return TLS_FAIL


cdef Py_ssize_t tls_read(SSL *ssl, char *buf, size_t size) noexcept:
    """Plaintext into `buf` until it is full or OpenSSL needs the socket (> 0), else a TLS_*
    code. A full buffer may leave more in OpenSSL: call again (tls_pending tells)."""
    cdef size_t got = 0, n = 0
    cdef int sslerr, err
    cdef PyObject *deferred
    ERR_clear_error()
    while True:
        if SSL_read_ex(ssl, buf + got, size - got, &n) == 1:
            got += n
            if got >= size:
                return got
            continue
        sslerr = SSL_get_error(ssl, 0)
        if sslerr == SSL_ERROR_WANT_READ:
            return got if got else TLS_WANT_READ
        if sslerr == SSL_ERROR_WANT_WRITE:
            return got if got else TLS_WANT_WRITE
        err = errno if sslerr == SSL_ERROR_SYSCALL else 0
        if not got:
            deferred = <PyObject *>SSL_get_ex_data(ssl, _DEFERRED)
            if deferred != NULL:
                ERR_clear_error()
                return _use_deferred(ssl, deferred)
        if sslerr == SSL_ERROR_ZERO_RETURN or ERR_peek_error() == 0:
            _no_more(ssl)
            return got if got else TLS_CLOSED
        if got:
            # the bytes now, the failure at the next call (OpenSSL will not say it twice)
            _fail(ssl, sslerr, err, "SSL_read() failed")
            _defer(ssl)
            return got
        return _fail(ssl, sslerr, err, "SSL_read() failed")


cdef void _defer(SSL *ssl) noexcept:
    cdef object text = (_last_text, _last_kind)
    Py_INCREF(text)
    SSL_set_ex_data(ssl, _DEFERRED, <PyObject *>text)


cdef int _use_deferred(SSL *ssl, PyObject *deferred) noexcept:
    global _last_text, _last_kind
    cdef tuple t = <tuple>deferred
    _last_text, _last_kind = t
    SSL_set_ex_data(ssl, _DEFERRED, NULL)
    Py_XDECREF(deferred)
    return TLS_FAIL


cdef Py_ssize_t tls_write(SSL *ssl, const char *buf, size_t size) noexcept:
    """Bytes taken (> 0: records until the buffer is done or the socket is full), else a
    TLS_* code. A failure after some bytes comes back at the next call (the socket's error
    stays)."""
    cdef size_t done = 0, n = 0
    cdef int sslerr, err
    ERR_clear_error()
    while done < size:
        if SSL_write_ex(ssl, buf + done, size - done, &n) == 1:
            done += n
            continue
        sslerr = SSL_get_error(ssl, 0)
        if done:
            ERR_clear_error()
            return done
        if sslerr == SSL_ERROR_WANT_WRITE:
            return TLS_WANT_WRITE
        if sslerr == SSL_ERROR_WANT_READ:
            return TLS_WANT_READ
        if sslerr == SSL_ERROR_ZERO_RETURN:
            sslerr = SSL_ERROR_SYSCALL      # OpenSSL 1.1.1 after the peer's close_notify
        err = errno if sslerr == SSL_ERROR_SYSCALL else 0
        return _fail(ssl, sslerr, err, "SSL_write() failed")
    return done


cdef bint tls_pending(SSL *ssl) noexcept:
    """OpenSSL holds input not yet returned: read again before waiting for the socket."""
    return SSL_has_pending(ssl) != 0


cdef int tls_shutdown(SSL *ssl) noexcept:
    """close_notify, then the peer's: TLS_OK when done (or nothing to do), TLS_WANT_READ /
    TLS_WANT_WRITE to call again when the socket is ready (nginx gives it 3 s), TLS_FAIL."""
    cdef int n, sslerr, err, tries = 2
    if SSL_in_init(ssl):
        return TLS_OK       # no handshake, no shutdown (OpenSSL complains)
    ERR_clear_error()
    while True:
        n = SSL_shutdown(ssl)
        if n == 1:
            return TLS_OK
        tries -= 1
        if n == 0 and tries > 0:
            continue
        sslerr = SSL_get_error(ssl, n)
        if sslerr == SSL_ERROR_WANT_READ:
            return TLS_WANT_READ
        if sslerr == SSL_ERROR_WANT_WRITE:
            return TLS_WANT_WRITE
        if sslerr == SSL_ERROR_ZERO_RETURN or ERR_peek_error() == 0:
            return TLS_OK
        err = errno if sslerr == SSL_ERROR_SYSCALL else 0
        return _fail(ssl, sslerr, err, "SSL_shutdown() failed")


cdef void tls_free(SSL *ssl) noexcept:
    global _live
    cdef PyObject *deferred
    if ssl == NULL:
        return
    deferred = <PyObject *>SSL_get_ex_data(ssl, _DEFERRED)
    if deferred != NULL:
        Py_XDECREF(deferred)
    if not (SSL_get_shutdown(ssl) & SSL_SENT_SHUTDOWN):
        # as nginx's quiet shutdown on close: OpenSSL would drop the session otherwise
        _no_more(ssl)
    SSL_free(ssl)
    if FASTMAIL_DEBUG:
        _live -= 1


# --- client sessions (resuming TLS to a backend) ----------------------------------------------

cdef bytes tls_get_session(SSL *ssl):
    """The connection's session as DER (for tls_set_session on the next connection to the same
    backend), or None. With TLSv1.3 it exists once the server's ticket was read."""
    cdef SSL_SESSION *sess = SSL_get1_session(ssl)
    cdef unsigned char *p
    cdef int n
    if sess == NULL:
        return None
    try:
        n = i2d_SSL_SESSION(sess, NULL)
        if n <= 0:
            return None
        out = bytearray(n)
        p = out
        i2d_SSL_SESSION(sess, &p)
        return bytes(out)
    finally:
        SSL_SESSION_free(sess)


cdef int tls_set_session(SSL *ssl, bytes der) except -1:
    """Offer a session from tls_get_session in the coming handshake (client side)."""
    cdef const unsigned char *p = der
    cdef SSL_SESSION *sess = d2i_SSL_SESSION(NULL, &p, len(der))
    if sess == NULL:
        ERR_clear_error()
        return 0
    SSL_set_session(ssl, sess)
    SSL_SESSION_free(sess)
    return 1


# --- what a connection is --------------------------------------------------------------------

cdef bint tls_reused(SSL *ssl) noexcept:
    return SSL_session_reused(ssl) != 0


cdef const char *tls_names(SSL *ssl, const char **cipher) noexcept:
    """The protocol's and the cipher's names: OpenSSL's static strings, valid for the
    process's life (the access log keeps them past the connection)."""
    cdef const SSL_CIPHER *c = SSL_get_current_cipher(ssl)
    cipher[0] = SSL_CIPHER_get_name(c) if c != NULL else NULL
    return SSL_get_version(ssl)


cdef str tls_version(SSL *ssl):
    cdef const char *v = SSL_get_version(ssl)
    return v[:strlen(v)].decode() if v != NULL else ""


cdef str tls_cipher(SSL *ssl):
    cdef const SSL_CIPHER *c = SSL_get_current_cipher(ssl)
    cdef const char *name
    if c == NULL:
        return ""
    name = SSL_CIPHER_get_name(c)
    return name[:strlen(name)].decode() if name != NULL else ""


cdef object tls_alpn(SSL *ssl):
    cdef const unsigned char *data
    cdef unsigned int n = 0
    SSL_get0_alpn_selected(ssl, &data, &n)
    return data[:n] if n else None


cdef object tls_chosen(SSL *ssl):
    """The owner of the context serving the connection: the one SNI chose, else the one the
    SSL was made from."""
    cdef CtxData *d = ctx_data(ssl)
    if d == NULL or d.pyctx == NULL:
        return None
    return (<ServerContext>d.pyctx).owner


cdef int tls_verify(SSL *ssl) noexcept:
    """ssl_verify_client of the context serving the connection (the one SNI chose): 0 off,
    1 on, 2 optional, 3 optional_no_ca, for tls_cert_check and tls_auth_info."""
    cdef CtxData *d = ctx_data(ssl)
    return d.verify if d != NULL else 0


cdef bint _optional(long rc) noexcept:
    # ngx_ssl_verify_error_optional (1.22.1): what optional_no_ca forgives
    return rc in (X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
                  X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
                  X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_CERT_UNTRUSTED,
                  X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE)


cdef str _verify_text(long rc):
    cdef const char *s = X509_verify_cert_error_string(rc)
    return s[:strlen(s)].decode("latin-1") if s != NULL else ""


cdef object tls_cert_check(SSL *ssl, int verify, tuple replies):
    """ngx_mail_verify_cert after the handshake: None to go on, else (reply, info log text);
    the session is dropped from the caches then. `verify`: 0 off, 1 on, 2 optional,
    3 optional_no_ca (ServerContext.verify); `replies`: ServerContext.cert_replies."""
    cdef long rc
    cdef X509 *cert
    if verify == 0:
        return None
    rc = SSL_get_verify_result(ssl)
    if rc != X509_V_OK and (verify != 3 or not _optional(rc)):
        remove_session(ssl)
        return (replies[0],
                f"client SSL certificate verify error: ({rc}:{_verify_text(rc)})")
    if verify == 1:
        cert = SSL_get1_peer_certificate(ssl)
        if cert == NULL:
            remove_session(ssl)
            return replies[1], "client sent no required SSL certificate"
        X509_free(cert)
    return None


cdef bytes _bio_bytes(BIO *bio):
    cdef char *p = NULL
    cdef long n = BIO_get_mem_data(bio, &p)
    return p[:n] if n > 0 else b""


cdef bytes _dn(X509_NAME *name):
    """ngx_ssl_get_subject_dn / issuer_dn: RFC 2253."""
    cdef BIO *bio = BIO_new(BIO_s_mem())
    if bio == NULL:
        return b""
    X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253)
    out = _bio_bytes(bio)
    BIO_free(bio)
    return out


cdef dict tls_auth_info(SSL *ssl, int verify):
    """What auth_http turns into Auth-SSL-* lines: protocol, cipher and, with ssl_verify_client,
    verify, subject, issuer, serial, fingerprint, cert (PEM), as nginx's ngx_ssl_get_*."""
    cdef X509 *cert
    cdef long rc
    cdef BIO *bio
    cdef unsigned char md[64]
    cdef unsigned int n = 0
    info = {"protocol": tls_version(ssl).encode(), "cipher": tls_cipher(ssl).encode()}
    if verify == 0:
        return info
    cert = SSL_get1_peer_certificate(ssl)
    if cert == NULL:
        info["verify"] = b"NONE"
        return info
    try:
        rc = SSL_get_verify_result(ssl)
        info["verify"] = b"SUCCESS" if rc == X509_V_OK else (
            b"FAILED:" + _verify_text(rc).encode("latin-1"))
        info["subject"] = _dn(X509_get_subject_name(cert))
        info["issuer"] = _dn(X509_get_issuer_name(cert))
        bio = BIO_new(BIO_s_mem())
        if bio != NULL:
            i2a_ASN1_INTEGER(bio, X509_get_serialNumber(cert))
            # OpenSSL breaks the hex with a backslash-newline every 35 octets, which would
            # split the auth_http header (no legal serial is that long): the hex is unbroken
            info["serial"] = _bio_bytes(bio).replace(b"\\\n", b"")
            BIO_reset(bio)
            PEM_write_bio_X509(bio, cert)
            info["cert"] = _bio_bytes(bio)
            BIO_free(bio)
        if X509_digest(cert, EVP_sha1(), md, &n):
            info["fingerprint"] = md[:n].hex().encode()
    finally:
        X509_free(cert)
    return info


# --- a Python handle on the primitives (tests, benchmarks) ----------------------------------

cdef class TlsStream:
    """One TLS connection over a nonblocking socket fd the caller owns: the engine's calls,
    callable from Python. `ctx` is a ServerContext (accept) or a ClientContext (connect)."""

    cdef SSL *ssl
    cdef object ctx
    cdef tuple replies

    def __cinit__(self, ctx, int fd, bytes server_name=None):
        self.ctx = ctx
        if isinstance(ctx, ServerContext):
            self.ssl = tls_accept(<ServerContext>ctx, fd)
            self.replies = (<ServerContext>ctx).cert_replies
        else:
            self.ssl = tls_connect(<ClientContext?>ctx, fd, server_name)
            self.replies = None

    def __dealloc__(self):
        if self.ssl != NULL:
            tls_free(self.ssl)
            self.ssl = NULL

    cdef SSL *_ssl(self) except NULL:
        if self.ssl == NULL:
            raise ValueError("closed TlsStream")
        return self.ssl

    def handshake(self) -> int:
        return tls_handshake(self._ssl())

    def read(self, Py_ssize_t size=65536):
        """bytes, or a TLS_* code (int)."""
        cdef bytearray buf = bytearray(size)
        cdef Py_ssize_t n = tls_read(self._ssl(), buf, size)
        return bytes(buf[:n]) if n > 0 else n

    def readinto(self, buf) -> int:
        cdef unsigned char[::1] view = buf
        return tls_read(self._ssl(), <char *>&view[0], view.shape[0])

    def write(self, data) -> int:
        cdef const unsigned char[::1] view = data
        return tls_write(self._ssl(), <const char *>&view[0], view.shape[0])

    def session(self):
        return tls_get_session(self._ssl())

    def set_session(self, bytes der) -> bool:
        return tls_set_session(self._ssl(), der) == 1

    def pending(self) -> bool:
        return tls_pending(self._ssl())

    def shutdown(self) -> int:
        return tls_shutdown(self._ssl())

    def close(self) -> None:
        if self.ssl != NULL:
            tls_free(self.ssl)
            self.ssl = NULL

    def error(self, bint client=True) -> tuple:
        """(level, text) of the last TLS_FAIL."""
        return tls_error_level(client), tls_error()

    def cert_check(self, verify=None, tuple replies=None):
        """The verdict; `verify` defaults to the serving context's (tls_verify), `replies`
        to its protocol's."""
        return tls_cert_check(self._ssl(), tls_verify(self._ssl()) if verify is None else verify,
                              replies or self.replies)

    def auth_info(self, verify=None) -> dict:
        return tls_auth_info(self._ssl(), tls_verify(self._ssl()) if verify is None else verify)

    @property
    def reused(self) -> bool:
        return tls_reused(self._ssl())

    @property
    def version(self) -> str:
        return tls_version(self._ssl())

    @property
    def cipher(self) -> str:
        return tls_cipher(self._ssl())

    @property
    def alpn(self):
        return tls_alpn(self._ssl())

    @property
    def chosen(self):
        return tls_chosen(self._ssl())


TLS_CODES = {"OK": TLS_OK, "FAIL": TLS_FAIL, "WANT_READ": TLS_WANT_READ,
             "WANT_WRITE": TLS_WANT_WRITE, "CLOSED": TLS_CLOSED}
