# TLS connections: the per-connection primitives the engine calls with an SSL * it keeps in
# its own structs. No Python object is touched on the hot path (handshake, read, write); the
# failure text is built only on failure. Every SSL * from tls_accept/tls_connect must be given
# to tls_free exactly once.

from fastmail._openssl cimport SSL
from fastmail._tlsctx cimport ClientContext, ServerContext

cdef enum:
    TLS_OK = 0
    TLS_FAIL = -1           # the text: tls_error(), the level: tls_error_level()
    TLS_WANT_READ = -2      # call again when the socket is readable
    TLS_WANT_WRITE = -3     # ... writable
    TLS_CLOSED = -4         # the peer closed (close_notify, or EOF as nginx counts it)

cdef SSL *tls_accept(ServerContext ctx, int fd) except NULL
cdef SSL *tls_connect(ClientContext ctx, int fd, bytes name) except NULL
cdef int tls_handshake(SSL *ssl) noexcept
cdef Py_ssize_t tls_read(SSL *ssl, char *buf, size_t size) noexcept
cdef Py_ssize_t tls_write(SSL *ssl, const char *buf, size_t size) noexcept
cdef bint tls_pending(SSL *ssl) noexcept
cdef int tls_shutdown(SSL *ssl) noexcept
cdef void tls_free(SSL *ssl) noexcept

cdef bytes tls_get_session(SSL *ssl)
cdef int tls_set_session(SSL *ssl, bytes der) except -1

cdef str tls_error()
cdef int tls_error_level(bint client) noexcept

cdef bint tls_reused(SSL *ssl) noexcept
cdef const char *tls_names(SSL *ssl, const char **cipher) noexcept
cdef str tls_version(SSL *ssl)
cdef str tls_cipher(SSL *ssl)
cdef object tls_alpn(SSL *ssl)
cdef object tls_chosen(SSL *ssl)
cdef int tls_verify(SSL *ssl) noexcept
cdef object tls_cert_check(SSL *ssl, int verify, tuple replies)
cdef dict tls_auth_info(SSL *ssl, int verify)
