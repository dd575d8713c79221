/* loadgen: the closed-loop load generator of sockserve's benchmarks (loopback only).
 *
 * One thread, one epoll loop, every connection non-blocking, every mode bounded in time.
 * Prints one JSON object on stdout. Refuses any address outside 127.0.0.0/8, ::1 and unix
 * sockets.
 *
 *   loadgen pingpong     -t tcp|unix -a ADDR -c CONNS -s SIZE -d SECONDS
 *       CONNS connections, each with one SIZE-byte message in flight: send, wait for the
 *       whole echo, send again. ops = round trips; p50/p99 = round-trip latency.
 *   loadgen connect      -t tcp|unix -a ADDR -c WORKERS -s SIZE -d SECONDS [-S SOURCES]
 *       WORKERS slots, each: connect, send SIZE bytes, read the echo, close (with RST, so no
 *       TIME_WAIT piles up on the loopback ports), and again. ops = connections. Over IPv4
 *       the slots connect from SOURCES loopback addresses in turn (127.0.0.1 to 127.0.0.N,
 *       default 8): one source's ephemeral ports and their reuse do not cap the rate.
 *   loadgen bulk-echo    -t tcp|unix -a ADDR -b BYTES [-d MAXSECONDS]
 *       one connection: send BYTES while reading the echo back, until all of it is back.
 *       Over TCP the bytes that come back are dropped in the kernel (recv with MSG_TRUNC),
 *       so the generator's own copies weigh less on the measure.
 *   loadgen bulk-discard -t tcp|unix -a ADDR -b BYTES [-d MAXSECONDS]
 *       one connection: send BYTES, shut the write side, wait for the server to close.
 *   loadgen dgram        -t udp|unix-dgram -a ADDR -c OUTSTANDING -s SIZE -d SECONDS
 *                        [-o CLIENT_PATH]
 *       OUTSTANDING numbered datagrams in flight; each reply sends the next one. A datagram
 *       not answered within 50 ms counts as lost, and another one is sent in its place. A
 *       reply of another size (several requests merged into one) counts as "bad".
 *       A unix-dgram client binds CLIENT_PATH so that the server can answer.
 *   loadgen startup      -t tcp|unix -a ADDR [-d TIMEOUT] -- COMMAND ARGS...
 *       exec COMMAND, connect to ADDR every 100 us until it accepts, send one byte, wait for
 *       the echo; then SIGTERM the command. Reports exec->connect and exec->reply times.
 *   loadgen run          [-d TIMEOUT] -- COMMAND ARGS...
 *       exec COMMAND (output to /dev/null) and time it to its exit.
 *
 * "cpu_s" is this process's own CPU time (user + system), so callers can show the headroom.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXEV 1024
#define CHUNK (256 * 1024)

static const char *transport = "tcp";
static const char *address;
static const char *client_path;
static int nconn = 1;
static int msgsize = 64;
static int nsources = 8;
static double seconds = 1.0;
static long long total_bytes = 64LL << 20;
static struct sockaddr_storage target;
static socklen_t target_len;
static int sock_family;

static uint32_t *samples; /* latencies in ns */
static size_t nsamples, capsamples;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static void die(const char *what) {
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen pingpong|connect|bulk-echo|bulk-discard|dgram|startup|run\n"
            "               -t TRANSPORT -a ADDR [-c N] [-s SIZE] [-d SECONDS] [-b BYTES]\n"
            "               [-o CLIENT_PATH] [-- COMMAND ARGS...]\n");
    exit(2);
}

