/* bench/servers.c: the bench's fast auth_http server and fake IMAP/POP3/SMTP/ManageSieve backend.
 *
 * Owns: the servers a proxy under test talks to, written so that they cost far less CPU per
 * session than the proxy (one epoll loop, no allocation per request beyond a connection's
 * buffers). `servers auth` answers nginx's auth_http (HTTP/1.0, one request per connection)
 * and fastmail's (HTTP/1.1 keep-alive) with the backend port for the protocol; with -C it
 * answers every request HTTP/1.0 style and closes after the answer, whatever the request's
 * version, as nginx-style auth scripts do. `servers backend` does the backend side of a login
 * (IMAP LOGIN with nginx's literals, LITERAL+ literals or quoted strings, announced by a
 * LITERAL+ greeting; POP3 USER/PASS; SMTP EHLO/XCLIENT/EHLO, pipelined commands answered in
 * order; ManageSieve AUTHENTICATE "PLAIN" with a quoted initial response, after a capability
 * greeting), then LOGOUT/QUIT, or echoes every byte when the user's name starts with "echo" (the
 * relay scenarios).  Must not: bind anything but 127.0.0.1, outlive its
 * parent (PR_SET_PDEATHSIG) or a deadline (-t), or check anything about the proxy: it is load,
 * not a test.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { P_IMAP, P_POP3, P_SMTP, P_SIEVE, P_HTTP };
#define LINEBUF 4096
#define ECHOBUF 65536
#define OUTBUF 1024

typedef struct {
    int fd, proto, listener, echo, closing, keep;
    size_t literal;   /* IMAP: bytes of literal still to skip or collect */
    int lit_is_user;  /* the literal being read is LOGIN's user name */
    int lit_count;
    char user[64];
    char tag[32];     /* IMAP: the tag of a LOGIN sent with literals */
    char *in;         /* line buffer (LINEBUF) or echo buffer (ECHOBUF) */
    size_t inlen;
    char out[OUTBUF]; /* replies not yet written */
    size_t outlen;
    char *pend;       /* echo bytes not yet written */
    size_t pendlen;
} conn_t;

static int epfd;
static conn_t **conns; /* by fd */
static int maxfd;
static int backend_port[4]; /* IMAP, POP3, SMTP, and ManageSieve when given */
static const char *password = "pass";
static int close_always; /* auth -C: HTTP/1.0 and close after every answer */
static unsigned long auth_requests; /* auth_http requests answered (GET /stats tells) */

static void set_events(conn_t *c, unsigned ev) {
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e);
}

static void conn_free(conn_t *c) {
    close(c->fd);
    conns[c->fd] = NULL;
    free(c->in);
    free(c);
}

/* Queues a reply; small, so one send normally takes it all. */
static void reply(conn_t *c, const char *s, size_t n) {
    if (c->outlen + n > OUTBUF) { /* a client that does not read: drop it */
        c->closing = 2;
        return;
    }
    memcpy(c->out + c->outlen, s, n);
    c->outlen += n;
}
#define REPLY(c, lit) reply(c, lit, sizeof(lit) - 1)

/* Returns 0 when all written (or the conn was dropped: c->closing == 2). */
static int flush(conn_t *c) {
    while (c->outlen) {
        ssize_t w = send(c->fd, c->out, c->outlen, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) return 1;
            c->closing = 2;
            return 0;
        }
        memmove(c->out, c->out + w, c->outlen - w);
        c->outlen -= w;
    }
    return 0;
}

static void start_echo(conn_t *c) {
    c->echo = 1;
    char *b = malloc(ECHOBUF);
    if (!b) {
        c->closing = 2;
        return;
    }
    /* bytes pipelined after the login line are echoed too */
    memcpy(b, c->in, c->inlen);
    free(c->in);
    c->in = b;
}

static void logged_in(conn_t *c) {
    if (!strncmp(c->user, "echo", 4)) c->echo = 1; /* switched once the line is consumed */
}

static void set_user(conn_t *c, const char *s, size_t n) {
    if (n >= sizeof(c->user)) n = sizeof(c->user) - 1;
    memcpy(c->user, s, n);
    c->user[n] = 0;
}

static const char *word(const char *s, const char *end, size_t *n) {
    while (s < end && *s == ' ') s++;
    const char *e = s;
    while (e < end && *e != ' ' && *e != '\r' && *e != '\n') e++;
    *n = e - s;
    return s;
}

