"""TLS contexts: fastmail's own OpenSSL binding, the configuration half.

A ServerContext is one SSL_CTX built from a server's ssl_* directives, in nginx's merge order
(ngx_mail_ssl_merge_conf: create, ciphers, certificates, client verification, dhparam, curves,
session cache, tickets, ssl_conf_command), each step failing with nginx's message. Contexts
are built at config load, in the master, before the workers fork: the shared session cache
and the ticket keys are then the same memory in every worker.

The callbacks OpenSSL calls on a handshake live here too: ALPN (nginx 1.21.4+: a client that
offers ALPN without the server's protocol gets the no_application_protocol alert), SNI (beyond
nginx: several server{} blocks on one address, the client's name picks one), session tickets
(nginx's key files and layout; without files one key per master process, so tickets survive
`-s reload`), the shared session-ID cache and nginx's accept-any client certificate check (the
verdict becomes a protocol reply after the handshake, _tls.tls_cert_check).

Every callback runs inside an SSL call the engine makes with the GIL held; none may raise.
Must not know sockets or sessions (_tls.pyx does) nor config text (conf/ssl.py does).
"""

import re

from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memcmp, strlen
from libc.time cimport time

from fastmail._openssl cimport *
from fastmail._tlscache cimport SessionZone


class TlsConfigError(Exception):
    """A TLS setting OpenSSL refused, worded as nginx logs it (conf turns it into [emerg])."""


cdef int CTX_IDX = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, _ctx_data_free)
cdef int SSL_IDX = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL)

_PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
_VERIFY = {"off": 0, "on": 1, "optional": 2, "optional_no_ca": 3}

# without ssl_session_ticket_key files: one key per master process, made at the first context
# and kept for the contexts of every reload (nginx 1.22.1 makes one per context and reload)
cdef TicketKey _process_key
cdef bint _process_key_made = False

# NGX_MAX_CONF_ERRSTR: nginx cuts an error line with its OpenSSL detail at this length
cdef enum:
    ERRSTR = 1024
    SESSION_BUF = 8192          # _tlscache.MAX_SESSION


# --- nginx's error text ----------------------------------------------------------------------

cdef size_t _cpy(char *dst, const char *src, size_t n) noexcept:
    """ngx_cpystrn: at most n - 1 bytes, NUL-terminated; the length copied."""
    cdef size_t i = 0
    if n == 0:
        return 0
    while i < n - 1 and src[i]:
        dst[i] = src[i]
        i += 1
    dst[i] = 0
    return i


cdef inline bytes _path(str p):
    """A file name from the config as the bytes it was written in (the lexer decodes with
    surrogateescape; found by tests/fuzz: utf-8 alone raised on them); a NUL ends it for
    OpenSSL as it ends nginx's C string."""
    return p.encode("utf-8", "surrogateescape")


cdef str ssl_error(str text):
    """`text (SSL: error:0A0000B9:SSL routines::no cipher match ...)` from OpenSSL's error
    queue (emptied), byte for byte as ngx_ssl_error writes it."""
    cdef char buf[ERRSTR]
    cdef bytes head = text.encode("utf-8", "surrogateescape")
    cdef size_t p = min(<size_t>len(head), <size_t>(ERRSTR - 1))
    cdef size_t last = ERRSTR
    cdef unsigned long n
    cdef const char *data
    cdef int flags
    memcpy(buf, <const char *>head, p)
    if ERR_peek_error():
        p += _cpy(buf + p, " (SSL:", last - p)
        while True:
            n = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)
            if n == 0:
                break
            if p >= last - 1:
                continue
            buf[p] = b' '
            p += 1
            ERR_error_string_n(n, buf + p, last - p)
            while p < last and buf[p]:
                p += 1
            if p < last and data != NULL and data[0] and (flags & ERR_TXT_STRING):
                buf[p] = b':'
                p += 1
                p += _cpy(buf + p, data, last - p)
        if p < last:
            buf[p] = b')'
            p += 1
    return buf[:p].decode("utf-8", "replace")


# --- the per-context data and the lookups callbacks need -------------------------------------

