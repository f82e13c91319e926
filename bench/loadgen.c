/* bench/loadgen.c: the bench's client side, one epoll loop per process.
 *
 * Owns: driving IMAP/POP3/SMTP/ManageSieve client sessions against a proxy on loopback in three modes
 * (login storm, relay bulk echo, idle holder) and reporting one JSON line of results.
 * Must not: talk to anything but 127.0.0.1, run unbounded (every mode has a count and a
 * deadline), or parse more protocol than a session needs to know it succeeded.
 * Built at run time by bench/targets.py with the system cc; protocol with the harness is
 * line based on stdout: "MARK start", "MARK end", "READY n", then one "RESULT {json}" line.
 * With OpenSSL (built without -DNO_TLS) -S puts implicit TLS under any mode, and the
 * handshake mode measures TLS handshakes (full, or resumed from one ticket with -R).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifndef NO_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

enum { P_IMAP, P_POP3, P_SMTP, P_SIEVE };
enum { M_LOGIN, M_RELAY, M_IDLE, M_HANDSHAKE };
/* per-connection phases */
enum { S_CONNECTING, S_TLS, S_SCRIPT, S_WAIT_EOF, S_RELAY, S_IDLE, S_DONE };

#define RBUF 8192
#define MAXSTEPS 6
#define RELAY_CHUNK 65536
#define RELAY_WINDOW (1 << 20)

typedef struct {
    const char *send;   /* sent when the step starts (NULL: nothing) */
    const char *expect; /* prefix of the line that ends the step */
    int eof_ok;         /* EOF instead of the line also ends it (after QUIT/LOGOUT) */
} step_t;

typedef struct {
#ifndef NO_TLS
    SSL *ssl;
#endif
    int fd, state, step, nsteps, id;
    double t0, deadline;
    char *out;
    size_t outlen, outoff;
    char in[RBUF];
    size_t inlen;
    uint64_t sent, recvd; /* relay */
    char sendbuf[3][320];
    step_t steps[MAXSTEPS];
} conn_t;

static int mode = M_LOGIN, proto = P_IMAP, port, conc = 10, total = 100, nusers = 1;
static double max_secs = 10, step_timeout = 10, relay_secs = 2;
static const char *user = "user", *pass = "pass", *idle_state = "pre";
static int epfd, started, finished, ok, errors, active;
static int parked;   /* idle mode: connections that reached their idle state */
static int conc_set; /* -c given */
static double *lat;
static int nlat;
static uint64_t relay_bytes;
static char errsample[4][160];
static int nerrsample;
static unsigned char pattern[RELAY_CHUNK + 256];
static int use_tls, resume, resumed;
static const char *tls_suites = "TLS_AES_128_GCM_SHA256", *tls_groups = "X25519";
static char tls_seen[160]; /* version, cipher and group of the first handshake */
#ifndef NO_TLS
static SSL_CTX *tls_ctx;
static SSL_SESSION *tls_session; /* resumed from by every connection with -R */

static void tls_init(void) {
    tls_ctx = SSL_CTX_new(TLS_client_method());
    /* pinned, so both proxies negotiate the same thing whatever their defaults */
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(tls_ctx, TLS1_3_VERSION);
    if (SSL_CTX_set_ciphersuites(tls_ctx, tls_suites) != 1 ||
        SSL_CTX_set1_groups_list(tls_ctx, tls_groups) != 1) {
        fprintf(stderr, "loadgen: bad TLS ciphersuite or group\n");
        exit(2);
    }
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_NONE, NULL); /* a bench certificate */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* no client cache: with it, OpenSSL retires a TLS 1.3 session after one resumption; the
     * bench resumes every handshake from the one ticket it took after priming (stateless
     * tickets: the server's work is the same for a fresh or a reused one) */
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
}
#endif
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void note_error(conn_t *c, const char *what, const char *line, size_t n) {
    errors++;
    if (nerrsample < 4) {
        char clean[96];
        size_t k = 0;
        for (size_t i = 0; i < n && k < sizeof(clean) - 1; i++)
            clean[k++] = (line[i] >= 32 && line[i] < 127 && line[i] != '"' && line[i] != '\\')
                             ? line[i] : '.';
        clean[k] = 0;
        snprintf(errsample[nerrsample++], sizeof(errsample[0]), "conn %d step %d: %s %s", c->id,
                 c->step, what, clean);
    }
}