/* An IMAP astring at s: a quoted string (unquoted, backslash escapes removed) or an atom. The
 * value goes to out (at most cap-1 bytes kept); returns where the astring ends. */
static const char *astring(const char *s, const char *end, char *out, size_t cap) {
    size_t k = 0;
    while (s < end && *s == ' ') s++;
    if (s < end && *s == '"') {
        for (s++; s < end && *s != '"'; s++) {
            if (*s == '\\' && s + 1 < end) s++;
            if (k < cap - 1) out[k++] = *s;
        }
        out[k] = 0;
        return s < end ? s + 1 : s;
    }
    size_t n;
    const char *w = word(s, end, &n);
    if (n >= cap) n = cap - 1;
    memcpy(out, w, n);
    out[n] = 0;
    return w + n;
}

/* -- backend: one line (without CRLF) ---------------------------------------------------------- */

static void imap_line(conn_t *c, const char *l, size_t n) {
    const char *end = l + n;
    size_t tl, cl;
    /* a line ending in {N} announces a literal: nginx sends LOGIN's user and password so,
     * "1 LOGIN {4}", "user {4}", "pass", each after our "+ go ahead"; {N+} (LITERAL+, RFC 7888)
     * needs no continuation, so the whole LOGIN can come in one packet */
    if (n > 2 && l[n - 1] == '}') {
        const char *o = memrchr(l, '{', n);
        if (o) {
            if (c->lit_count == 0) {
                const char *tag = word(l, end, &tl);
                if (tl >= sizeof(c->tag)) tl = sizeof(c->tag) - 1;
                memcpy(c->tag, tag, tl);
                c->tag[tl] = 0;
            }
            c->literal = strtoul(o + 1, NULL, 10);
            c->lit_is_user = c->lit_count++ == 0;
            if (l[n - 2] != '+') REPLY(c, "+ go ahead\r\n");
            return;
        }
    }
    if (c->lit_count) { /* the rest of a LOGIN sent with literals */
        c->lit_count = 0;
        reply(c, c->tag, strlen(c->tag));
        REPLY(c, " OK LOGIN completed\r\n");
        logged_in(c);
        return;
    }
    const char *tag = word(l, end, &tl);
    const char *cmd = word(tag + tl, end, &cl);
    if (cl == 5 && !strncasecmp(cmd, "LOGIN", 5)) {
        /* one line: `a LOGIN user pass` or `a LOGIN "user" "pass"` */
        astring(cmd + cl, end, c->user, sizeof(c->user));
        reply(c, tag, tl);
        REPLY(c, " OK LOGIN completed\r\n");
        logged_in(c);
    } else if (cl == 6 && !strncasecmp(cmd, "LOGOUT", 6)) {
        REPLY(c, "* BYE bench backend logging out\r\n");
        reply(c, tag, tl);
        REPLY(c, " OK LOGOUT completed\r\n");
        c->closing = 1;
    } else if (tl == 0 || cl == 0) {
        REPLY(c, "* BAD missing command\r\n");
    } else {
        reply(c, tag, tl);
        REPLY(c, " OK done\r\n");
    }
}

static void pop3_line(conn_t *c, const char *l, size_t n) {
    const char *end = l + n;
    size_t cl, al;
    const char *cmd = word(l, end, &cl);
    if (cl == 4 && !strncasecmp(cmd, "USER", 4)) {
        const char *u = word(cmd + cl, end, &al);
        set_user(c, u, al);
        REPLY(c, "+OK user accepted\r\n");
    } else if (cl == 4 && !strncasecmp(cmd, "PASS", 4)) {
        REPLY(c, "+OK logged in\r\n");
        logged_in(c);
    } else if (cl == 4 && !strncasecmp(cmd, "QUIT", 4)) {
        REPLY(c, "+OK bench backend bye\r\n");
        c->closing = 1;
    } else {
        REPLY(c, "+OK\r\n");
    }
}