static void record(uint64_t ns) {
    if (nsamples == capsamples) {
        capsamples = capsamples ? capsamples * 2 : 1 << 16;
        if (capsamples > (1u << 26)) return; /* 64 Mi samples: enough for any bounded run */
        samples = realloc(samples, capsamples * sizeof *samples);
        if (!samples) die("realloc");
    }
    samples[nsamples++] = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double percentile_us(double p) {
    if (!nsamples) return -1;
    size_t i = (size_t)(p * (nsamples - 1) + 0.5);
    return samples[i] / 1000.0;
}

static void report(const char *mode, long long ops, double secs, const char *extra) {
    if (nsamples) qsort(samples, nsamples, sizeof *samples, cmp_u32);
    printf("{\"mode\": \"%s\", \"ops\": %lld, \"secs\": %.6f, \"rate\": %.1f, "
           "\"p50_us\": %.1f, \"p99_us\": %.1f, \"cpu_s\": %.4f%s}\n",
           mode, ops, secs, secs > 0 ? ops / secs : 0.0, percentile_us(0.50),
           percentile_us(0.99), cpu_seconds(), extra ? extra : "");
}

static int loopback_only(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    return sa->sa_family == AF_UNIX;
}

static void resolve(void) {
    memset(&target, 0, sizeof target);
    if (!address) usage();
    if (strncmp(transport, "unix", 4) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&target;
        if (strlen(address) >= sizeof un->sun_path) {
            fprintf(stderr, "loadgen: path too long\n");
            exit(2);
        }
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, address);
        target_len = sizeof *un;
    } else {
        char host[256];
        const char *colon = strrchr(address, ':');
        if (!colon || (size_t)(colon - address) >= sizeof host) usage();
        memcpy(host, address, colon - address);
        host[colon - address] = 0;
        char *h = host;
        if (h[0] == '[') {
            h++;
            h[strlen(h) - 1] = 0;
        }
        struct addrinfo hints = {0}, *res;
        hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
        if (getaddrinfo(h, colon + 1, &hints, &res) != 0) {
            fprintf(stderr, "loadgen: bad address %s (numeric loopback only)\n", address);
            exit(2);
        }
        memcpy(&target, res->ai_addr, res->ai_addrlen);
        target_len = res->ai_addrlen;
        freeaddrinfo(res);
    }
    if (!loopback_only((struct sockaddr *)&target)) {
        fprintf(stderr, "loadgen: refusing %s: loopback addresses and unix sockets only\n",
                address);
        exit(2);
    }
    sock_family = target.ss_family;
}

static int is_stream(void) { return strcmp(transport, "tcp") == 0 || strcmp(transport, "unix") == 0; }

static void set_nodelay(int fd) {
    if (sock_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
}

static void set_rst_on_close(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

/* A blocking connect with a deadline (the server may have a short backlog). */
static int connect_blocking(double deadline) {
    for (;;) {
        int fd = socket(sock_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) die("socket");
        struct timeval tv = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(fd, (struct sockaddr *)&target, target_len) == 0) {
            set_nodelay(fd);
            return fd;
        }
        int err = errno;
        close(fd);
        if (now() > deadline) {
            errno = err;
            return -1;
        }
        if (err != EAGAIN && err != EINPROGRESS && err != EINTR && err != ETIMEDOUT) {
            errno = err;
            return -1;
        }
        usleep(1000);
    }
}

static void set_nonblocking(int fd) {
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int epoll_wait_until(int ep, struct epoll_event *evs, double deadline) {
    double left = deadline - now();
    if (left <= 0) return 0;
    int ms = (int)(left * 1000) + 1;
    if (ms > 100) ms = 100;
    int n = epoll_wait(ep, evs, MAXEV, ms);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    return n < 0 ? 0 : n;
}

/* Write all of buf on a non-blocking socket (small messages: waiting is rare). */
static int send_all(int fd, const char *buf, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                struct timespec ts = {0, 20000};
                nanosleep(&ts, NULL);
                continue;
            }
            return -1;
        }
        off += n;
    }
    return 0;
}

/* -- pingpong --------------------------------------------------------------------------- */

struct pp {
    int fd, got;
    uint64_t t0;
};