static void b64(const unsigned char *src, size_t n, char *dst) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, o = 0;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = src[i] << 16 | src[i + 1] << 8 | src[i + 2];
        dst[o++] = t[v >> 18], dst[o++] = t[(v >> 12) & 63], dst[o++] = t[(v >> 6) & 63],
        dst[o++] = t[v & 63];
    }
    if (n - i == 1) {
        unsigned v = src[i] << 16;
        dst[o++] = t[v >> 18], dst[o++] = t[(v >> 12) & 63], dst[o++] = '=', dst[o++] = '=';
    } else if (n - i == 2) {
        unsigned v = src[i] << 16 | src[i + 1] << 8;
        dst[o++] = t[v >> 18], dst[o++] = t[(v >> 12) & 63], dst[o++] = t[(v >> 6) & 63],
        dst[o++] = '=';
    }
    dst[o] = 0;
}

/* The SASL PLAIN message \0user\0pass in base64 (both cut at 95 bytes), into enc[272]. */
static void plain_b64(const char *u, char *enc) {
    unsigned char raw[200];
    size_t ul = strnlen(u, 95), pl = strnlen(pass, 95);
    raw[0] = 0;
    memcpy(raw + 1, u, ul);
    raw[1 + ul] = 0;
    memcpy(raw + 2 + ul, pass, pl);
    b64(raw, 2 + ul + pl, enc);
}

/* The script: what a real client sends and the reply line that moves it on.  Untagged IMAP
 * lines, SMTP continuation lines ("250-") and ManageSieve capability lines are skipped while
 * waiting. */
static void build_script(conn_t *c) {
    char u[96];
    snprintf(u, sizeof(u), "%s%d", user, nusers > 1 ? c->id % nusers : 0);
    if (nusers <= 1) snprintf(u, sizeof(u), "%s", user);
    int login_only = mode != M_LOGIN && mode != M_HANDSHAKE;
    step_t *s = c->steps;
    int n = 0;
    if (proto == P_IMAP) {
        snprintf(c->sendbuf[0], 320, "a LOGIN %s %s\r\n", u, pass);
        s[n++] = (step_t){NULL, "* OK", 0};
        s[n++] = (step_t){c->sendbuf[0], "a OK", 0};
        if (!login_only) s[n++] = (step_t){"b LOGOUT\r\n", "b OK", 1};
    } else if (proto == P_POP3) {
        snprintf(c->sendbuf[0], 320, "USER %s\r\n", u);
        snprintf(c->sendbuf[1], 320, "PASS %s\r\n", pass);
        s[n++] = (step_t){NULL, "+OK", 0};
        s[n++] = (step_t){c->sendbuf[0], "+OK", 0};
        s[n++] = (step_t){c->sendbuf[1], "+OK", 0};
        if (!login_only) s[n++] = (step_t){"QUIT\r\n", "+OK", 1};
    } else if (proto == P_SIEVE) {
        char enc[272];
        plain_b64(u, enc);
        snprintf(c->sendbuf[0], 320, "AUTHENTICATE \"PLAIN\" \"%s\"\r\n", enc);
        s[n++] = (step_t){NULL, "OK", 0};
        s[n++] = (step_t){c->sendbuf[0], "OK", 0};
        if (!login_only) s[n++] = (step_t){"LOGOUT\r\n", "OK", 1};
    } else {
        char enc[272];
        plain_b64(u, enc);
        snprintf(c->sendbuf[0], 320, "AUTH PLAIN %s\r\n", enc);
        s[n++] = (step_t){NULL, "220 ", 0};
        s[n++] = (step_t){"EHLO bench.test\r\n", "250 ", 0};
        s[n++] = (step_t){c->sendbuf[0], "235", 0};
        if (!login_only) s[n++] = (step_t){"QUIT\r\n", "221", 1};
    }
    /* pre-auth idle and TLS handshakes: connected and greeted, nothing more */
    c->nsteps = (mode == M_IDLE && !strcmp(idle_state, "pre")) || mode == M_HANDSHAKE ? 1 : n;
}

