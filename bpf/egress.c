// socat-monitor egress guard: refuse a socat relay's connect() to a backend
// its listener's policy does not allow, before any packet leaves (EPERM).
//
// cgroup_sock_addr connect4/connect6 programs, attached through BPF links
// to a cgroup2 directory (they go when the agent's links close, even if it
// dies). Only processes in `relay_pids` (filled from user space with the
// relay parent, propagated to forked children and threads by the
// sched_process_fork tracepoint, removed at each thread's exit) AND whose
// listener is in `guarded` are checked; everything else is allowed
// untouched. Refusals are reported on the `denials` ring buffer; failed
// reports are counted in `lost`, children the full table could not take in
// `full` (they run unguarded, and user space reports it).
// Reads only the program context and tracepoint arguments (no kernel structs).

#include <uapi/linux/bpf.h>

struct rule_key {
    u32 prefixlen;   // bits of what follows that must match: 40 + address prefix
    u16 listener;    // listener port (host order)
    u16 port;        // backend port (host order), 0 = any port
    u8 family;       // 4 or 6
    u8 addr[16];     // network order; IPv4 in the first 4 bytes
} __attribute__((packed));

struct denial {
    u64 ktime_ns;
    u32 pid;
    u16 listener;
    u16 port;
    u8 family;
    u8 pad[3];
    u8 addr[16];
};

BPF_HASH(relay_pids, u32, u16, 65536);
BPF_HASH(guarded, u16, u8, 1024);
BPF_F_TABLE("lpm_trie", struct rule_key, u8, allowed, 16384, BPF_F_NO_PREALLOC);
BPF_RINGBUF_OUTPUT(denials, DENIAL_PAGES);   // -DDENIAL_PAGES from monitor/enforce/egress.py
BPF_ARRAY(lost, u64, 1);
BPF_ARRAY(full, u64, 1);

static __always_inline void count(u64 *counter) {
    if (counter)
        __sync_fetch_and_add(counter, 1);
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    u32 parent = args->parent_pid;
    u32 child = args->child_pid;
    u16 *listener = relay_pids.lookup(&parent);
    if (listener) {
        u16 value = *listener;
        if (relay_pids.update(&child, &value) != 0) {
            int zero = 0;
            count(full.lookup(&zero));
        }
    }
    return 0;
}

// Every task's exit (threads too: the fork tracepoint also adds thread ids).
TRACEPOINT_PROBE(sched, sched_process_exit) {
    u32 tid = bpf_get_current_pid_tgid();
    relay_pids.delete(&tid);
    return 0;
}

static __always_inline int decide(u16 listener, struct rule_key *key, u16 port) {
    key->listener = listener;
    key->port = port;
    if (allowed.lookup(key))
        return 1;
    key->port = 0;
    if (allowed.lookup(key))
        return 1;
    struct denial d = {};
    d.ktime_ns = bpf_ktime_get_ns();
    d.pid = bpf_get_current_pid_tgid() >> 32;
    d.listener = listener;
    d.port = port;
    d.family = key->family;
    __builtin_memcpy(d.addr, key->addr, 16);
    if (denials.ringbuf_output(&d, sizeof(d), 0) != 0) {
        int zero = 0;
        count(lost.lookup(&zero));
    }
    return 0;
}

static __always_inline u16 *guarded_listener(void) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u16 *listener = relay_pids.lookup(&tgid);
    if (!listener)
        return 0;
    u16 l = *listener;
    if (!guarded.lookup(&l))
        return 0;
    return listener;
}

int egress_connect4(struct bpf_sock_addr *ctx) {
    u16 *listener = guarded_listener();
    if (!listener)
        return 1;
    struct rule_key key = {};
    u32 ip = ctx->user_ip4;
    u32 raw_port = ctx->user_port;
    key.family = 4;
    key.prefixlen = 40 + 32;
    __builtin_memcpy(key.addr, &ip, 4);
    return decide(*listener, &key, bpf_ntohs((u16)raw_port));
}

int egress_connect6(struct bpf_sock_addr *ctx) {
    u16 *listener = guarded_listener();
    if (!listener)
        return 1;
    struct rule_key key = {};
    u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];
    u32 raw_port = ctx->user_port;
    if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0xffff)) {   // ::ffff:a.b.c.d is an IPv4 backend
        key.family = 4;
        key.prefixlen = 40 + 32;
        __builtin_memcpy(key.addr, &w3, 4);
    } else {
        key.family = 6;
        key.prefixlen = 40 + 128;
        __builtin_memcpy(key.addr, &w0, 4);
        __builtin_memcpy(key.addr + 4, &w1, 4);
        __builtin_memcpy(key.addr + 8, &w2, 4);
        __builtin_memcpy(key.addr + 12, &w3, 4);
    }
    return decide(*listener, &key, bpf_ntohs((u16)raw_port));
}