static int mode_pingpong(void) {
    char *msg = malloc(msgsize), *rbuf = malloc(msgsize + 1);
    memset(msg, 'x', msgsize);
    struct pp *c = calloc(nconn, sizeof *c);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    double setup_deadline = now() + 10;
    for (int i = 0; i < nconn; i++) {
        c[i].fd = connect_blocking(setup_deadline);
        if (c[i].fd < 0) die("connect");
        set_nonblocking(c[i].fd);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c[i].fd, &ev) < 0) die("epoll_ctl");
    }
    long long ops = 0, errors = 0;
    double start = now(), deadline = start + seconds;
    for (int i = 0; i < nconn; i++) {
        c[i].t0 = now_ns();
        if (send_all(c[i].fd, msg, msgsize) < 0) errors++;
    }
    struct epoll_event evs[MAXEV];
    double t;
    while ((t = now()) < deadline) {
        int n = epoll_wait_until(ep, evs, deadline);
        for (int k = 0; k < n; k++) {
            struct pp *p = &c[evs[k].data.u32];
            ssize_t r = recv(p->fd, rbuf, msgsize - p->got, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                errors++;
                epoll_ctl(ep, EPOLL_CTL_DEL, p->fd, NULL);
                continue;
            }
            p->got += r;
            if (p->got < msgsize) continue;
            uint64_t tn = now_ns();
            record(tn - p->t0);
            ops++;
            p->got = 0;
            p->t0 = tn;
            if (send_all(p->fd, msg, msgsize) < 0) errors++;
        }
    }
    double secs = now() - start;
    char extra[64];
    snprintf(extra, sizeof extra, ", \"errors\": %lld", errors);
    report("pingpong", ops, secs, extra);
    for (int i = 0; i < nconn; i++) {
        set_rst_on_close(c[i].fd);
        close(c[i].fd);
    }
    return 0;
}

/* -- connect ---------------------------------------------------------------------------- */

enum { IDLE, CONNECTING, WAITING };

struct slot {
    int fd, state, got;
    uint64_t t0;
};

/* Bind an IPv4 client socket to the next of the loopback source addresses (the port is
 * chosen at connect time, per destination, with IP_BIND_ADDRESS_NO_PORT). */
static void bind_next_source(int fd) {
    static unsigned next;
    if (sock_family != AF_INET || nsources <= 1) return;
    struct sockaddr_in me = {.sin_family = AF_INET};
    me.sin_addr.s_addr = htonl(0x7f000001u + next++ % (unsigned)nsources);
#ifdef IP_BIND_ADDRESS_NO_PORT
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
#endif
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) die("bind source");
}

static int start_slot(int ep, struct slot *s, int i, const char *msg) {
    s->fd = socket(sock_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) die("socket");
    set_nodelay(s->fd);
    bind_next_source(s->fd);
    s->t0 = now_ns();
    s->got = 0;
    int r = connect(s->fd, (struct sockaddr *)&target, target_len);
    struct epoll_event ev = {.data.u32 = i};
    if (r == 0) {
        if (send_all(s->fd, msg, msgsize) < 0) goto fail;
        s->state = WAITING;
        ev.events = EPOLLIN;
    } else if (errno == EINPROGRESS) {
        s->state = CONNECTING;
        ev.events = EPOLLOUT;
    } else {
        goto fail;
    }
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) < 0) die("epoll_ctl");
    return 0;
fail:
    close(s->fd);
    s->fd = -1;
    s->state = IDLE;
    return -1;
}