cdef void _ctx_data_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp) noexcept:
    cdef CtxData *d = <CtxData *>ptr
    if d == NULL:
        return
    Py_XDECREF(d.zone)
    if d.keys != NULL:
        OPENSSL_cleanse(d.keys, d.nkeys * sizeof(TicketKey))
        free(d.keys)
    free(d)


cdef CtxData *ctx_data(const SSL *ssl) noexcept:
    return <CtxData *>SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), CTX_IDX)


cdef SSL_CTX *session_ctx(const SSL *ssl) noexcept:
    """The context the SSL was made from: OpenSSL keeps using its session cache and ticket
    keys after an SNI switch (nginx's c->ssl->session_ctx)."""
    cdef SSL_CTX *c = <SSL_CTX *>SSL_get_ex_data(ssl, SSL_IDX)
    return c if c != NULL else SSL_get_SSL_CTX(ssl)


cdef inline CtxData *_session_data(const SSL *ssl) noexcept:
    return <CtxData *>SSL_CTX_get_ex_data(session_ctx(ssl), CTX_IDX)


# --- callbacks -------------------------------------------------------------------------------

cdef int _accept_any(int ok, X509_STORE_CTX *store) noexcept:
    # ngx_ssl_verify_callback: the handshake never fails on the client's certificate
    return 1


cdef int _alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                      const unsigned char *inp, unsigned int inlen, void *arg) noexcept:
    """ngx_mail_ssl_alpn_select: the server's protocol anywhere in the client's list, else the
    handshake fails with the no_application_protocol alert."""
    cdef CtxData *d = ctx_data(ssl)
    if d == NULL or SSL_select_next_proto(<unsigned char **>out, outlen, d.alpn, d.alpn[0] + 1,
                                          inp, inlen) != OPENSSL_NPN_NEGOTIATED:
        return SSL_TLSEXT_ERR_ALERT_FATAL
    return SSL_TLSEXT_ERR_OK


cdef int _servername(SSL *ssl, int *ad, void *arg) noexcept:
    """Beyond nginx mail: the server{} whose server_name matches the client's SNI name takes
    the handshake over (certificates, verification), as nginx's http servername handler."""
    cdef const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    cdef SSL_CTX *cur
    cdef CtxData *d
    cdef ServerContext target
    if name == NULL:
        return SSL_TLSEXT_ERR_OK
    cur = SSL_get_SSL_CTX(ssl)
    d = <CtxData *>SSL_CTX_get_ex_data(cur, CTX_IDX)
    if d == NULL or d.pyctx == NULL:
        return SSL_TLSEXT_ERR_OK
    sni = (<ServerContext>d.pyctx).sni
    if sni is None:
        return SSL_TLSEXT_ERR_OK
    try:
        target = (<SniMap>sni).find(name[:strlen(name)].lower())
    except Exception:       # noqa: never raise through OpenSSL
        return SSL_TLSEXT_ERR_OK
    if target is None or target.ctx == cur:
        return SSL_TLSEXT_ERR_OK
    if SSL_get_ex_data(ssl, SSL_IDX) == NULL:
        SSL_set_ex_data(ssl, SSL_IDX, cur)
    SSL_set_SSL_CTX(ssl, target.ctx)
    if SSL_CTX_get_verify_mode(target.ctx):
        SSL_set_verify(ssl, SSL_CTX_get_verify_mode(target.ctx), _accept_any)
    else:
        SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL)
    SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(target.ctx))
    SSL_clear_options(ssl, ~SSL_CTX_get_options(target.ctx))
    SSL_set_options(ssl, SSL_CTX_get_options(target.ctx) | SSL_OP_NO_RENEGOTIATION)
    return SSL_TLSEXT_ERR_OK


cdef char *_SHA256 = b"SHA256"