static void smtp_line(conn_t *c, const char *l, size_t n) {
    const char *end = l + n;
    size_t cl, al;
    const char *cmd = word(l, end, &cl);
    if (cl == 4 && (!strncasecmp(cmd, "EHLO", 4) || !strncasecmp(cmd, "HELO", 4))) {
        /* XCLIENT advertised, as Postfix behind nginx: the login name reaches the backend */
        REPLY(c, "250-bench.backend\r\n250-PIPELINING\r\n250-XCLIENT NAME ADDR PROTO HELO LOGIN\r\n"
                 "250 8BITMIME\r\n");
        if (c->user[0]) logged_in(c);
    } else if (cl == 7 && !strncasecmp(cmd, "XCLIENT", 7)) {
        const char *p = cmd + cl;
        while (p < end) {
            const char *w = word(p, end, &al);
            if (al > 6 && !strncasecmp(w, "LOGIN=", 6)) set_user(c, w + 6, al - 6);
            p = w + al;
            if (!al) break;
        }
        REPLY(c, "220 bench.backend ESMTP\r\n");
    } else if (cl == 4 && !strncasecmp(cmd, "QUIT", 4)) {
        REPLY(c, "221 2.0.0 bye\r\n");
        c->closing = 1;
    } else {
        REPLY(c, "250 2.0.0 Ok\r\n");
    }
}

/* ManageSieve: `AUTHENTICATE "PLAIN" "<base64 \0user\0pass>"` logs in (the user is taken from the
 * base64, for the echo users); a literal initial response is taken as a login without a user */
static int b64val(char ch) {
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    return ch == '+' ? 62 : ch == '/' ? 63 : -1;
}

static void sieve_line(conn_t *c, const char *l, size_t n) {
    const char *end = l + n;
    size_t cl;
    const char *cmd = word(l, end, &cl);
    if (c->lit_count) { /* the end of an AUTHENTICATE line whose response was a literal */
        c->lit_count = 0;
        REPLY(c, "OK \"Logged in.\"\r\n");
        logged_in(c);
    } else if (cl == 12 && !strncasecmp(cmd, "AUTHENTICATE", 12)) {
        if (n > 2 && l[n - 1] == '}' && memrchr(l, '{', n)) {
            c->literal = strtoul((const char *)memrchr(l, '{', n) + 1, NULL, 10);
            c->lit_count = 1;
            return;
        }
        const char *q = memrchr(l, '"', n); /* the initial response: the last quoted string */
        const char *o = q ? memrchr(l, '"', q - l) : NULL;
        char raw[96];
        size_t k = 0;
        int acc = 0, bits = 0, v;
        for (const char *p = o ? o + 1 : q; p && p < q && (v = b64val(*p)) >= 0; p++) {
            acc = (acc << 6 | v) & 0xFFFFFF;
            bits += 6;
            if (bits >= 8 && k < sizeof(raw)) raw[k++] = (char)(acc >> (bits -= 8));
        }
        const char *u = memchr(raw, 0, k); /* authzid \0 user \0 pass */
        const char *e = u ? memchr(u + 1, 0, k - (u + 1 - raw)) : NULL;
        if (u && e) set_user(c, u + 1, e - u - 1);
        REPLY(c, "OK \"Logged in.\"\r\n");
        logged_in(c);
    } else if (cl == 6 && !strncasecmp(cmd, "LOGOUT", 6)) {
        REPLY(c, "OK \"Logout completed.\"\r\n");
        c->closing = 1;
    } else {
        REPLY(c, "OK \"Done.\"\r\n");
    }
}

/* -- auth_http: one request head ----------------------------------------------------------------- */

static int header(const char *h, size_t n, const char *name, const char **v, size_t *vl) {
    size_t k = strlen(name);
    if (n <= k || strncasecmp(h, name, k) || h[k] != ':') return 0;
    const char *s = h + k + 1, *e = h + n;
    while (s < e && *s == ' ') s++;
    *v = s;
    *vl = e - s;
    return 1;
}