static int mode_connect(void) {
    char *msg = malloc(msgsize), *rbuf = malloc(msgsize + 1);
    memset(msg, 'x', msgsize);
    struct slot *s = calloc(nconn, sizeof *s);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    long long ops = 0, errors = 0;
    double start = now(), deadline = start + seconds;
    for (int i = 0; i < nconn; i++)
        if (start_slot(ep, &s[i], i, msg) < 0) errors++;
    struct epoll_event evs[MAXEV];
    while (now() < deadline) {
        int n = epoll_wait_until(ep, evs, deadline);
        for (int k = 0; k < n; k++) {
            int i = evs[k].data.u32;
            struct slot *p = &s[i];
            int failed = 0, done = 0;
            if (p->state == CONNECTING) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err || send_all(p->fd, msg, msgsize) < 0) {
                    failed = 1;
                } else {
                    p->state = WAITING;
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, p->fd, &ev);
                    continue;
                }
            } else {
                ssize_t r = recv(p->fd, rbuf, msgsize - p->got, 0);
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                if (r <= 0) {
                    failed = 1;
                } else if ((p->got += r) >= msgsize) {
                    done = 1;
                } else {
                    continue;
                }
            }
            if (done) {
                record(now_ns() - p->t0);
                ops++;
            }
            if (failed) errors++;
            set_rst_on_close(p->fd);
            close(p->fd);
            if (start_slot(ep, p, i, msg) < 0) errors++;
        }
        for (int i = 0; i < nconn; i++) /* slots whose connect failed at once: retry */
            if (s[i].state == IDLE && start_slot(ep, &s[i], i, msg) < 0) errors++;
        if (errors > 100000 && ops == 0) break;
    }
    double secs = now() - start;
    char extra[64];
    snprintf(extra, sizeof extra, ", \"errors\": %lld, \"sources\": %d", errors,
             sock_family == AF_INET && nsources > 1 ? nsources : 1);
    report("connect", ops, secs, extra);
    for (int i = 0; i < nconn; i++)
        if (s[i].fd >= 0 && s[i].state != IDLE) {
            set_rst_on_close(s[i].fd);
            close(s[i].fd);
        }
    return 0;
}

/* -- bulk ------------------------------------------------------------------------------- */

static int mode_bulk(int echo) {
    char *sbuf = malloc(CHUNK), *rbuf = malloc(CHUNK);
    for (int i = 0; i < CHUNK; i++) sbuf[i] = (char)(i * 7);
    int rflags = strcmp(transport, "tcp") == 0 ? MSG_TRUNC : 0; /* TCP: no copy to rbuf */
    int fd = connect_blocking(now() + 10);
    if (fd < 0) die("connect");
    set_nonblocking(fd);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    long long sent = 0, got = 0, errors = 0;
    int eof = 0, shut = 0;
    double start = now(), deadline = start + seconds;
    struct epoll_event evs[4];
    while (now() < deadline) {
        if (echo ? got >= total_bytes : eof) break;
        int n = epoll_wait_until(ep, evs, deadline);
        if (n <= 0) continue;
        uint32_t e = evs[0].events;
        if ((e & EPOLLOUT) && sent < total_bytes) {
            for (;;) {
                long long want = total_bytes - sent;
                ssize_t w = send(fd, sbuf, want < CHUNK ? want : CHUNK, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno != EAGAIN && errno != EINTR) {
                        errors++;
                        deadline = 0;
                    }
                    break;
                }
                sent += w;
                if (sent == total_bytes) break;
            }
            if (sent == total_bytes && !shut) {
                shut = 1;
                if (!echo) shutdown(fd, SHUT_WR);
                struct epoll_event m = {.events = EPOLLIN};
                epoll_ctl(ep, EPOLL_CTL_MOD, fd, &m);
            }
        }
        if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
            for (;;) {
                ssize_t r = recv(fd, rbuf, CHUNK, rflags);
                if (r > 0) {
                    got += r;
                    continue;
                }
                if (r == 0) {
                    eof = 1;
                } else if (errno != EAGAIN && errno != EINTR) {
                    errors++;
                    eof = 1;
                }
                break;
            }
            if (eof && echo && got < total_bytes) break;
        }
    }
    double secs = now() - start;
    int complete = echo ? got >= total_bytes : eof && sent == total_bytes;
    char extra[160];
    snprintf(extra, sizeof extra,
             ", \"bytes\": %lld, \"mb_per_s\": %.1f, \"complete\": %s, \"errors\": %lld",
             echo ? got : sent, secs > 0 ? (echo ? got : sent) / secs / 1e6 : 0.0,
             complete ? "true" : "false", errors);
    report(echo ? "bulk-echo" : "bulk-discard", 1, secs, extra);
    set_rst_on_close(fd);
    close(fd);
    free(sbuf);
    free(rbuf);
    return complete ? 0 : 1;
}

