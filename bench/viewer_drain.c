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

Viewers that negotiated transport-cc (twcc_id > 0) also note each packet's transport-wide sequence number
(draft-holmer-rmcat-transport-wide-cc-extensions-01 §2, from the RFC 8285 header extension, in clear in SRTP) with
its kernel receive time; drain_feedback() turns what arrived since the last call into one RTCP transport-wide
feedback packet (§3.1, RTPFB FMT 15), as a browser sends every ~50-100 ms, for Python to protect and send.
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
#define TWCC_MAX 256 /* arrivals held between two feedbacks (~62 ms: ~9 at 600 kbit/s, ~20 at 2.5 Mbit/s) */

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
    int32_t twcc_id;       /* the transport-wide-cc extension id; 0: not negotiated */
    int32_t twcc_count;    /* arrivals held */
    int32_t twcc_started;  /* a feedback was sent: twcc_next is the first sequence number not yet covered */
    int32_t twcc_next;
    int64_t twcc_feedbacks;
    int64_t twcc_dropped;  /* arrivals not reported: the buffer was full, or older than the last feedback */
    uint16_t twcc_seq[TWCC_MAX];
    int64_t twcc_us[TWCC_MAX];
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

static int64_t arrival_us; /* the receive time of the datagram drain_process is counting (CLOCK_REALTIME µs) */
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

/* The transport-wide sequence number in an RTP header's extension (RFC 8285 one- or two-byte form), or -1. */
static int twcc_seq(const uint8_t *d, int len, int id) {
    if (!(d[0] & 0x10)) return -1;
    int pos = 12 + 4 * (d[0] & 0x0F);
    if (pos + 4 > len) return -1;
    int profile = (d[pos] << 8) | d[pos + 1];
    int end = pos + 4 + 4 * ((d[pos + 2] << 8) | d[pos + 3]);
    if (end > len) return -1;
    pos += 4;
    while (pos < end) {
        int eid, elen;
        if (profile == 0xBEDE) {
            if (d[pos] == 0) { pos++; continue; } /* padding */
            eid = d[pos] >> 4;
            if (eid == 15) return -1;
            elen = (d[pos] & 0x0F) + 1;
            pos += 1;
        } else if ((profile & 0xFFF0) == 0x1000) {
            if (d[pos] == 0) { pos++; continue; }
            if (pos + 2 > end) return -1;
            eid = d[pos];
            elen = d[pos + 1];
            pos += 2;
        } else {
            return -1;
        }
        if (pos + elen > end) return -1;
        if (eid == id && elen == 2) return (d[pos] << 8) | d[pos + 1];
        pos += elen;
    }
    return -1;
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
    if (v->twcc_id > 0) {
        int tseq = twcc_seq(d, len, v->twcc_id);
        if (tseq >= 0) {
            if (v->twcc_count < TWCC_MAX) {
                v->twcc_seq[v->twcc_count] = (uint16_t)tseq;
                v->twcc_us[v->twcc_count++] = arrival_us;
            } else {
                v->twcc_dropped++;
            }
        }
    }
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
                    int64_t rx_ns = rx_time(&msgs[i].msg_hdr);
                    if (rx_ns == 0) {
                        struct timespec now;
                        clock_gettime(CLOCK_REALTIME, &now);
                        rx_ns = (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec;
                    }
                    arrival_us = rx_ns / 1000;
                    int kind = drain_process(v, bufs[i], len);
                    if (kind < 0) continue;
                    passed_packet *p = &out[n_out++];
                    p->viewer = slot;
                    p->kind = kind;
                    p->offset = used;
                    p->length = len;
                    p->addr = addrs[i].sin_addr.s_addr;
                    p->port = ntohs(addrs[i].sin_port);
                    p->rx_ns = rx_ns;
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

static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v & 0xFFFF); }

/* One transport-wide feedback packet (§3.1) for the arrivals held since the last one, in out (at most max bytes);
   returns its length, 0 when nothing arrived. Every sequence number from the first not yet covered to the highest
   received is reported, received (with its receive delta) or not (a loss); two-bit status vector chunks (§3.1.4),
   1-byte deltas where they fit, else 2-byte ones (§3.1.5). Arrivals older than the last feedback are dropped
   (a browser reports them late; the bench does not need it). */