static void http_request(conn_t *c, const char *head, size_t n) {
    const char *end = head + n, *v;
    size_t vl;
    int http11 = 0, keep = 0, proto = P_IMAP, pass_ok = 0;
    const char *eol = memchr(head, '\n', n);
    if (!eol) eol = end;
    if (eol - head >= 10 && !memcmp(eol - (eol[-1] == '\r' ? 9 : 8), "HTTP/1.1", 8)) http11 = 1;
    keep = http11 && !close_always;
    if (n >= 11 && !memcmp(head, "GET /stats ", 11)) { /* the harness: requests so far */
        char st[96];
        int k = snprintf(st, sizeof(st), "HTTP/1.0 200 OK\r\nRequests: %lu\r\n\r\n",
                         auth_requests);
        reply(c, st, k);
        c->closing = 1;
        return;
    }
    auth_requests++;
    for (const char *l = eol + 1; l < end;) {
        const char *e = memchr(l, '\n', end - l);
        if (!e) e = end;
        size_t ll = e - l - (e > l && e[-1] == '\r');
        if (header(l, ll, "Auth-Protocol", &v, &vl)) {
            proto = vl == 4 && !strncasecmp(v, "pop3", 4)    ? P_POP3
                    : vl == 4 && !strncasecmp(v, "smtp", 4)  ? P_SMTP
                    : vl == 5 && !strncasecmp(v, "sieve", 5) ? P_SIEVE
                                                             : P_IMAP;
        } else if (header(l, ll, "Auth-Pass", &v, &vl)) {
            pass_ok = vl == strlen(password) && !memcmp(v, password, vl);
        } else if (header(l, ll, "Connection", &v, &vl)) {
            if (vl == 10 && !strncasecmp(v, "keep-alive", 10)) keep = !close_always;
            if (vl == 5 && !strncasecmp(v, "close", 5)) keep = 0;
        }
        l = e + 1;
    }
    char buf[320];
    const char *ver = http11 && !close_always ? "HTTP/1.1" : "HTTP/1.0";
    const char *conn = keep ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
    int k;
    if (pass_ok)
        k = snprintf(buf, sizeof(buf),
                     "%s 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
                     "Auth-Port: %d\r\nContent-Length: 0\r\n%s\r\n",
                     ver, backend_port[proto], conn);
    else
        k = snprintf(buf, sizeof(buf),
                     "%s 200 OK\r\nAuth-Status: Invalid login or password\r\nAuth-Wait: 0\r\n"
                     "Content-Length: 0\r\n%s\r\n",
                     ver, conn);
    reply(c, buf, k);
    if (!keep) c->closing = 1;
}

/* -- the loop ------------------------------------------------------------------------------------- */

static void on_lines(conn_t *c) {
    size_t pos = 0;
    while (!c->closing && !c->echo) {
        if (c->literal) { /* IMAP literal: the LOGIN user name, or the password (or sieve's) */
            size_t take = c->inlen - pos < c->literal ? c->inlen - pos : c->literal;
            if (c->lit_is_user && take == c->literal) set_user(c, c->in + pos, take);
            if (c->lit_is_user && take < c->literal) break; /* user names arrive whole */
            pos += take;
            c->literal -= take;
            if (c->literal) break;
            continue;
        }
        if (c->proto == P_HTTP) {
            char *e = memmem(c->in + pos, c->inlen - pos, "\r\n\r\n", 4);
            if (!e) break;
            http_request(c, c->in + pos, e - (c->in + pos));
            pos = e + 4 - c->in;
            continue;
        }
        char *nl = memchr(c->in + pos, '\n', c->inlen - pos);
        if (!nl) break;
        size_t n = nl - (c->in + pos);
        if (n && nl[-1] == '\r') n--;
        char *l = c->in + pos;
        pos = nl + 1 - c->in;
        if (c->proto == P_IMAP) {
            imap_line(c, l, n);
        } else if (c->proto == P_POP3) {
            pop3_line(c, l, n);
        } else if (c->proto == P_SIEVE) {
            sieve_line(c, l, n);
        } else {
            smtp_line(c, l, n);
        }
    }
    memmove(c->in, c->in + pos, c->inlen - pos);
    c->inlen -= pos;
    if (c->inlen == LINEBUF && !c->echo) c->closing = 2;
    if (c->echo && !c->closing) start_echo(c);
}

static void echo_io(conn_t *c) {
    for (;;) {
        while (c->pendlen) {
            ssize_t w = send(c->fd, c->pend, c->pendlen, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EAGAIN) {
                    set_events(c, EPOLLOUT); /* stop reading until the peer catches up */
                    return;
                }
                c->closing = 2;
                return;
            }
            c->pend += w;
            c->pendlen -= w;
        }
        if (c->inlen) { /* bytes that came with the login line */
            c->pend = c->in;
            c->pendlen = c->inlen;
            c->inlen = 0;
            continue;
        }
        ssize_t r = recv(c->fd, c->in, ECHOBUF, 0);
        if (r > 0) {
            c->pend = c->in;
            c->pendlen = r;
            continue;
        }
        if (r < 0 && errno == EAGAIN) {
            set_events(c, EPOLLIN);
            return;
        }
        c->closing = 2;
        return;
    }
}

