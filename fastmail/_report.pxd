# What a session reports, and the server{} it reports for (see _report.pyx).

from libc.stdint cimport int64_t
from fastmail._core cimport Machine, Profile
from fastmail._login cimport LoginConf
from fastmail._upstream cimport Upstream
from fastmail._proxy cimport TrustedNetworks
from fastmail._auth cimport AuthClient
from fastmail._tlsctx cimport ServerContext


# What a session counts (fastmail/metrics.py: SESSION_SERIES names them, in this order: see
# SERIES in _report.pyx); Server.mx holds their indices in the metrics region.
cdef enum:
    SM_ACCEPTED = 0
    SM_OPEN
    SM_LOGIN_OK
    SM_LOGIN_FAILED_CREDENTIALS
    SM_LOGIN_FAILED_BACKEND
    SM_LOGIN_TEMP_AUTH                  # auth_http's 4xx Auth-Error-Code
    SM_LOGIN_TEMP_AUTH_HTTP             # no usable auth_http answer
    SM_LOGIN_TEMP_BACKEND
    SM_AUTH_SECONDS                     # histograms
    SM_CONNECT_SECONDS
    SM_LOGIN_SECONDS
    SM_BACKEND_ERRORS                   # + Upstream's BE_* - 1
    SM_BYTES_UP = SM_BACKEND_ERRORS + 6
    SM_BYTES_DOWN
    SM_RELAYS
    SM_TLS_CLIENT                       # + TLS_FULL/TLS_RESUMED/TLS_FAILED
    SM_TLS_BACKEND = SM_TLS_CLIENT + 3  # + the same
    SM_END = SM_TLS_BACKEND + 3         # + E_* - 1
    SM_LIMITED = SM_END + 9             # + 0 conn_per_ip, 1 login_delayed, 2 login_refused
    SM_COUNT = SM_LIMITED + 3

cdef enum:
    TH_FULL = 0
    TH_RESUMED
    TH_FAILED

# why a session ended (Session.end); the first cause found wins
cdef enum:
    E_NONE = 0
    E_QUIT                              # the machine closed after the client's QUIT/LOGOUT
    E_CLIENT_CLOSED
    E_BACKEND_CLOSED
    E_TIMEOUT
    E_ERROR
    E_AUTH_ERROR                        # auth_http gave no usable answer
    E_AUTH_FAILED                       # the login failed without Auth-Wait: nginx closes
    E_BACKEND_ERROR
    E_SHUTDOWN


cdef class Server:
    cdef public object conf
    cdef public Profile profile
    cdef public LoginConf login_conf
    cdef public AuthClient auth         # the auth_http client
    cdef public object resolver         # fastmail.resolver.Resolver, or None
    cdef public TrustedNetworks trusted  # realip: set_real_ip_from
    cdef public object log              # fastmail.log.ErrorLog
    cdef public int log_level
    cdef public bint smtp               # Client-Host goes to auth_http (and is resolved)
    cdef public int64_t timeout         # ms
    cdef public int64_t proxy_timeout   # ms
    cdef public int64_t auth_limit      # ms: timeout + auth_http_timeout per URL, the auth_http
                                        # phase of a login (WAIT repeats and Auth-Wait included)
    cdef public str proxy_protocol      # towards the backend: "off", "on" (v1) or "v2"
    cdef public ServerContext tls       # the server TLS context (implicit TLS, STARTTLS), or None
    cdef public int next_tries          # proxy_next_upstream_tries (1: nginx's)
    cdef Py_ssize_t mx[SM_COUNT]        # metrics indices (_metrics: NONE when off)
    cdef public tuple alog              # the access log: (Writer, Format) pairs, or None
    cdef public bint alog_local         # its formats name the address the client reached
    cdef public bytes alog_name         # server_name and protocol, for its lines
    cdef public bytes alog_proto
    cdef public object conn_limit       # conf ConnLimit (limit_conn_per_ip), or None
    cdef public object fail_limit       # conf LoginFailLimit (login_fail_limit), or None
    cdef public bytes busy_reply        # the protocol's reply to a connection over the limit
    cdef public tuple throttle_reply    # (text, code) for on_auth_fail: a throttled login


cdef class Entry:
    cdef public Server server
    cdef public bytes host              # the address text; b"" for unix sockets
    cdef public int port
    cdef public bint wildcard
    cdef public bint ssl
    cdef public bint proxy_protocol
    cdef public str addr_text           # nginx's text for log lines ("127.0.0.1:143")


cdef class Reporter(Upstream):
    # set by the session (_session.Session), read here
    cdef Server srv
    cdef Entry entry
    cdef Machine m
    cdef readonly long id
    cdef bytes client_ip                # after realip
    cdef int client_port
    cdef bytes user                     # the login, for log lines after the machine is gone
    cdef bint starttls                  # STARTTLS was used (nginx's " using starttls")
    cdef str shut_reason
    cdef int64_t t_begin                # loop ms at accept
    cdef Py_ssize_t mx_open             # the open-connections gauge counted at accept
    cdef int end                        # E_*
    cdef int a_result                   # the last login attempt: 0 none, SM_LOGIN_* otherwise
    cdef bint up_counted                # this backend's failure is counted (a failover's)
    cdef bytes a_login                  # its login and method, as the client sent them
    cdef bytes a_method
    cdef const char *tls_proto          # OpenSSL's static names, once the handshake is done
    cdef const char *tls_cipher
    cdef bytes local_ip                 # where the client connected (a wildcard listener's
    cdef int local_port                 # getsockname()), when the access log names it
    cdef int _backend_over(self, bint ok) except -1
    cdef int _attempt_over(self, bint ok) except -1
    cdef int _ended(self) except -1
    cdef int _access_log(self, Server srv) except -1
    cdef str _peer_text(self)
    cdef object _local_addr(self)
    cdef str _local_text(self)
    cdef str _context(self, str action)
    cdef int _log(self, int level, str message, str action) except -1
    cdef int _relay_log(self, int why) except -1
    cdef inline int _end_as(self, int why) noexcept:
        if self.end == E_NONE:
            self.end = why
        return 0
