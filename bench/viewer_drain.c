/* Cheap bench viewers (bench/load_drain.py): read every viewer's UDP socket with recvmmsg and count RTP in C.

One epoll set holds the sockets of all viewers (epoll data = the viewer's slot); the event loop watches the epoll
fd. drain_run() reads the ready sockets in batches (recvmmsg, MSG_DONTWAIT) and, per viewer, counts RTP per SSRC
from the clear SRTP header (RFC 3711 §3.1): packets, extended highest sequence number (RFC 3550 §A.1) and marker
bits (video frames). Only a few datagrams go back to Python, copied into an arena with their source address and
the kernel receive time (SO_TIMESTAMPNS, CLOCK_REALTIME):
  kind 0: STUN (first byte 0-3, RFC 7983) - aioice answers the server's consent checks (RFC 7675) with it;
  kind 1: every video RTP packet while the viewer has not seen its first complete keyframe (pass_media set);
  kind 2: one RTP packet in sample_every afterwards, for the SRTP authentication / payload check and latency.
RTCP is counted, DTLS and anything else after the handshake is counted as `other` and dropped (as the Python
viewer does). Single-threaded: the receive buffers are static.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_SSRC 8
#define PKT_MAX 2048
#define EVENTS 256

typedef struct {
    uint32_t ssrc;
    int32_t video;
    int64_t received;
    int64_t highest; /* extended: cycles | seq */
    int64_t cycles;
    int64_t frames;  /* packets with the marker bit */
} ssrc_count;

typedef struct {
    int32_t fd;
    int32_t video_pt;
    int32_t pass_media;
    int32_t sample_every;
    int64_t packets; /* RTP packets counted */
    int64_t rtcp;
    int64_t other;
    int64_t stun;
    int64_t passed;
    int64_t reads;   /* recvmmsg calls that returned data */
    int32_t nssrc;
    int32_t overflow_ssrc; /* RTP packets of SSRCs beyond MAX_SSRC (not counted) */
    ssrc_count ssrcs[MAX_SSRC];
} viewer_state;

typedef struct {
    int32_t viewer;
    int32_t kind;
    int32_t offset;
    int32_t length;
    uint32_t addr; /* network order */
    int32_t port;  /* host order */
    int64_t rx_ns; /* kernel receive time, CLOCK_REALTIME ns; 0 if none */
} passed_packet;

static uint8_t bufs[BATCH][PKT_MAX];
static uint8_t ctrl[BATCH][256];
static struct sockaddr_in addrs[BATCH];
static struct iovec iovs[BATCH];
static struct mmsghdr msgs[BATCH];

int drain_open(void) { return epoll_create1(EPOLL_CLOEXEC); }

int drain_add(int ep, int fd, int slot) {
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0) return -errno;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u32 = (uint32_t)slot;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) return -errno;
    return 0;
}

int drain_remove(int ep, int fd) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    return epoll_ctl(ep, EPOLL_CTL_DEL, fd, &ev) < 0 ? -errno : 0;
}