/* -- dgram ------------------------------------------------------------------------------ */

#define WINDOW 4096

struct inflight {
    uint64_t seq, t0;
    int live;
};

static int mode_dgram(void) {
    int fd = socket(sock_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (sock_family == AF_UNIX) {
        if (!client_path) {
            fprintf(stderr, "loadgen: unix-dgram needs -o CLIENT_PATH\n");
            return 2;
        }
        struct sockaddr_un me = {.sun_family = AF_UNIX};
        strncpy(me.sun_path, client_path, sizeof me.sun_path - 1);
        unlink(client_path);
        if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) die("bind");
    }
    if (connect(fd, (struct sockaddr *)&target, target_len) < 0) die("connect");
    int size = msgsize < 16 ? 16 : msgsize;
    char *msg = calloc(1, size), *rbuf = malloc(65536);
    memset(msg + 8, 'x', size - 8);
    struct inflight *w = calloc(WINDOW, sizeof *w);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    uint64_t seq = 0;
    long long ops = 0, lost = 0, sent = 0, late = 0, errors = 0;
    int live = 0;
    double start = now(), deadline = start + seconds;
#define SEND_ONE()                                                          \
    do {                                                                    \
        seq++;                                                              \
        memcpy(msg, &seq, 8);                                               \
        struct inflight *f = &w[seq % WINDOW];                              \
        f->seq = seq;                                                       \
        f->t0 = now_ns();                                                   \
        if (send(fd, msg, size, 0) == size) {                               \
            f->live = 1;                                                    \
            live++;                                                         \
            sent++;                                                         \
        } else {                                                            \
            f->live = 0;                                                    \
            errors++;                                                       \
        }                                                                   \
    } while (0)
    for (int i = 0; i < nconn; i++) SEND_ONE();
    struct epoll_event evs[4];
    double t, last_scan = start;
    long long bad = 0;
    while ((t = now()) < deadline) {
        int n = epoll_wait_until(ep, evs, deadline < t + 0.01 ? deadline : t + 0.01);
        t = now();
        if (t - last_scan > 0.01) { /* in flight for more than 50 ms: lost; send another */
            last_scan = t;
            uint64_t limit = now_ns() - 50000000ull;
            int refill = 0;
            for (int i = 0; i < WINDOW; i++)
                if (w[i].live && w[i].t0 < limit) {
                    w[i].live = 0;
                    live--;
                    lost++;
                    refill++;
                }
            while (refill-- > 0 && live < nconn) SEND_ONE();
        }
        if (n == 0) continue;
        for (;;) {
            ssize_t r = recv(fd, rbuf, 65536, 0);
            if (r < 0) {
                if (errno != EAGAIN && errno != EINTR) errors++;
                break;
            }
            uint64_t got;
            if (r != size) { /* merged, cut or foreign: not an answer to one datagram */
                bad++;
                continue;
            }
            memcpy(&got, rbuf, 8);
            struct inflight *f = &w[got % WINDOW];
            if (!f->live || f->seq != got) {
                late++;
                continue;
            }
            f->live = 0;
            live--;
            record(now_ns() - f->t0);
            ops++;
            while (live < nconn && errors < 1000000) SEND_ONE();
        }
    }
    double secs = now() - start;
    for (int i = 0; i < WINDOW; i++) /* still in flight at the end: neither lost nor counted */
        if (w[i].live) sent--;
    char extra[256];
    snprintf(extra, sizeof extra,
             ", \"sent\": %lld, \"lost\": %lld, \"late\": %lld, \"bad\": %lld, "
             "\"loss\": %.6f, \"errors\": %lld",
             sent, lost, late, bad, sent ? (double)lost / sent : 0.0, errors);
    report("dgram", ops, secs, extra);
    close(fd);
    if (client_path) unlink(client_path);
    return 0;
}

