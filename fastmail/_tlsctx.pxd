# TLS contexts: OpenSSL SSL_CTX objects built from the mail ssl_* directives (server side) and
# for backends (client side), the callbacks OpenSSL calls on them (ALPN, SNI, session tickets,
# the shared session cache, client certificates) and nginx's OpenSSL error text.

from cpython.ref cimport PyObject

from fastmail._openssl cimport SSL, SSL_CTX


# What a context's callbacks need, kept in the SSL_CTX's ex_data: it lives as long as the
# SSL_CTX (which the SSL objects made from it keep alive), not as long as the Python object.
cdef struct TicketKey:
    unsigned char name[16]
    unsigned char hmac_key[32]
    unsigned char aes_key[32]
    int size                    # 48: AES-128 and a 16-byte HMAC key (nginx's layout), or 80

cdef struct CtxData:
    PyObject *pyctx             # the ServerContext (borrowed), NULL once it is gone
    PyObject *zone              # the shared session cache (a SessionZone, owned) or NULL
    TicketKey *keys             # the first encrypts, all decrypt; NULL: OpenSSL's own
    int nkeys
    unsigned char alpn[16]      # the protocol's ALPN name in wire form: b"\x04imap"
    int verify                  # ssl_verify_client: 0 off, 1 on, 2 optional, 3 optional_no_ca


cdef class ServerContext:
    cdef SSL_CTX *ctx
    cdef CtxData *data
    cdef list cert_digests      # SHA-1 of each certificate (the session ID context)
    cdef readonly str protocol
    cdef readonly tuple cert_replies    # the protocol table's (bad certificate, none) replies
    cdef readonly int verify
    cdef public object owner    # what the engine registered (tls_chosen returns it)
    cdef readonly SniMap sni    # when several server{} share this context's address
    cdef _session_id_context(self)


cdef class ClientContext:
    cdef SSL_CTX *ctx
    cdef readonly bint verify


cdef class SniMap:
    cdef dict exact
    cdef list head_wild         # (".example.com", ctx) longest first
    cdef list tail_wild         # ("mail.", ctx) longest first
    cdef list regex             # (compiled pattern, ctx) in declaration order
    cdef ServerContext find(self, bytes name)


cdef CtxData *ctx_data(const SSL *ssl) noexcept
cdef SSL_CTX *session_ctx(const SSL *ssl) noexcept
cdef str ssl_error(str text)    # text + " (SSL: ...)" from OpenSSL's error queue, as nginx
cdef int remove_session(SSL *ssl) noexcept   # drop the SSL's session from every cache