/* Count one datagram; returns the kind to hand to Python (0 STUN, 1 watch, 2 sample) or -1. */
int drain_process(viewer_state *v, const uint8_t *d, int len) {
    if (len < 1) return -1;
    uint8_t b0 = d[0];
    if (b0 <= 3) {
        v->stun++;
        return 0;
    }
    if (!(b0 > 127 && b0 < 192) || len < 12) {
        v->other++;
        return -1;
    }
    uint8_t pt_byte = d[1];
    if (pt_byte >= 192 && pt_byte <= 223) { /* RTCP (RFC 5761 §4) */
        v->rtcp++;
        return -1;
    }
    uint32_t seq = ((uint32_t)d[2] << 8) | d[3];
    uint32_t ssrc = ((uint32_t)d[8] << 24) | ((uint32_t)d[9] << 16) | ((uint32_t)d[10] << 8) | d[11];
    int video = (pt_byte & 0x7F) == v->video_pt;
    ssrc_count *c = NULL;
    for (int i = 0; i < v->nssrc; i++)
        if (v->ssrcs[i].ssrc == ssrc) { c = &v->ssrcs[i]; break; }
    if (c == NULL) {
        if (v->nssrc >= MAX_SSRC) {
            v->overflow_ssrc++;
            return -1;
        }
        c = &v->ssrcs[v->nssrc++];
        memset(c, 0, sizeof *c);
        c->ssrc = ssrc;
        c->video = video;
        c->highest = seq;
    }
    c->received++;
    if (pt_byte & 0x80) c->frames++;
    uint32_t low = (uint32_t)(c->highest & 0xFFFF);
    uint32_t delta = (seq - low) & 0xFFFF;
    if (delta < 0x8000) {
        if (seq < low) c->cycles += 0x10000;
        c->highest = c->cycles | seq;
    }
    v->packets++;
    if (v->pass_media) return video ? 1 : -1;
    if (v->sample_every > 0 && v->packets % v->sample_every == 0) return 2;
    return -1;
}

static int64_t rx_time(struct msghdr *h) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c != NULL; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof ts);
            return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        }
    }
    return 0;
}

/* Read what is ready on every viewer socket, up to `budget` datagrams in all. Returns the number of datagrams
   handed back in out[] (their bytes in arena); *received gets the number of datagrams read. Stops early when out
   or arena could not take a whole batch (level-triggered epoll: the rest is read on the next call). */
int drain_run(int ep, viewer_state *states, int nstates, passed_packet *out, int max_out, uint8_t *arena,
              int arena_size, int budget, int64_t *received) {
    struct epoll_event events[EVENTS];
    int n_out = 0, used = 0;
    int64_t got = 0;
    for (int round = 0; round < 4 && got < budget; round++) {
        int ready = epoll_wait(ep, events, EVENTS, 0);
        if (ready <= 0) break;
        for (int e = 0; e < ready; e++) {
            int slot = (int)events[e].data.u32;
            if (slot < 0 || slot >= nstates) continue;
            viewer_state *v = &states[slot];
            for (;;) {
                if (n_out + BATCH > max_out || used + BATCH * PKT_MAX > arena_size || got >= budget) goto done;
                for (int i = 0; i < BATCH; i++) {
                    iovs[i].iov_base = bufs[i];
                    iovs[i].iov_len = PKT_MAX;
                    memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
                    msgs[i].msg_hdr.msg_name = &addrs[i];
                    msgs[i].msg_hdr.msg_namelen = sizeof addrs[i];
                    msgs[i].msg_hdr.msg_iov = &iovs[i];
                    msgs[i].msg_hdr.msg_iovlen = 1;
                    msgs[i].msg_hdr.msg_control = ctrl[i];
                    msgs[i].msg_hdr.msg_controllen = sizeof ctrl[i];
                }
                int n = recvmmsg(v->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
                if (n <= 0) break; /* EAGAIN (drained) or an error (e.g. ICMP unreachable): next socket */
                v->reads++;
                got += n;
                for (int i = 0; i < n; i++) {
                    int len = (int)msgs[i].msg_len;
                    int kind = drain_process(v, bufs[i], len);
                    if (kind < 0) continue;
                    passed_packet *p = &out[n_out++];
                    p->viewer = slot;
                    p->kind = kind;
                    p->offset = used;
                    p->length = len;
                    p->addr = addrs[i].sin_addr.s_addr;
                    p->port = ntohs(addrs[i].sin_port);
                    p->rx_ns = rx_time(&msgs[i].msg_hdr);
                    memcpy(arena + used, bufs[i], (size_t)len);
                    used += len;
                    v->passed++;
                }
                if (n < BATCH) break;
            }
        }
    }
done:
    *received = got;
    return n_out;
}