cdef int _ticket_key(SSL *ssl, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *ectx,
                     EVP_MAC_CTX *hctx, int enc) noexcept:
    """ngx_ssl_ticket_key_callback (EVP_MAC form): AES-CBC and HMAC-SHA256 keyed by the first
    key when issuing, by the key whose name the ticket carries when resuming."""
    cdef CtxData *d = _session_data(ssl)
    cdef TicketKey *k
    cdef const EVP_CIPHER *cipher
    cdef OSSL_PARAM params[3]
    cdef int i
    if d == NULL or d.nkeys == 0:
        return -1
    if enc == 1:
        k = &d.keys[0]
    else:
        k = NULL
        for i in range(d.nkeys):
            if memcmp(name, d.keys[i].name, 16) == 0:
                k = &d.keys[i]
                break
        if k == NULL:
            return 0        # unknown key: a full handshake
    cipher = EVP_aes_128_cbc() if k.size == 48 else EVP_aes_256_cbc()
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, k.hmac_key,
                                                  16 if k.size == 48 else 32)
    params[1] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, _SHA256, 0)
    params[2] = OSSL_PARAM_construct_end()
    if enc == 1:
        if RAND_bytes(iv, EVP_CIPHER_get_iv_length(cipher)) != 1:
            return -1
        if EVP_EncryptInit_ex(ectx, cipher, NULL, k.aes_key, iv) != 1:
            return -1
        if EVP_MAC_CTX_set_params(hctx, params) != 1:
            return -1
        memcpy(name, k.name, 16)
        return 1
    if EVP_MAC_CTX_set_params(hctx, params) != 1:
        return -1
    if EVP_DecryptInit_ex(ectx, cipher, NULL, k.aes_key, iv) != 1:
        return -1
    # renew with TLSv1.3 and with a key that no longer encrypts, as nginx
    if SSL_version(ssl) == TLS1_3_VERSION or k != &d.keys[0]:
        return 2
    return 1


cdef int _new_session(SSL *ssl, SSL_SESSION *sess) noexcept:
    """ngx_ssl_new_session: the session into the shared zone (DER made outside the lock)."""
    cdef CtxData *d = _session_data(ssl)
    cdef unsigned char buf[SESSION_BUF]
    cdef unsigned char *p = buf
    cdef unsigned int idlen
    cdef const unsigned char *sid
    cdef int n
    if d == NULL or d.zone == NULL:
        return 0
    # TLSv1.3 with tickets resumes from the ticket: OpenSSL only reports the session
    if SSL_version(ssl) == TLS1_3_VERSION and (SSL_get_options(ssl) & SSL_OP_NO_TICKET) == 0:
        return 0
    n = i2d_SSL_SESSION(sess, NULL)
    if n <= 0 or n > SESSION_BUF:
        return 0
    i2d_SSL_SESSION(sess, &p)
    sid = SSL_SESSION_get_id(sess, &idlen)
    (<SessionZone>d.zone).store(sid, idlen, buf, n,
                                time(NULL) + SSL_CTX_get_timeout(session_ctx(ssl)))
    OPENSSL_cleanse(buf, n)
    return 0    # OpenSSL keeps its reference


cdef SSL_SESSION *_get_session(SSL *ssl, const unsigned char *sid, int idlen,
                               int *copy) noexcept:
    cdef CtxData *d = _session_data(ssl)
    cdef unsigned char buf[SESSION_BUF]
    cdef const unsigned char *p = buf
    cdef Py_ssize_t n
    cdef SSL_SESSION *sess
    copy[0] = 0
    if d == NULL or d.zone == NULL:
        return NULL
    n = (<SessionZone>d.zone).fetch(sid, idlen, buf, SESSION_BUF, time(NULL))
    if n < 0:
        return NULL
    sess = d2i_SSL_SESSION(NULL, &p, n)
    OPENSSL_cleanse(buf, n)
    return sess


cdef void _remove_session(SSL_CTX *ctx, SSL_SESSION *sess) noexcept:
    cdef CtxData *d = <CtxData *>SSL_CTX_get_ex_data(ctx, CTX_IDX)
    cdef unsigned int idlen
    cdef const unsigned char *sid
    if d == NULL or d.zone == NULL:
        return
    sid = SSL_SESSION_get_id(sess, &idlen)
    (<SessionZone>d.zone).remove(sid, idlen)


cdef int remove_session(SSL *ssl) noexcept:
    """ngx_ssl_remove_cached_session: a session whose client certificate was refused must not
    resume (OpenSSL's cache, and the shared zone, which OpenSSL's removal may not reach)."""
    cdef SSL_SESSION *sess = SSL_get0_session(ssl)
    cdef SSL_CTX *ctx = session_ctx(ssl)
    if sess == NULL:
        return 0
    SSL_CTX_remove_session(ctx, sess)
    _remove_session(ctx, sess)
    return 0


