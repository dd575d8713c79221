/* echo_epoll: the native reference server of sockserve's benchmarks.
 *
 * One thread, one level-triggered epoll loop, no allocation per read. It answers like
 * `sockserve -H echo` (or `-H discard`) on one of four transports, so the benchmarks can show
 * how close a Python server gets to what the machine does with plain C.
 *
 *   echo_epoll tcp 127.0.0.1:0 [echo|discard]
 *   echo_epoll udp 127.0.0.1:0 [echo|discard]
 *   echo_epoll unix /tmp/dir/s.sock [echo|discard]
 *   echo_epoll unix-dgram /tmp/dir/s.sock [echo|discard]
 *
 * It refuses any address outside loopback, prints the bound address (127.0.0.1:43125, [::1]:5,
 * or the path) on stdout once listening, and serves until killed (SIGTERM/SIGINT).
 *
 * Streams: each readable event reads up to 256 KiB and writes it back; what the kernel does
 * not take at once is kept for that connection, which then stops reading until it is written
 * (so a client that does not read cannot make the server buffer without limit).
 * Datagrams: each datagram is sent back to its sender (never blocking; a full queue drops it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUFSZ (256 * 1024)
#define MAXEV 256

struct conn {
    char *pending; /* bytes read but not yet written back */
    size_t len, off;
    int eof;
};

static char buf[BUFSZ];
static struct conn **conns;
static size_t nconns;
static int epfd, lfd, discard, is_stream, is_inet;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int loopback_only(const struct sockaddr *sa) {
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    }
    return sa->sa_family == AF_UNIX;
}

/* "host:port" or "[v6]:port" (transport tcp/udp) or a path (unix) -> sockaddr. */
static socklen_t parse_addr(const char *transport, const char *text, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof *ss);
    if (strncmp(transport, "unix", 4) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        if (strlen(text) >= sizeof un->sun_path) {
            fprintf(stderr, "path too long: %s\n", text);
            exit(2);
        }
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, text);
        return sizeof *un;
    }
    char host[256];
    const char *colon = strrchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof host) {
        fprintf(stderr, "bad address %s (want HOST:PORT)\n", text);
        exit(2);
    }
    memcpy(host, text, colon - text);
    host[colon - text] = 0;
    char *h = host;
    if (h[0] == '[') {
        h++;
        h[strlen(h) - 1] = 0;
    }
    struct addrinfo hints = {0}, *res;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    hints.ai_socktype = strcmp(transport, "tcp") == 0 ? SOCK_STREAM : SOCK_DGRAM;
    if (getaddrinfo(h, colon + 1, &hints, &res) != 0) {
        fprintf(stderr, "bad address %s (numeric loopback addresses only)\n", text);
        exit(2);
    }
    socklen_t len = res->ai_addrlen;
    memcpy(ss, res->ai_addr, len);
    freeaddrinfo(res);
    return len;
}

static void print_bound(int fd, const char *path) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) die("getsockname");
    char host[INET6_ADDRSTRLEN];
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        printf("%s:%d\n", host, ntohs(in->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        printf("[%s]:%d\n", host, ntohs(in6->sin6_port));
    } else {
        printf("%s\n", path);
    }
    fflush(stdout);
}

static void drop(int fd) {
    struct conn *c = conns[fd];
    if (c) {
        free(c->pending);
        free(c);
        conns[fd] = NULL;
    }
    close(fd); /* also removes it from the epoll set */
}

static void watch(int fd, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.fd = fd};
    if (epoll_ctl(epfd, op, fd, &ev) < 0) die("epoll_ctl");
}

static void on_accept(void) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return;
            if (errno == EMFILE || errno == ENFILE) return;
            die("accept4");
        }
        if ((size_t)fd >= nconns) {
            close(fd);
            continue;
        }
        if (is_inet) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        conns[fd] = calloc(1, sizeof(struct conn));
        if (!conns[fd]) die("calloc");
        watch(fd, EPOLLIN, EPOLL_CTL_ADD);
    }
}