int drain_feedback(viewer_state *v, uint8_t *out, int max, uint32_t sender_ssrc, uint32_t media_ssrc) {
    int count = v->twcc_count;
    if (count == 0) return 0;
    v->twcc_count = 0;
    /* Order by sequence number relative to the first one not covered yet (or the first held), in place. */
    uint32_t base = v->twcc_started ? (uint32_t)v->twcc_next : v->twcc_seq[0];
    int kept = 0;
    for (int i = 0; i < count; i++) {
        int rel = (int16_t)(uint16_t)(v->twcc_seq[i] - base);
        if (rel < 0) { v->twcc_dropped++; continue; }
        v->twcc_seq[kept] = v->twcc_seq[i];
        v->twcc_us[kept++] = v->twcc_us[i];
    }
    count = kept;
    if (count == 0) return 0;
    for (int i = 1; i < count; i++) { /* insertion sort: almost always in order already */
        uint16_t seq = v->twcc_seq[i];
        int64_t at = v->twcc_us[i];
        int rel = (uint16_t)(seq - base);
        int j = i - 1;
        while (j >= 0 && (uint16_t)(v->twcc_seq[j] - base) > rel) {
            v->twcc_seq[j + 1] = v->twcc_seq[j];
            v->twcc_us[j + 1] = v->twcc_us[j];
            j--;
        }
        v->twcc_seq[j + 1] = seq;
        v->twcc_us[j + 1] = at;
    }
    int status_count = (uint16_t)(v->twcc_seq[count - 1] - base) + 1;
    int chunks = (status_count + 6) / 7;
    if (24 + 2 * chunks + 2 * count + 3 > max) return 0; /* cannot happen with TWCC_MAX arrivals and PKT_MAX */
    int64_t first = v->twcc_us[0];
    for (int i = 1; i < count; i++)
        if (v->twcc_us[i] < first) first = v->twcc_us[i];
    int64_t reference = first / 64000; /* §3.1: multiples of 64 ms, 24 bits */
    uint8_t symbols[TWCC_MAX * 8];
    if (status_count > (int)sizeof symbols) { /* a jump of thousands: start over from the next arrival */
        v->twcc_started = 0;
        v->twcc_dropped += count;
        return 0;
    }
    memset(symbols, 0, (size_t)status_count);
    uint8_t *delta_out = out + 20 + 2 * chunks;
    int delta_len = 0;
    int64_t ticks_before = 0;
    int last_rel = -1;
    for (int i = 0; i < count; i++) {
        int rel = (uint16_t)(v->twcc_seq[i] - base);
        if (rel == last_rel) continue; /* a duplicate */
        last_rel = rel;
        int64_t ticks = (v->twcc_us[i] - reference * 64000) / 250;
        int64_t delta = ticks - ticks_before;
        ticks_before = ticks;
        if (delta >= 0 && delta <= 255) {
            symbols[rel] = 1;
            delta_out[delta_len++] = (uint8_t)delta;
        } else {
            if (delta > 32767) delta = 32767;
            if (delta < -32768) delta = -32768;
            symbols[rel] = 2;
            put16(delta_out + delta_len, (uint32_t)(uint16_t)(int16_t)delta);
            delta_len += 2;
        }
    }
    for (int c = 0; c < chunks; c++) {
        uint32_t chunk = 0xC000;
        for (int k = 0; k < 7; k++) {
            int index = c * 7 + k;
            chunk |= (uint32_t)(index < status_count ? symbols[index] : 0) << (12 - 2 * k);
        }
        put16(out + 20 + 2 * c, chunk);
    }
    int length = 20 + 2 * chunks + delta_len;
    while (length % 4) out[length++] = 0; /* zero padding to a 32-bit boundary (§3.1) */
    out[0] = 0x80 | 15;                    /* V=2, FMT=15 */
    out[1] = 205;                          /* RTPFB */
    put16(out + 2, (uint32_t)(length / 4 - 1));
    put32(out + 4, sender_ssrc);
    put32(out + 8, media_ssrc);
    put16(out + 12, base);
    put16(out + 14, (uint32_t)status_count);
    put32(out + 16, ((uint32_t)(reference & 0xFFFFFF) << 8) | (uint32_t)(v->twcc_feedbacks & 0xFF));
    v->twcc_feedbacks++;
    v->twcc_started = 1;
    v->twcc_next = (int32_t)((base + (uint32_t)status_count) & 0xFFFF);
    return length;
}