cdef int _password(char *buf, int size, int rwflag, void *u) noexcept:
    """ngx_ssl_password_callback: one line of ssl_password_file; none means no pass phrase
    (never OpenSSL's prompt on the terminal: mainline nginx does not prompt either)."""
    cdef Py_ssize_t n
    if rwflag or u == NULL:
        return 0
    pw = <bytes><object>u
    n = min(len(pw), size)
    memcpy(buf, <const char *>pw, n)
    return <int>n


# --- server contexts -------------------------------------------------------------------------

cdef class ServerContext:
    """One server{}'s SSL_CTX. Built by conf/ssl.py in nginx's order: __init__ (ssl_protocols),
    set_ciphers, add_certificate (each pair), set_client_verify, set_dhparam, set_ecdh_curve,
    set_session_cache, set_session_tickets, conf_commands. `owner` is the engine's (any
    object: tls_chosen returns the owner of the context SNI chose). `alpn` and `cert_replies`
    come from the protocol table (fastmail.protocols)."""

    def __cinit__(self, str protocol, protocols, bytes alpn, tuple cert_replies):
        cdef uint64_t off = 0
        self.ctx = SSL_CTX_new(TLS_server_method())
        if self.ctx == NULL:
            raise TlsConfigError(ssl_error("SSL_CTX_new() failed"))
        self.data = <CtxData *>calloc(1, sizeof(CtxData))
        if self.data == NULL:
            raise MemoryError()
        SSL_CTX_set_ex_data(self.ctx, CTX_IDX, self.data)  # freed with the SSL_CTX from now on
        self.data.pyctx = <PyObject *>self
        self.protocol = protocol
        self.cert_replies = cert_replies
        self.cert_digests = []
        if not 0 < len(alpn) < sizeof(self.data.alpn):
            raise ValueError(f"ALPN id {alpn!r}")
        self.data.alpn[0] = <unsigned char>len(alpn)
        memcpy(&self.data.alpn[1], <const char *>alpn, len(alpn))
        # ngx_ssl_create
        for name, flag in (("SSLv3", SSL_OP_NO_SSLv3), ("TLSv1", SSL_OP_NO_TLSv1),
                           ("TLSv1.1", SSL_OP_NO_TLSv1_1), ("TLSv1.2", SSL_OP_NO_TLSv1_2),
                           ("TLSv1.3", SSL_OP_NO_TLSv1_3)):
            if name not in protocols:
                off |= <uint64_t>flag
        SSL_CTX_clear_options(self.ctx, SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1
                              | SSL_OP_NO_TLSv1_2 | SSL_OP_NO_TLSv1_3)
        SSL_CTX_set_options(self.ctx, off | SSL_OP_NO_COMPRESSION | SSL_OP_NO_ANTI_REPLAY
                            | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_SINGLE_DH_USE)
        SSL_CTX_set_min_proto_version(self.ctx, 0)
        SSL_CTX_set_max_proto_version(self.ctx, TLS1_3_VERSION)
        # nginx's modes, and the engine's: partial writes of a moving buffer (the relay writes
        # what it has and keeps the rest)
        SSL_CTX_set_mode(self.ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN
                         | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        SSL_CTX_set_read_ahead(self.ctx, 1)
        SSL_CTX_set_alpn_select_cb(self.ctx, _alpn_select, NULL)

    def __dealloc__(self):
        if self.data != NULL:
            self.data.pyctx = NULL      # SSL objects may keep the SSL_CTX (and data) alive
        if self.ctx != NULL:
            SSL_CTX_free(self.ctx)

    def set_ciphers(self, str ciphers, bint prefer_server):
        if SSL_CTX_set_cipher_list(self.ctx, ciphers.encode()) == 0:
            raise TlsConfigError(ssl_error(f'SSL_CTX_set_cipher_list("{ciphers}") failed'))
        if prefer_server:
            SSL_CTX_set_options(self.ctx, SSL_OP_CIPHER_SERVER_PREFERENCE)

    def add_certificate(self, str cert, str key, list passwords):
        """One ssl_certificate / ssl_certificate_key pair (ngx_ssl_certificate); `passwords`
        are the ssl_password_file lines (bytes), tried in order."""
        cdef X509 *x509 = NULL
        cdef X509 *extra
        cdef OPENSSL_STACK *chain
        cdef EVP_PKEY *pkey = NULL
        cdef BIO *bio
        cdef unsigned long n
        cdef unsigned char md[64]
        cdef unsigned int mdlen
        cdef Py_ssize_t i, tries
        cdef bytes pw
        bio = BIO_new_file(_path(cert), b"r")
        if bio == NULL:
            raise TlsConfigError(ssl_error(
                f'cannot load certificate "{cert}": BIO_new_file() failed'))
        x509 = PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL)
        if x509 == NULL:
            BIO_free(bio)
            raise TlsConfigError(ssl_error(
                f'cannot load certificate "{cert}": PEM_read_bio_X509_AUX() failed'))
        chain = OPENSSL_sk_new_null()
        while True:
            extra = PEM_read_bio_X509(bio, NULL, NULL, NULL)
            if extra == NULL:
                n = ERR_peek_last_error()
                if ERR_GET_LIB(n) == ERR_LIB_PEM and ERR_GET_REASON(n) == PEM_R_NO_START_LINE:
                    ERR_clear_error()       # the end of the file
                    break
                BIO_free(bio)
                X509_free(x509)
                _free_x509_stack(chain)
                raise TlsConfigError(ssl_error(
                    f'cannot load certificate "{cert}": PEM_read_bio_X509() failed'))
            OPENSSL_sk_push(chain, extra)
        BIO_free(bio)
        if X509_digest(x509, EVP_sha1(), md, &mdlen):
            self.cert_digests.append(md[:mdlen])
        if SSL_CTX_use_certificate(self.ctx, x509) == 0:
            X509_free(x509)
            _free_x509_stack(chain)
            raise TlsConfigError(ssl_error(f'SSL_CTX_use_certificate("{cert}") failed'))
        X509_free(x509)
        if SSL_CTX_set0_chain(self.ctx, chain) == 0:
            _free_x509_stack(chain)
            raise TlsConfigError(ssl_error(f'SSL_CTX_set0_chain("{cert}") failed'))
        bio = BIO_new_file(_path(key), b"r")
        if bio == NULL:
            raise TlsConfigError(ssl_error(
                f'cannot load certificate key "{key}": BIO_new_file() failed'))
        tries = max(1, len(passwords))
        for i in range(tries):
            pw = passwords[i] if passwords else None
            pkey = PEM_read_bio_PrivateKey(bio, NULL, _password,
                                           <void *>pw if pw is not None else NULL)
            if pkey != NULL:
                break
            if i < tries - 1:
                ERR_clear_error()
                BIO_reset(bio)
        BIO_free(bio)
        if pkey == NULL:
            raise TlsConfigError(ssl_error(
                f'cannot load certificate key "{key}": PEM_read_bio_PrivateKey() failed'))
        if SSL_CTX_use_PrivateKey(self.ctx, pkey) == 0:
            EVP_PKEY_free(pkey)
            raise TlsConfigError(ssl_error(f'SSL_CTX_use_PrivateKey("{key}") failed'))
        EVP_PKEY_free(pkey)

    def set_client_verify(self, str mode, int depth, str client_certificate,
                          str trusted_certificate, str crl):
        """ssl_verify_client (not off), ssl_verify_depth, ssl_client_certificate (the CA list
        sent to clients), ssl_trusted_certificate, ssl_crl: nginx 1.22.1's loading."""
        cdef stack_st_X509_NAME *names
        cdef X509_LOOKUP *lookup
        self.verify = self.data.verify = _VERIFY[mode]
        SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER, _accept_any)
        SSL_CTX_set_verify_depth(self.ctx, depth)
        if client_certificate:
            path = _path(client_certificate)
            if SSL_CTX_load_verify_locations(self.ctx, path, NULL) == 0:
                raise TlsConfigError(ssl_error(
                    f'SSL_CTX_load_verify_locations("{client_certificate}") failed'))
            ERR_clear_error()   # it may leave errors while succeeding
            names = SSL_load_client_CA_file(path)
            if names == NULL:
                raise TlsConfigError(ssl_error(
                    f'SSL_load_client_CA_file("{client_certificate}") failed'))
            SSL_CTX_set_client_CA_list(self.ctx, names)
        if trusted_certificate:
            if SSL_CTX_load_verify_locations(self.ctx, _path(trusted_certificate), NULL) == 0:
                raise TlsConfigError(ssl_error(
                    f'SSL_CTX_load_verify_locations("{trusted_certificate}") failed'))
            ERR_clear_error()
        if crl:
            lookup = X509_STORE_add_lookup(SSL_CTX_get_cert_store(self.ctx), X509_LOOKUP_file())
            if lookup == NULL:
                raise TlsConfigError(ssl_error("X509_STORE_add_lookup() failed"))
            if X509_LOOKUP_load_file(lookup, _path(crl), X509_FILETYPE_PEM) == 0:
                raise TlsConfigError(ssl_error(f'X509_LOOKUP_load_file("{crl}") failed'))
            X509_STORE_set_flags(SSL_CTX_get_cert_store(self.ctx),
                                 X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL)

    def set_dhparam(self, str path):
        cdef BIO *bio = BIO_new_file(_path(path), b"r")
        cdef DH *dh
        if bio == NULL:
            raise TlsConfigError(ssl_error(f'BIO_new_file("{path}") failed'))
        dh = PEM_read_bio_DHparams(bio, NULL, NULL, NULL)
        BIO_free(bio)
        if dh == NULL:
            raise TlsConfigError(ssl_error(f'PEM_read_bio_DHparams("{path}") failed'))
        if SSL_CTX_set_tmp_dh(self.ctx, dh) != 1:
            DH_free(dh)
            raise TlsConfigError(ssl_error(f'SSL_CTX_set_tmp_dh("{path}") failed'))
        DH_free(dh)

    def set_ecdh_curve(self, str curve):
        """`auto` keeps OpenSSL's list; a name or an `a:b:c` list is set as given."""
        SSL_CTX_set_options(self.ctx, SSL_OP_SINGLE_ECDH_USE)
        if curve == "auto":
            return
        if SSL_CTX_set1_curves_list(self.ctx, curve.encode()) == 0:
            raise TlsConfigError(ssl_error(f'SSL_CTX_set1_curves_list("{curve}") failed'))

    def set_session_cache(self, str mode, builtin, SessionZone zone, long timeout):
        """ngx_ssl_session_cache. `mode` off | none | cache; `builtin` None (not given), -1
        (OpenSSL's default size) or a size; `zone` the shared zone or None."""
        cdef long cache_mode
        SSL_CTX_set_timeout(self.ctx, timeout)
        self._session_id_context()
        if mode == "off":
            SSL_CTX_set_session_cache_mode(self.ctx, SSL_SESS_CACHE_OFF)
            return
        if mode == "none" or (builtin is None and zone is None):
            # Outlook Express needs a server that claims to cache sessions (nginx's comment)
            SSL_CTX_set_session_cache_mode(self.ctx, SSL_SESS_CACHE_SERVER
                                           | SSL_SESS_CACHE_NO_AUTO_CLEAR
                                           | SSL_SESS_CACHE_NO_INTERNAL_STORE)
            SSL_CTX_sess_set_cache_size(self.ctx, 1)
            return
        cache_mode = SSL_SESS_CACHE_SERVER
        if zone is not None and builtin is None:
            cache_mode |= SSL_SESS_CACHE_NO_INTERNAL
        SSL_CTX_set_session_cache_mode(self.ctx, cache_mode)
        if builtin is not None and builtin >= 0:
            SSL_CTX_sess_set_cache_size(self.ctx, builtin)
        if zone is not None:
            Py_XDECREF(self.data.zone)
            Py_INCREF(zone)
            self.data.zone = <PyObject *>zone
            SSL_CTX_sess_set_new_cb(self.ctx, _new_session)
            SSL_CTX_sess_set_get_cb(self.ctx, _get_session)
            SSL_CTX_sess_set_remove_cb(self.ctx, _remove_session)

    cdef _session_id_context(self):
        """ngx_ssl_session_id_context: SHA-1 of "MAIL", the certificates and the client CA
        names, so a session resumes only in a server{} with the same ones (CVE-2014-3616)."""
        cdef EVP_MD_CTX *md = EVP_MD_CTX_new()
        cdef unsigned char buf[64]
        cdef unsigned int n
        cdef OPENSSL_STACK *names
        cdef int i
        EVP_DigestInit_ex(md, EVP_sha1(), NULL)
        EVP_DigestUpdate(md, b"MAIL", 4)
        for d in self.cert_digests:
            EVP_DigestUpdate(md, <const char *>(<bytes>d), len(d))
        names = <OPENSSL_STACK *>SSL_CTX_get_client_CA_list(self.ctx)
        if names != NULL:
            for i in range(OPENSSL_sk_num(names)):
                if X509_NAME_digest(<X509_NAME *>OPENSSL_sk_value(names, i), EVP_sha1(), buf, &n):
                    EVP_DigestUpdate(md, buf, n)
        EVP_DigestFinal_ex(md, buf, &n)
        EVP_MD_CTX_free(md)
        if SSL_CTX_set_session_id_context(self.ctx, buf, n) == 0:
            raise TlsConfigError(ssl_error("SSL_CTX_set_session_id_context() failed"))

    def set_session_tickets(self, bint enabled, list keys):
        """ssl_session_tickets and ssl_session_ticket_key: `keys` are the files' bytes (48 or
        80 each; the first encrypts). None given: the master's own key."""
        global _process_key_made
        cdef TicketKey *k
        cdef Py_ssize_t i
        cdef const unsigned char *b
        if not enabled:
            SSL_CTX_set_options(self.ctx, SSL_OP_NO_TICKET)
        n = len(keys) if keys else 1
        k = <TicketKey *>calloc(n, sizeof(TicketKey))
        if k == NULL:
            raise MemoryError()
        if not keys:
            if not _process_key_made:
                if RAND_bytes(<unsigned char *>&_process_key, sizeof(TicketKey)) != 1:
                    free(k)
                    raise TlsConfigError(ssl_error("RAND_bytes() failed"))
                _process_key.size = 80
                _process_key_made = True
            k[0] = _process_key
        for i in range(len(keys) if keys else 0):
            b = <const unsigned char *>(<bytes>keys[i])
            k[i].size = len(keys[i])
            memcpy(k[i].name, b, 16)
            if k[i].size == 48:     # nginx's 48-byte layout: name, AES key, HMAC key
                memcpy(k[i].aes_key, b + 16, 16)
                memcpy(k[i].hmac_key, b + 32, 16)
            else:                   # 80: name, HMAC key, AES key
                memcpy(k[i].hmac_key, b + 16, 32)
                memcpy(k[i].aes_key, b + 48, 32)
        if self.data.keys != NULL:
            free(self.data.keys)
        self.data.keys = k
        self.data.nkeys = n
        SSL_CTX_set_tlsext_ticket_key_evp_cb(self.ctx, _ticket_key)

    def conf_commands(self, list commands, str conf_prefix):
        """ssl_conf_command: SSL_CONF_cmd for each (name, value), file and directory values
        under the conf prefix as nginx resolves them."""
        cdef SSL_CONF_CTX *cctx = SSL_CONF_CTX_new()
        cdef int kind
        if cctx == NULL:
            raise TlsConfigError(ssl_error("SSL_CONF_CTX_new() failed"))
        try:
            SSL_CONF_CTX_set_flags(cctx, SSL_CONF_FLAG_FILE | SSL_CONF_FLAG_SERVER
                                   | SSL_CONF_FLAG_CLIENT | SSL_CONF_FLAG_CERTIFICATE
                                   | SSL_CONF_FLAG_SHOW_ERRORS)
            SSL_CONF_CTX_set_ssl_ctx(cctx, self.ctx)
            for name, value in commands:
                kind = SSL_CONF_cmd_value_type(cctx, name.encode())
                if (kind == SSL_CONF_TYPE_FILE or kind == SSL_CONF_TYPE_DIR) and \
                        not value.startswith("/"):
                    value = conf_prefix + value
                if SSL_CONF_cmd(cctx, name.encode(), value.encode()) <= 0:
                    raise TlsConfigError(ssl_error(f'SSL_CONF_cmd("{name}", "{value}") failed'))
            if SSL_CONF_CTX_finish(cctx) != 1:
                raise TlsConfigError(ssl_error("SSL_CONF_finish() failed"))
        finally:
            SSL_CONF_CTX_free(cctx)

    def set_sni(self, SniMap sni):
        """Lets the client's SNI name pick another server{}'s context (this one is the
        default of its address)."""
        self.sni = sni
        SSL_CTX_set_tlsext_servername_callback(self.ctx, _servername)

    @property
    def ticket_key_names(self) -> list:
        """The names of the ticket keys (tests: which key encrypts)."""
        return [self.data.keys[i].name[:16] for i in range(self.data.nkeys)]