/* send/recv, through TLS when the connection has it; -1 with errno EAGAIN when it would block */
static ssize_t io_send(conn_t *c, const void *b, size_t n) {
#ifndef NO_TLS
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_write(c->ssl, b, (int)n);
        if (r > 0) return r;
        int e = SSL_get_error(c->ssl, r);
        errno = e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? EAGAIN
                : e == SSL_ERROR_SYSCALL && errno ? errno : EPROTO;
        return -1;
    }
#endif
    return send(c->fd, b, n, MSG_NOSIGNAL);
}

static ssize_t io_recv(conn_t *c, void *b, size_t n) {
#ifndef NO_TLS
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, b, (int)n);
        if (r > 0) return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && errno == 0)) return 0;
        errno = e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? EAGAIN
                : e == SSL_ERROR_SYSCALL && errno ? errno : EPROTO;
        return -1;
    }
#endif
    return recv(c->fd, b, n, 0);
}

static void set_events(conn_t *c, uint32_t ev) {
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &e);
}

static void conn_close(conn_t *c, int success) {
#ifndef NO_TLS
    if (c->ssl) {
        if (success) SSL_shutdown(c->ssl); /* close_notify: a clean end for the proxy's log */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
#endif
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = S_DONE;
    active--;
    finished++;
    if (success) ok++;
}

static int flush_out(conn_t *c) {
    while (c->outoff < c->outlen) {
        ssize_t w = io_send(c, c->out + c->outoff, c->outlen - c->outoff);
        if (w < 0) {
            if (errno == EAGAIN) {
                set_events(c, EPOLLIN | EPOLLOUT);
                return 0;
            }
            note_error(c, "send:", strerror(errno), strlen(strerror(errno)));
            conn_close(c, 0);
            return -1;
        }
        c->outoff += w;
    }
    return 0;
}

static void start_step(conn_t *c) {
    const char *s = c->steps[c->step].send;
    c->deadline = now() + step_timeout;
    if (s) {
        c->out = (char *)s;
        c->outlen = strlen(s);
        c->outoff = 0;
        flush_out(c);
    }
}

static void relay_write(conn_t *c) {
    while (c->sent - c->recvd < RELAY_WINDOW) {
        size_t off = c->sent % 251;
        ssize_t w = io_send(c, pattern + off, RELAY_CHUNK);
        if (w < 0) {
            if (errno == EAGAIN) {
                set_events(c, EPOLLIN | EPOLLOUT);
                return;
            }
            note_error(c, "relay send:", strerror(errno), strlen(strerror(errno)));
            conn_close(c, 0);
            return;
        }
        c->sent += w;
    }
    set_events(c, EPOLLIN);
}

static void logged_in(conn_t *c) {
    if (mode == M_RELAY) {
        c->state = S_RELAY;
    } else {
        c->state = S_IDLE;
    }
    finished++; /* "reached the target state"; the harness waits for all */
    ok++;
    if (mode == M_IDLE) parked++;
    lat[nlat++] = now() - c->t0;
}

static void on_lines(conn_t *c) {
    size_t pos = 0;
    while (c->state == S_SCRIPT) {
        char *nl = memchr(c->in + pos, '\n', c->inlen - pos);
        if (!nl) break;
        char *line = c->in + pos;
        size_t n = nl - line + 1;
        pos += n;
        step_t *st = &c->steps[c->step];
        size_t el = strlen(st->expect);
        if (n >= el && memcmp(line, st->expect, el) == 0) {
            c->step++;
            if (c->step == c->nsteps) {
                if (mode == M_HANDSHAKE) {
#ifndef NO_TLS
                    /* the ticket came before the greeting: it is the session now */
                    if (resume && !tls_session) tls_session = SSL_get1_session(c->ssl);
#endif
                    lat[nlat++] = now() - c->t0;
                    conn_close(c, 1);
                    return;
                }
                if (mode == M_LOGIN) {
                    lat[nlat++] = now() - c->t0;
                    c->state = S_WAIT_EOF;
                    c->deadline = now() + 2;
                } else {
                    logged_in(c);
                }
                break;
            }
            start_step(c);
            continue;
        }
        if (proto == P_IMAP && line[0] == '*' && c->step > 0) continue;
        if (proto == P_SMTP && n > 4 && line[3] == '-') continue;
        if (proto == P_SIEVE && line[0] == '"') continue;
        note_error(c, "unexpected:", line, n);
        conn_close(c, 0);
        return;
    }
    if (c->fd < 0) return;
    if (c->state == S_RELAY) { /* nothing was sent yet, so nothing can be echoed */
        c->inlen = 0;
        return;
    }
    memmove(c->in, c->in + pos, c->inlen - pos);
    c->inlen -= pos;
    if (c->inlen == RBUF) {
        note_error(c, "line too long", "", 0);
        conn_close(c, 0);
    }
}

static void on_readable(conn_t *c) {
    if (c->state == S_RELAY) {
        unsigned char buf[RELAY_CHUNK];
        for (;;) {
            ssize_t r = io_recv(c, buf, sizeof(buf));
            if (r > 0) {
                size_t off = c->recvd % 251;
                if (memcmp(buf, pattern + off, r) != 0) {
                    note_error(c, "relay data corrupted", "", 0);
                    conn_close(c, 0);
                    return;
                }
                c->recvd += r;
                relay_bytes += r;
                continue;
            }
            if (r == 0 || errno != EAGAIN) {
                note_error(c, "relay closed early", "", 0);
                conn_close(c, 0);
                return;
            }
            break;
        }
        relay_write(c);
        return;
    }
    for (;;) {
        ssize_t r = io_recv(c, c->in + c->inlen, RBUF - c->inlen);
        if (r > 0) {
            if (c->state == S_WAIT_EOF || c->state == S_IDLE) continue; /* ignore */
            c->inlen += r;
            on_lines(c);
            if (c->fd < 0) return;
            if (c->state == S_RELAY) { /* echoed bytes may already be waiting */
                on_readable(c);
                return;
            }
            continue;
        }
        if (r < 0 && errno == EAGAIN) return;
        if (c->state == S_WAIT_EOF) {
            conn_close(c, 1);
            return;
        }
        if (c->state == S_SCRIPT && c->steps[c->step].eof_ok) {
            lat[nlat++] = now() - c->t0;
            conn_close(c, 1);
            return;
        }
        const char *why = r == 0 ? "EOF" : strerror(errno);
        note_error(c, "closed:", why, strlen(why));
        if (c->state == S_IDLE) { /* it was counted when it reached idle */
            ok--;
            finished--;
            parked--;
        }
        conn_close(c, 0);
        return;
    }
}

static conn_t *conns;
static void on_readable(conn_t *c);

static int open_conn(int i) {
    conn_t *c = &conns[i];
    memset(c, 0, offsetof(conn_t, in));
    c->id = i;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        note_error(c, "socket:", strerror(errno), strlen(strerror(errno)));
        c->state = S_DONE;
        finished++;
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->t0 = now();
    c->deadline = c->t0 + step_timeout;
    c->state = S_CONNECTING;
    build_script(c);
    started++;
    active++;
    struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &e);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != EINPROGRESS) {
        note_error(c, "connect:", strerror(errno), strlen(strerror(errno)));
        conn_close(c, 0);
        return -1;
    }
    return 0;
}

