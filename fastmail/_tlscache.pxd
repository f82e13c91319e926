# The TLS session-ID cache shared by all workers (`ssl_session_cache shared:NAME:SIZE`): a
# fixed-size store in memory mapped before fork. It holds DER-encoded sessions by session ID;
# _tlsctx's OpenSSL callbacks encode and decode them outside the lock.

cdef class SessionZone:
    cdef void *base             # the mapping: zone header, hash buckets, then the ring
    cdef size_t size
    cdef readonly str name
    cdef object __weakref__     # the registry keeps zones weakly

    # all three take the lock; `now`/`expire` are time(NULL) seconds
    cdef int store(self, const unsigned char *sid, unsigned int sid_len,
                   const unsigned char *der, size_t der_len, long expire) noexcept
    cdef Py_ssize_t fetch(self, const unsigned char *sid, unsigned int sid_len,
                          unsigned char *out, size_t cap, long now) noexcept
    cdef void remove(self, const unsigned char *sid, unsigned int sid_len) noexcept