/* Write what is pending; return 1 when all is out, 0 when the socket is full, -1 on error. */
static int flush_pending(int fd, struct conn *c) {
    while (c->off < c->len) {
        ssize_t n = send(fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return 0;
            return -1;
        }
        c->off += n;
    }
    c->len = c->off = 0;
    return 1;
}

static void on_stream(int fd, uint32_t events) {
    struct conn *c = conns[fd];
    if (c->len) { /* waiting for the client to read what we sent */
        int r = flush_pending(fd, c);
        if (r < 0 || (r == 1 && c->eof)) {
            drop(fd);
        } else if (r == 1) {
            watch(fd, EPOLLIN, EPOLL_CTL_MOD);
        }
        return;
    }
    for (int round = 0; round < 16; round++) {
        ssize_t n = recv(fd, buf, BUFSZ, 0);
        if (n == 0) {
            drop(fd);
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            drop(fd);
            return;
        }
        if (!discard) {
            ssize_t off = 0;
            while (off < n) {
                ssize_t w = send(fd, buf + off, n - off, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EINTR) continue;
                    if (errno != EAGAIN) {
                        drop(fd);
                        return;
                    }
                    c->pending = realloc(c->pending, n - off);
                    if (!c->pending) die("realloc");
                    memcpy(c->pending, buf + off, n - off);
                    c->len = n - off;
                    c->off = 0;
                    watch(fd, EPOLLOUT, EPOLL_CTL_MOD);
                    return;
                }
                off += w;
            }
        }
        if (n < BUFSZ) return; /* most likely drained; level-triggered epoll tells us if not */
    }
    (void)events;
}

static void on_datagram(void) {
    for (int round = 0; round < 64; round++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(lfd, buf, 65536, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0) return; /* EAGAIN, or an ICMP error for an earlier reply */
        if (discard || plen <= sizeof(sa_family_t)) continue; /* unbound unix client */
        sendto(lfd, buf, n, MSG_DONTWAIT, (struct sockaddr *)&peer, plen);
    }
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s tcp|udp|unix|unix-dgram ADDRESS [echo|discard]\n", argv[0]);
        return 2;
    }
    const char *transport = argv[1];
    discard = argc == 4 && strcmp(argv[3], "discard") == 0;
    if (argc == 4 && !discard && strcmp(argv[3], "echo") != 0) {
        fprintf(stderr, "handler must be echo or discard\n");
        return 2;
    }
    is_stream = strcmp(transport, "tcp") == 0 || strcmp(transport, "unix") == 0;
    is_inet = strncmp(transport, "unix", 4) != 0;
    if (!is_stream && strcmp(transport, "udp") != 0 && strcmp(transport, "unix-dgram") != 0) {
        fprintf(stderr, "unknown transport %s\n", transport);
        return 2;
    }
    struct sockaddr_storage ss;
    socklen_t len = parse_addr(transport, argv[2], &ss);
    if (!loopback_only((struct sockaddr *)&ss)) {
        fprintf(stderr, "refusing %s: loopback addresses and unix sockets only\n", argv[2]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max && rl.rlim_max < 1 << 20) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    nconns = 65536;
    conns = calloc(nconns, sizeof *conns);
    if (!conns) die("calloc");

    int type = (is_stream ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC;
    lfd = socket(ss.ss_family, type, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    if (is_inet) setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&ss, len) < 0) die("bind");
    if (is_stream && listen(lfd, 1024) < 0) die("listen");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    watch(lfd, EPOLLIN, EPOLL_CTL_ADD);
    print_bound(lfd, argv[2]);

    struct epoll_event events[MAXEV];
    for (;;) {
        int n = epoll_wait(epfd, events, MAXEV, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                if (is_stream)
                    on_accept();
                else
                    on_datagram();
            } else if (conns[fd]) {
                on_stream(fd, events[i].events);
            }
        }
    }
}