/* -- startup and run -------------------------------------------------------------------- */

static pid_t spawn(char **argv) {
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static int wait_exit(pid_t pid, double timeout) {
    double deadline = now() + timeout;
    int status;
    while (now() < deadline) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0) return -1;
        usleep(200);
    }
    return -2;
}

static void stop_child(pid_t pid) {
    kill(pid, SIGTERM);
    if (wait_exit(pid, 5.0) == -2) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
}

static int mode_startup(char **argv) {
    double t0 = now();
    pid_t pid = spawn(argv);
    double deadline = t0 + seconds, t_conn = -1, t_reply = -1;
    int fd = -1;
    while (now() < deadline) {
        fd = socket(sock_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(fd, (struct sockaddr *)&target, target_len) == 0) {
            t_conn = now();
            break;
        }
        close(fd);
        fd = -1;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "loadgen: the command exited before accepting (status %d)\n",
                    status);
            printf("{\"mode\": \"startup\", \"error\": \"exited\"}\n");
            return 1;
        }
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    if (fd >= 0) {
        struct timeval tv = {5, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char c = 'x';
        if (send(fd, &c, 1, MSG_NOSIGNAL) == 1 && recv(fd, &c, 1, 0) == 1) t_reply = now();
        close(fd);
    }
    stop_child(pid);
    if (t_reply < 0) {
        printf("{\"mode\": \"startup\", \"error\": \"timeout\"}\n");
        return 1;
    }
    printf("{\"mode\": \"startup\", \"connect_ms\": %.3f, \"reply_ms\": %.3f}\n",
           (t_conn - t0) * 1e3, (t_reply - t0) * 1e3);
    return 0;
}

static int mode_run(char **argv) {
    double t0 = now();
    pid_t pid = spawn(argv);
    int status = wait_exit(pid, seconds);
    double t1 = now();
    if (status == -2) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        printf("{\"mode\": \"run\", \"error\": \"timeout\"}\n");
        return 1;
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    printf("{\"mode\": \"run\", \"ms\": %.3f, \"status\": %d}\n", (t1 - t0) * 1e3, code);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1];
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "+t:a:c:s:d:b:o:S:")) != -1) {
        switch (opt) {
        case 't': transport = optarg; break;
        case 'a': address = optarg; break;
        case 'c': nconn = atoi(optarg); break;
        case 's': msgsize = atoi(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'b': total_bytes = atoll(optarg); break;
        case 'o': client_path = optarg; break;
        case 'S': nsources = atoi(optarg); break;
        default: usage();
        }
    }
    if (nconn < 1 || msgsize < 1 || seconds <= 0 || seconds > 600 || total_bytes < 1) usage();
    signal(SIGPIPE, SIG_IGN);
    char **cmd = argv + optind;
    if (strcmp(mode, "run") == 0) {
        if (!*cmd) usage();
        return mode_run(cmd);
    }
    resolve();
    if (strcmp(mode, "startup") == 0) {
        if (!*cmd || !is_stream()) usage();
        return mode_startup(cmd);
    }
    if (strcmp(mode, "dgram") == 0) {
        if (is_stream()) usage();
        return mode_dgram();
    }
    if (!is_stream()) usage();
    if (strcmp(mode, "pingpong") == 0) return mode_pingpong();
    if (strcmp(mode, "connect") == 0) return mode_connect();
    if (strcmp(mode, "bulk-echo") == 0) return mode_bulk(1);
    if (strcmp(mode, "bulk-discard") == 0) return mode_bulk(0);
    usage();
    return 2;
}