cdef void _free_x509_stack(OPENSSL_STACK *sk) noexcept:
    cdef int i
    for i in range(OPENSSL_sk_num(sk)):
        X509_free(<X509 *>OPENSSL_sk_value(sk, i))
    OPENSSL_sk_free(sk)


# --- SNI: server_name matching as nginx's http servers do it --------------------------------

cdef class SniMap:
    """server_name -> ServerContext for the server{} blocks sharing one TLS address: an exact
    name, then the longest `*.example.com` / `.example.com`, then the longest `mail.*`, then
    the first matching `~regex`; no match keeps the default (the first server declared)."""

    def __cinit__(self):
        self.exact = {}
        self.head_wild = []
        self.tail_wild = []
        self.regex = []

    def add(self, names, ServerContext ctx) -> None:
        for n in names:
            if n.startswith("~"):
                self.regex.append((re.compile(n[1:].encode()), ctx))
                continue
            b = n.lower().encode()
            if b.startswith(b"*."):
                self.head_wild.append((b[1:], ctx))
            elif b.startswith(b"."):
                self.exact.setdefault(b[1:], ctx)
                self.head_wild.append((b, ctx))
            elif b.endswith(b".*"):
                self.tail_wild.append((b[:len(b) - 1], ctx))
            elif b:
                self.exact.setdefault(b, ctx)
        self.head_wild.sort(key=lambda t: -len(t[0]))
        self.tail_wild.sort(key=lambda t: -len(t[0]))

    cdef ServerContext find(self, bytes name):
        if name.endswith(b"."):
            name = name[:len(name) - 1]
        ctx = self.exact.get(name)
        if ctx is not None:
            return ctx
        for suffix, c in self.head_wild:
            if name.endswith(suffix):
                return c
        for prefix, c in self.tail_wild:
            if name.startswith(prefix):
                return c
        for pattern, c in self.regex:
            if pattern.search(name):
                return c
        return None

    def lookup(self, str name):
        """find() from Python (tests)."""
        return self.find(name.lower().encode())