static void tls_step(conn_t *c) {
#ifndef NO_TLS
    if (!c->ssl) {
        c->ssl = SSL_new(tls_ctx);
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_tlsext_host_name(c->ssl, "localhost");
        if (resume && tls_session) SSL_set_session(c->ssl, tls_session);
    }
    ERR_clear_error();
    int r = SSL_connect(c->ssl);
    if (r == 1) {
        if (SSL_session_reused(c->ssl)) resumed++;
        if (!tls_seen[0]) {
            int nid = SSL_get_negotiated_group(c->ssl);
            snprintf(tls_seen, sizeof(tls_seen), "%s %s %s", SSL_get_version(c->ssl),
                     SSL_get_cipher_name(c->ssl), nid ? OBJ_nid2sn(nid & 0xffff) : "?");
        }
        c->state = S_SCRIPT;
        set_events(c, EPOLLIN);
        start_step(c);
        if (c->fd >= 0) on_readable(c); /* the greeting may sit in OpenSSL's buffer already */
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        set_events(c, EPOLLIN);
    } else if (e == SSL_ERROR_WANT_WRITE) {
        set_events(c, EPOLLIN | EPOLLOUT);
    } else {
        char why[120];
        ERR_error_string_n(ERR_peek_last_error(), why, sizeof(why));
        note_error(c, "TLS handshake:", why, strlen(why));
        conn_close(c, 0);
    }
#else
    note_error(c, "built without TLS", "", 0);
    conn_close(c, 0);
#endif
}

