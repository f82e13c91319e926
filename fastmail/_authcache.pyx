# cython: language_level=3
"""The cache of auth_http answers (auth_http_cache, beyond nginx).

Owns: the answers kept per worker, for `valid` (OK) or `fail` (a failure, Auth-Wait or not),
at most `size` of them, the least recently used dropped first; the key, a BLAKE2b hash keyed
with a secret made per process over the request's text without its per-connection parts
(_authreq's key mode): credentials never stay in memory, only the keyed hash of them. Only
what the auth client hands it is kept (it decides what may be: never an error, a WAIT, a salted
login, an answer carrying another password); an answer comes out as a copy.
Must not do I/O or know sessions.
"""

from collections import OrderedDict
from hashlib import blake2b

from libc.stdint cimport int64_t

import os

from fastmail._authproto cimport AuthResult


cdef AuthResult _copy(AuthResult r, bytes user):
    cdef AuthResult c = AuthResult.__new__(AuthResult)
    c.status = r.status
    c.server = r.server
    c.port = r.port
    c.addr = r.addr
    c.user = user
    c.passwd = None
    c.error_message = r.error_message
    c.error_code = r.error_code
    c.sasl_error = r.sasl_error
    c.ssl_backend = r.ssl_backend
    c.backend_auth = r.backend_auth
    c.wait = r.wait
    c.log_message = r.log_message
    c.log_level = r.log_level
    return c


cdef class AuthCache:
    """`size` answers at most; `valid_ms` for OK answers, `fail_ms` for failures."""

    def __init__(self, long size, long valid_ms, long fail_ms):
        if size <= 0:
            raise ValueError("auth_http_cache size must be positive")
        self._entries = OrderedDict()
        self.size = size
        self.valid_ms = valid_ms
        self.fail_ms = fail_ms
        self._secret = os.urandom(32)

    cdef bytes key(self, bytes text):
        return blake2b(text, digest_size=16, key=self._secret).digest()

    cdef AuthResult get(self, bytes key, int64_t now):
        """A copy of the answer kept under `key`, or None (a miss); counts both."""
        entry = self._entries.get(key)
        if entry is not None:
            if <int64_t>entry[0] > now:
                self._entries.move_to_end(key)
                self.hits += 1
                return _copy(<AuthResult>entry[1], (<AuthResult>entry[1]).user)
            del self._entries[key]
        self.misses += 1
        return None

    cdef int put(self, bytes key, AuthResult r, int64_t now, bytes user) except -1:
        """Keeps a copy of `r` (ok or fail; its password never) under `key`, with `user` the
        login it leaves (None: the one asked about)."""
        cdef long ttl = self.valid_ms if r.status == "ok" else self.fail_ms
        if ttl <= 0:
            return 0
        self._entries[key] = (now + ttl, _copy(r, user))
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return 0

    cdef int forget(self, bytes key) except -1:
        self._entries.pop(key, None)
        return 0

    def __len__(self):
        return len(self._entries)

    # --- for tests --------------------------------------------------------------------------------

    def lookup(self, bytes text, int64_t now):
        """The answer kept for the key text `text` at loop time `now`, or None."""
        return self.get(self.key(text), now)

    def store(self, bytes text, AuthResult r, int64_t now):
        self.put(self.key(text), r, now, r.user)
