# The backend side of a session before the relay: connect, TLS to the backend, the login.

from libc.stdint cimport uint32_t, int64_t
from fastmail._relay cimport Relay
from fastmail._login cimport BackendLogin
from fastmail._tlsctx cimport ClientContext


# what went wrong with the backend (Upstream.up_err), in the order of the engine's
# SM_BACKEND_* series
cdef enum:
    BE_NONE = 0
    BE_CONNECT
    BE_TIMEOUT
    BE_TLS
    BE_CLOSED                           # EOF before the login ended
    BE_IO                               # a send or recv error
    BE_REFUSED                          # the backend's reply refused the login

# TLS to the backend (Upstream.up_tls)
cdef enum:
    UT_NONE = 0
    UT_FULL
    UT_RESUMED
    UT_FAILED


cdef class Upstream(Relay):
    cdef BackendLogin login
    cdef bytes up_server                # Auth-Server, once auth_http named the backend
    cdef int up_port                    # Auth-Port
    cdef object trace                   # debuglog.Trace, only when the log takes debug lines
    cdef ClientContext tls_ctx          # TLS to the backend (proxy_ssl), or None
    cdef bytes tls_name                 # its SNI name / the name verified
    cdef bint up_connected              # the connect completed
    cdef bint up_tls_pending            # ACT_STARTTLS seen: the handshake waits for the output
    cdef bint up_handshaking            # the backend handshake runs
    # beyond nginx: another backend when this one cannot be reached (proxy_next_upstream_tries)
    cdef int up_tries                   # backends a login may try (1: nginx's; 0: no limit)
    cdef bytes up_addr                  # the backend being tried, b"ip:port" (with up_tries != 1)
    cdef list up_failed_addrs           # the ones that failed in this login, or None
    cdef BackendLogin up_spent          # the last failed one's machine: the client's reply
    cdef str up_why                     # ... and why it failed
    cdef int up_err                     # BE_*: the first failure
    cdef int up_tls                     # UT_*
    cdef int64_t up_t0                  # µs (_metrics.mx_now_us): connect() called
    cdef int64_t up_t1                  # µs: connected

    cdef int up_connect(self, bytes addr, int port, BackendLogin login) except -1
    cdef int up_io(self, uint32_t events) except -1
    cdef int up_actions(self, int acts) except -1
    cdef int up_failed(self, str reason, int level, int kind) except -1
    cdef int up_drop(self) except -1
    cdef int up_give_up(self) except -1
    cdef int up_untried(self, str addr, object port) except -1
    cdef int _up_next(self, str reason, int level) except -1
    cdef int _up_close(self) except -1
    cdef int _up_read(self) except -1
    cdef int _up_tls_start(self) except -1
    cdef int _up_handshake(self) except -1
    cdef str _io_error(self, str call)

    # what the session does with the outcome (its subclass implements them)
    cdef int up_active(self) noexcept
    cdef int up_send_client(self, bytes data) except -1
    cdef int up_logged_in(self) except -1
    cdef int up_refused(self) except -1
    cdef int up_log(self, int level, str message, str action) except -1
    cdef int up_opened(self) except -1
    cdef int up_unreachable(self) except -1
    cdef int up_reask(self) except -1