static void on_event(conn_t *c, uint32_t ev) {
    if (c->state == S_DONE) return;
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            note_error(c, "connect:", strerror(err), strlen(strerror(err)));
            conn_close(c, 0);
            return;
        }
        if (use_tls) {
            c->state = S_TLS;
        } else {
            c->state = S_SCRIPT;
            set_events(c, EPOLLIN);
            start_step(c);
            if (c->fd < 0) return;
        }
    }
    if (c->state == S_TLS) {
        tls_step(c);
        return;
    }
    if ((ev & EPOLLOUT) && c->state == S_RELAY) {
        relay_write(c);
        if (c->fd < 0) return;
    } else if (ev & EPOLLOUT) {
        if (flush_out(c) < 0) return;
        if (c->outoff == c->outlen) set_events(c, EPOLLIN);
    }
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
}

static int cmpd(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p) {
    if (!nlat) return 0;
    size_t i = (size_t)(p * (nlat - 1) + 0.5);
    return lat[i] * 1e6;
}

static void loop_until(double end, int (*done)(void)) {
    struct epoll_event evs[256];
    double last_scan = now();
    while (!done()) {
        double t = now();
        if (t >= end) break;
        int n = epoll_wait(epfd, evs, 256, 50);
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
        t = now();
        if (t - last_scan > 0.05) {
            last_scan = t;
            for (int i = 0; i < started; i++) {
                conn_t *c = &conns[i];
                if (c->state == S_DONE || c->state == S_IDLE || c->state == S_RELAY) continue;
                if (t > c->deadline) {
                    if (c->state == S_WAIT_EOF) {
                        conn_close(c, 1); /* reply seen; the proxy just kept the socket */
                    } else {
                        note_error(c, "timeout", "", 0);
                        conn_close(c, 0);
                    }
                }
            }
        }
        if (mode == M_LOGIN || mode == M_HANDSHAKE)
            while (active < conc && started < total) open_conn(started);
        /* idle: at most conc connections on their way in at once, so a burst of thousands of
         * SYNs does not overflow the proxy's listen backlog and time out on retransmits */
        if (mode == M_IDLE)
            while (active - parked < conc && started < total) open_conn(started);
    }
}

static int login_done(void) { return finished >= total; }
static int all_in(void) { return finished >= total; }
static int never(void) { return 0; }
static int __attribute__((unused)) primed(void) { return finished >= 1; }

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen -m login|relay|idle|handshake -p PORT -P imap|pop3|smtp|sieve [-c conc]\n"
            "  [-n total] [-t max_secs] [-T step_timeout] [-d relay_secs] [-u user] [-U nusers]\n"
            "  [-w pass] [-s pre|auth]  (idle: stop after the greeting, or after login;\n"
            "  -c: connections on their way in at once, default 128)\n"
            "  [-S] implicit TLS (TLS 1.3 only)  [-R] resume every handshake from one ticket\n"
            "  [-C ciphersuites] [-G groups]  (default TLS_AES_128_GCM_SHA256, X25519)\n"
            "  handshake: connect, TLS handshake, greeting, close (implies -S)\n");
    exit(2);
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "m:p:P:c:n:t:T:d:u:U:w:s:SRC:G:")) != -1) {
        switch (opt) {
        case 'm':
            mode = !strcmp(optarg, "login") ? M_LOGIN : !strcmp(optarg, "relay") ? M_RELAY
                   : !strcmp(optarg, "idle") ? M_IDLE
                   : !strcmp(optarg, "handshake") ? M_HANDSHAKE : -1;
            if (mode < 0) usage();
            break;
        case 'p': port = atoi(optarg); break;
        case 'P':
            proto = !strcmp(optarg, "imap") ? P_IMAP : !strcmp(optarg, "pop3") ? P_POP3
                    : !strcmp(optarg, "smtp") ? P_SMTP : !strcmp(optarg, "sieve") ? P_SIEVE : -1;
            if (proto < 0) usage();
            break;
        case 'c': conc = atoi(optarg), conc_set = 1; break;
        case 'n': total = atoi(optarg); break;
        case 't': max_secs = atof(optarg); break;
        case 'T': step_timeout = atof(optarg); break;
        case 'd': relay_secs = atof(optarg); break;
        case 'u': user = optarg; break;
        case 'U': nusers = atoi(optarg); break;
        case 'w': pass = optarg; break;
        case 's': idle_state = optarg; break;
        case 'S': use_tls = 1; break;
        case 'R': resume = 1; break;
        case 'C': tls_suites = optarg; break;
        case 'G': tls_groups = optarg; break;
        default: usage();
        }
    }
    if (strlen(user) > 60 || strlen(pass) > 60) usage();
    if (port <= 0 || port > 65535 || conc <= 0 || total <= 0 || max_secs <= 0) usage();
    if (mode == M_HANDSHAKE) use_tls = 1;
    if (mode == M_RELAY) conc = total;
    if (mode == M_IDLE && !conc_set) conc = 128;