# --- client contexts (TLS to backends, beyond nginx mail) ------------------------------------

cdef class ClientContext:
    """A backend's SSL_CTX: `verify` checks the certificate chain against `cafile` (the system
    store when None) and the name the session gives tls_connect, after the handshake as nginx's
    http proxy does (tls_handshake fails with "upstream SSL certificate verify error")."""

    def __cinit__(self, bint verify, str cafile=None):
        self.ctx = SSL_CTX_new(TLS_client_method())
        if self.ctx == NULL:
            raise TlsConfigError(ssl_error("SSL_CTX_new() failed"))
        self.verify = verify
        SSL_CTX_set_options(self.ctx, SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF)
        SSL_CTX_set_mode(self.ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE
                         | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        SSL_CTX_set_read_ahead(self.ctx, 1)
        if not verify:
            SSL_CTX_set_verify(self.ctx, SSL_VERIFY_NONE, NULL)
            return
        SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER, _accept_any)
        if cafile:
            if SSL_CTX_load_verify_locations(self.ctx, _path(cafile), NULL) == 0:
                raise TlsConfigError(ssl_error(
                    f'SSL_CTX_load_verify_locations("{cafile}") failed'))
        elif SSL_CTX_set_default_verify_paths(self.ctx) == 0:
            raise TlsConfigError(ssl_error("SSL_CTX_set_default_verify_paths() failed"))
        ERR_clear_error()

    def __dealloc__(self):
        if self.ctx != NULL:
            SSL_CTX_free(self.ctx)


def openssl_versions():
    """(the OpenSSL fastmail was built with, the one running): nginx's -V line names both
    when they differ."""
    return OPENSSL_VERSION_TEXT.decode(), OpenSSL_version(OPENSSL_VERSION).decode()
