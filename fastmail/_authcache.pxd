# The cache of auth_http answers (auth_http_cache, beyond nginx): keyed hashes of what a request
# carried, answers kept for a short time, least recently used dropped first.

from libc.stdint cimport int64_t

from fastmail._authproto cimport AuthResult


cdef class AuthCache:
    cdef object _entries                # OrderedDict: key -> (expires, AuthResult), LRU first
    cdef readonly long size             # entries at most
    cdef readonly long valid_ms         # an OK answer is kept this long
    cdef readonly long fail_ms          # a failure (0: not kept)
    cdef bytes _secret                  # the BLAKE2b key, random per process
    cdef readonly long hits
    cdef readonly long misses

    cdef bytes key(self, bytes text)
    cdef AuthResult get(self, bytes key, int64_t now)
    cdef int put(self, bytes key, AuthResult r, int64_t now, bytes user) except -1
    cdef int forget(self, bytes key) except -1
