# Backend login machines: the dialogue with the backend between connect and relay.

from fastmail._core cimport AuthRequest


# BackendLogin.state: FINISHED is the login's end (logged in or failed), the same in every
# module; each protocol numbers its own states from FIRST_STATE (_login.pyx, _smtplogin.pyx).
# FINISHED is 0 so that a login never initialised takes no backend bytes.
cdef enum:
    FINISHED = 0
    FIRST_STATE = 1

# BackendLogin.stls_proto: the dialect of the proxy_ssl starttls dialogue
cdef enum:
    PROTO_IMAP = 0
    PROTO_POP3 = 1
    PROTO_SMTP = 2
    PROTO_SIEVE = 3


cdef inline bint has_ctl(bytes data):
    """CR, LF or NUL: a value that would split or cut a backend command line."""
    return b"\r" in data or b"\n" in data or b"\0" in data


cdef class BackendLogin:
    cdef bytearray rbuf
    cdef bytes _out                # for the client, in order (few writes: bytes, not a buffer)
    cdef bytes _bout               # for the backend
    cdef Py_ssize_t limit
    cdef bint pass_error
    cdef int state
    cdef bytes proxy_header
    cdef bytes internal_error
    cdef readonly AuthRequest auth
    cdef public str phase          # nginx's log action ("reading response from upstream")
    cdef public str close_reason   # log text after ACT_CLOSE (no " while ..." part)
    cdef public str log_level      # "error" or "info" for close_reason
    cdef public int tls_mode       # proxy_ssl: 0 off, 1 on, 2 starttls (TLS_MODES)
    cdef int tls_stage
    cdef int stls_proto
    cdef bytes greeting            # the backend's greeting read before STARTTLS
    cdef bint client_id            # proxy_client_id (beyond nginx): tell who the client is
    cdef bytes client_ip           # set_client(): the client after realip ...
    cdef int client_port
    cdef bytes local_ip            # ... and where it reached the proxy (None: unix socket)
    cdef int local_port

    cpdef int start(self)
    cpdef int on_tls_done(self)
    cpdef int feed(self, bytes data)
    cdef int _starttls(self, bytes data) except -1
    cdef int _replies(self) except -1
    cpdef int on_error(self, str reason=*)
    cpdef void set_client(self, bytes client_ip, int client_port, bytes local_ip,
                          int local_port)
    cpdef bytes take_output(self)
    cpdef bytes take_backend_output(self)
    cdef int _setup(self, AuthRequest auth, Py_ssize_t proxy_buffer, bint pass_error_message,
                    bytes proxy_header) except -1
    cdef bint _unsafe(self)
    cdef int _on_reply(self) except -1
    cdef int _send(self, bytes line, int state)
    cdef int _internal(self, str reason, str level)
    cdef int _invalid(self)
    cdef int _done(self, bytes client_bytes)
    cdef int _done_reply(self, Py_ssize_t start)
    cdef int _skip(self)


cdef class LoginConf:
    # One per server{} block: the proxy_* settings a backend login reads, made at config time.
    cdef public Py_ssize_t proxy_buffer
    cdef public bint pass_error_message
    cdef public bint pipelining          # proxy_pipelining (beyond nginx)
    cdef public bint client_id           # proxy_client_id (beyond nginx)
    cpdef BackendLogin new_login(self, AuthRequest auth, bytes client_addr, bytes client_host,
                                 bytes proxy_header)