static void on_event(conn_t *c, unsigned ev) {
    if (c->echo) {
        /* the login reply goes out before any echoed byte */
        if (c->outlen && flush(c))
            set_events(c, EPOLLOUT);
        else if (c->closing != 2)
            echo_io(c);
    } else {
        if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
            for (;;) {
                ssize_t r = recv(c->fd, c->in + c->inlen, LINEBUF - c->inlen, 0);
                if (r > 0) {
                    c->inlen += r;
                    on_lines(c);
                    if (c->closing || c->echo) break;
                    continue;
                }
                if (r < 0 && errno == EAGAIN) break;
                c->closing = 2;
                break;
            }
        }
        if (c->closing != 2 && flush(c)) {
            set_events(c, EPOLLIN | EPOLLOUT);
            return;
        }
        if (c->echo && !c->closing) {
            echo_io(c);
        } else if (!c->closing) {
            set_events(c, EPOLLIN);
        }
    }
    if (c->closing == 2 || (c->closing == 1 && !c->outlen)) conn_free(c);
}

static void on_accept(int lfd, int proto) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return; /* EAGAIN, or out of fds: the peer sees a reset or waits */
        if (fd >= maxfd) {
            close(fd);
            continue;
        }
        conn_t *c = calloc(1, sizeof(conn_t));
        char *in = malloc(LINEBUF);
        if (!c || !in) {
            free(c);
            free(in);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->proto = proto;
        c->in = in;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conns[fd] = c;
        if (proto == P_IMAP)
            REPLY(c, "* OK [CAPABILITY IMAP4rev1 LITERAL+] bench backend ready\r\n");
        if (proto == P_POP3) REPLY(c, "+OK bench backend ready\r\n");
        if (proto == P_SMTP) REPLY(c, "220 bench.backend ESMTP\r\n");
        if (proto == P_SIEVE)
            REPLY(c, "\"IMPLEMENTATION\" \"bench\"\r\n\"SIEVE\" \"fileinto vacation\"\r\n"
                     "\"SASL\" \"PLAIN\"\r\n\"VERSION\" \"1.0\"\r\nOK \"bench backend ready\"\r\n");
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
        if (flush(c)) set_events(c, EPOLLIN | EPOLLOUT);
        if (c->closing == 2) conn_free(c);
    }
}

static int listen_on(int port, int proto) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 4096) < 0) {
        fprintf(stderr, "servers: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        exit(1);
    }
    /* a listener is a conn_t with the listener flag, so events need no fd lookup */
    conn_t *l = calloc(1, sizeof(conn_t));
    l->fd = fd;
    l->proto = proto;
    l->listener = 1;
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = l};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
    return fd;
}

static void usage(void) {
    fprintf(stderr, "usage: servers auth -a PORT -b IMAP,POP3,SMTP[,SIEVE] [-w pass] [-t max_secs] [-C]\n"
                    "       (-C: answer HTTP/1.0 and close after every answer)\n"
                    "       servers backend -b IMAP,POP3,SMTP[,SIEVE] [-t max_secs]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    int auth = !strcmp(argv[1], "auth");
    if (!auth && strcmp(argv[1], "backend")) usage();
    int auth_port = 0, opt;
    double max_secs = 6 * 3600;
    optind = 2;
    while ((opt = getopt(argc, argv, "a:b:w:t:C")) != -1) {
        switch (opt) {
        case 'a': auth_port = atoi(optarg); break;
        case 'b':
            if (sscanf(optarg, "%d,%d,%d,%d", &backend_port[0], &backend_port[1],
                       &backend_port[2], &backend_port[3]) < 3)
                usage();
            break;
        case 'w': password = optarg; break;
        case 't': max_secs = atof(optarg); break;
        case 'C': close_always = 1; break;
        default: usage();
        }
    }
    if (auth && auth_port <= 0) usage();
    if (!backend_port[0]) usage();
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* the harness gone: so are we */
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    maxfd = rl.rlim_cur > 1 << 20 ? 1 << 20 : (int)rl.rlim_cur;
    conns = calloc(maxfd, sizeof(conn_t *));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (auth)
        listen_on(auth_port, P_HTTP);
    else
        for (int p = 0; p < 4; p++)
            if (backend_port[p]) listen_on(backend_port[p], p);
    printf("ready\n");
    fflush(stdout);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(epfd, evs, 256, 1000);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->listener)
                on_accept(c->fd, c->proto);
            else
                on_event(c, evs[i].events);
        }
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec > max_secs) return 0;
    }
}
