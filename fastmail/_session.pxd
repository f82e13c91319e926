# The session engine: one client connection from accept to the end of its relay.

from libc.stdint cimport uint32_t, int64_t
from fastmail._poll cimport Loop, TNode
from fastmail._conn cimport Acceptor, Sock
from fastmail._core cimport Machine, Profile
from fastmail._login cimport LoginConf
from fastmail._report cimport Server, Entry, Reporter
from fastmail._proxy cimport TrustedNetworks
from fastmail._auth cimport AuthClient, AuthResult
from fastmail._tlsctx cimport ServerContext


cdef class Session


cdef class Owner(Acceptor):
    # What a session needs of the worker that accepted it (fastmail._engine.Engine).
    cdef public Loop loop
    cdef public dict by_conf            # id(ServerConf) -> Server: the server{} SNI chose
    cdef public long connections        # client and backend sockets open
    cdef public object guard            # fastmail.guard.Guard: the abuse limits' state
    cdef int ended(self, Session s) except -1



cdef class Session(Reporter):
    cdef Owner eng
    cdef readonly int state
    cdef bytes client_host              # SMTP Client-Host
    cdef object pp                      # the PROXY header read, or None
    cdef bytearray pending              # PROXY header bytes; bytes read while resolving
    cdef object auth_handle             # the running auth_http request
    cdef object lookup                  # the running Client-Host lookup
    cdef object result                  # an auth failure waiting out Auth-Wait
    cdef TNode t_aux
    cdef bint tls                       # the client side is TLS (implicit, or after STARTTLS)
    cdef bint tls_pending               # STARTTLS: the handshake waits for the reply to go out
    cdef str target                     # the backend's address text, for the debug lines
    cdef bytes cache_key                # the auth_http_cache entry that named the backend
    cdef bytes ask_user, ask_passwd     # the credentials asked about (a backend failover's
                                        # new question carries them again)
    # what the metrics and the access log read at the end
    cdef int64_t t_auth                 # µs: the running auth_http request was made
    cdef readonly bytes ip_key          # the address key counted for limit_conn_per_ip
    cdef bint throttled                 # login_fail_limit delays this login (t_aux)
    cdef int begin(self, Owner eng, Entry e, int fd, bytes ip, int port, long cid) except -1
    cdef int _to(self, int state) except -1
    cdef int _start(self) except -1
    cdef int _resolve(self) except -1
    cdef int _start_machine(self) except -1
    cdef int _read_client(self) except -1
    cdef int _read_proxy(self) except -1
    cdef int run(self, int acts) except -1
    cdef int _send(self, bytes data) except -2
    cdef str _hs_action(self)
    cdef int _start_tls(self, bint implicit) except -1
    cdef int _tls_begin(self) except -1
    cdef int _handshake(self) except -1
    cdef int _tls_done(self) except -1
    cdef int _switch(self, Server srv) except -1
    cdef int _ask_auth(self) except -1
    cdef object _extra(self)
    cdef int _send_ask(self) except -1
    cdef int _throttle(self, long delay) except -1
    cdef bint _over_conn_limit(self) except -1
    cdef object _ssl_info(self)
    cdef int _auth_done(self, AuthResult res) except -1
    cdef int _auth_failed(self, bint retry) except -1
    cdef int _auth_overdue(self) except -1
    cdef int _connect_backend(self, AuthResult res) except -1
    cdef bytes _backend_proxy_header(self)
    cdef int _logged_in(self) except -1
    cdef bytes _take_out(self, Sock *s)
    cdef int close(self) except -1
    cdef int _stop_work(self) except -1
    cdef int failed(self) except -1
    cdef int finish(self) except -1
    cdef int shut(self, str reason) except -1