#ifdef NO_TLS
    if (use_tls) {
        fprintf(stderr, "loadgen: built without OpenSSL (libssl-dev missing): no TLS\n");
        return 3;
    }
#else
    if (use_tls) tls_init();
#endif
    if (conc > total) conc = total;

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    /* the pattern repeats every 251 bytes, so any stream offset maps into it */
    for (size_t i = 0; i < sizeof(pattern); i++) pattern[i] = (unsigned char)(i % 251);

    conns = calloc(total, sizeof(conn_t));
    lat = calloc(total, sizeof(double));
    epfd = epoll_create1(0);
    setvbuf(stdout, NULL, _IOLBF, 0);

    double hard_end = now() + max_secs;
    double t_start = now(), t_end;
#ifndef NO_TLS
    if (mode == M_HANDSHAKE && resume) {
        /* one full handshake first: its ticket is what every measured connection resumes */
        int want = total;
        total = 1; /* loop_until must not open more than the primer */
        open_conn(0);
        loop_until(hard_end, primed);
        total = want;
        if (!tls_session) {
            fprintf(stderr, "loadgen: the server sent no session ticket (%s)\n",
                    nerrsample ? errsample[0] : "no error");
            return 3;
        }
        started = finished = ok = errors = nlat = active = nerrsample = resumed = 0;
    }
#endif
    if (mode == M_LOGIN || mode == M_HANDSHAKE) {
        printf("MARK start\n");
        loop_until(hard_end, login_done);
        t_end = now();
        printf("MARK end\n");
    } else {
        /* relay: every connection at once; idle: loop_until opens them, conc at a time;
         * pre-auth idle stops after the greeting */
        if (mode == M_RELAY)
            for (int i = 0; i < total; i++) open_conn(i);
        loop_until(hard_end, all_in);
        if (mode == M_IDLE) {
            printf("READY %d\n", ok);
            /* hold until the harness closes stdin or the deadline passes */
            struct pollfd p = {.fd = 0, .events = POLLIN};
            while (now() < hard_end) {
                int left = (int)((hard_end - now()) * 1000) + 1;
                if (poll(&p, 1, left < 200 ? left : 200) > 0) {
                    char b[64];
                    if (read(0, b, sizeof(b)) <= 0) break;
                }
                /* notice drops while idle */
                struct epoll_event evs[64];
                int n = epoll_wait(epfd, evs, 64, 0);
                for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events);
            }
            t_start = t_end = now();
        } else {
            for (int i = 0; i < total; i++)
                if (conns[i].state == S_RELAY) relay_write(&conns[i]);
            printf("MARK start\n");
            t_start = now();
            double end = t_start + relay_secs;
            if (end > hard_end) end = hard_end;
            loop_until(end, never);
            t_end = now();
            printf("MARK end\n");
        }
    }
    qsort(lat, nlat, sizeof(double), cmpd);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    int missing = total - finished;
    printf("RESULT {\"ok\": %d, \"errors\": %d, \"unfinished\": %d, \"elapsed\": %.6f, "
           "\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f, "
           "\"relay_bytes\": %llu, \"cpu_s\": %.6f, \"resumed\": %d, \"tls\": \"%s\", "
           "\"errsample\": [",
           ok, errors, missing > 0 ? missing : 0, t_end - t_start, pct(0.5), pct(0.9),
           pct(0.99), nlat ? lat[nlat - 1] * 1e6 : 0.0, (unsigned long long)relay_bytes, cpu,
           resumed, tls_seen);
    for (int i = 0; i < nerrsample; i++) printf("%s\"%s\"", i ? ", " : "", errsample[i]);
    printf("]}\n");
    return 0;
}
