// socat-monitor capture: TCP connections and lifecycle of watched processes.
//
// Tracepoints only (no kprobes, no kernel struct reads): syscall arguments,
// user memory and sock:inet_sock_set_state. Watched processes are those whose
// comm is in the `comms` map (filled from Python). One event per connection
// moment reaches user space through the `events` ring buffer:
//
//   EV_ACCEPT   sys_exit_accept{,4}: client + listener 4-tuple (the full IPv6
//               peer and the listener address come from the SYN_RECV ->
//               ESTABLISHED state change, saved in `estab`)
//   EV_CONNECT  result of an outbound connect (blocking, or EINPROGRESS then
//               the state change out of SYN_SENT)
//   EV_CLOSE    a tracked socket reached TCP_CLOSE (F_REFUSED when the
//               accepting process itself shut it down without fork/connect),
//               with the bytes read()/written on it by its holder
//   EV_EXEC     a watched program was exec'd (argv, bounded)
//   EV_EXIT     a watched process ended (exit code or fatal signal); clean
//               exits of fork children of a watched process are not reported
//
// A relay child's sockets often reach TCP_CLOSE before it read() the last
// data: their EV_CLOSE is then sent at the child's exit, so byte counts are
// final (timestamp and duration still those of the TCP close).
//
// Fork is kept in-kernel (`forks`): it gives every event its ppid and gives a
// relay child the session cookie and listener of the accept it was forked for.
// Every event the ring buffer cannot take is counted in `lost` (per CPU).

#define AF_INET 2
#define AF_INET6 10
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_LAST_ACK 9
#define EINPROGRESS 115

#define EV_ACCEPT 1
#define EV_CONNECT 2
#define EV_CLOSE 3
#define EV_EXEC 4
#define EV_EXIT 5

#define F_INGRESS 1     // connection accepted by the process (else dialled)
#define F_REFUSED 2     // accepted, then shut down by the acceptor (range=/tcpwrap)
#define F_PARTIAL 4     // accept seen without its state change: listener unknown
#define F_EXITED 8      // EV_EXIT: exit_group seen (err = status), else `sig`
#define F_FAILED 16     // EV_CONNECT failed (err = errno, 0 if unknown)

#define BPF_RB_NO_WAKEUP 1
#define BPF_RB_FORCE_WAKEUP 2
#ifndef WAKEUP_EVERY
#define WAKEUP_EVERY 1024
#endif

#define ACCEPTED 0      // conn_ports: local ports of accepted sockets
#define DIALLED 1       // and remote ports of dialled ones
#define PORT_WORDS 1024 // 65536 bits

#define MAX_ARGS 20
#define ARG_LEN 128

struct event {                  // 144 bytes, decoded by monitor/capture/decode.py
    u8  type, family, flags, pad;
    u32 pid, tid, ppid, uid, gid;
    u64 ts;                     // bpf_ktime_get_ns (CLOCK_MONOTONIC)
    u64 cookie;                 // session: ktime of the accept that started it
    u64 duration;               // EV_CLOSE: ns since accept / connect
    s32 err;                    // errno (EV_CONNECT) or exit status (EV_EXIT)
    u16 sport, dport;           // host order
    u8  saddr[16], daddr[16];   // ingress: client, local; egress: local, remote
    u16 lport, lfamily;         // the relay's listener (both directions)
    u32 sig;                    // EV_EXIT: fatal signal
    u8  laddr[16];
    char comm[16];
    u64 bytes_in, bytes_out;    // EV_CLOSE: read from / written to this peer
};

struct exec_event {
    struct event h;
    u32 argc, pad;
    char argv[MAX_ARGS][ARG_LEN];
};

struct comm_key { char comm[16]; };
struct estab_key { u16 family, port; u8 addr[8]; };   // client port + first 8 address bytes
struct estab_val { u64 skaddr; u16 family, lport, cport, pad; u8 laddr[16], caddr[16]; };
struct accept_args { u64 addr; };
struct connect_args { u64 skaddr; u16 family, dport; u32 fd; u8 daddr[16]; };
struct conn { struct event ev; u64 activity; u32 pending, state, fd, closed; };
struct pstate { u64 cookie, activity, sk; u16 lport, lfamily; u32 fd; u8 laddr[16]; };
struct exit_val { s32 code; u32 sig; u32 exited; u32 pad; };
// `end`: how the process ends, kept here for the processes forked while the
// programs ran (`exits` holds it for the others); `accepted`: it has a
// `pstates` entry (no other process has one).
struct fork_val { u32 ppid, tracked; u64 cookie, in_sk, out_sk; u16 lport, lfamily; u32 accepted; u8 laddr[16];
                  struct exit_val end; };
struct io_key { u32 tgid, fd; };
struct io_val { u64 rd, wr; };
struct io_pending { struct io_key key; u32 write, pad; };

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);        // keep it the first map declared: see EVENTS_MAP
BPF_PERCPU_ARRAY(lost, u64, 1);                   // records dropped
BPF_PERCPU_ARRAY(unwoken, u32, 1);                 // events since the last wakeup
BPF_ARRAY(woke_at, u64, 1);                        // ring position just past the record that last woke the consumer
BPF_PERCPU_ARRAY(exec_scratch, struct exec_event, 1);
BPF_HASH(comms, struct comm_key, u8, 64);
// Tables a hostile process could fill are bounded by design: `ports` is an
// array over the whole port space (a bind flood only sets bits), and the
// tables keyed by a syscall in progress are LRU (a thread killed mid-syscall
// leaves an entry that is evicted, never one that blocks new ones).
BPF_ARRAY(ports, u8, 65536);                                          // ports watched processes bound
BPF_PERCPU_ARRAY(exec_missed, u64, 1);                                // execs whose argv entry was gone
BPF_TABLE("lru_hash", u32, struct accept_args, accepts, 1024);       // tid -> accept's sockaddr buffer
BPF_TABLE("lru_hash", u32, struct connect_args, connects, 1024);
BPF_TABLE("lru_hash", u32, struct exec_event, execs, 256);           // tgid -> argv copied at execve entry
BPF_TABLE("lru_hash", struct estab_key, struct estab_val, estab, 8192);
BPF_TABLE("lru_hash", u64, struct conn, conns, 65536);        // sock address -> connection
BPF_ARRAY(conn_ports, u64, 2 * PORT_WORDS);                  // ports of tracked sockets, a bit each
BPF_TABLE("lru_hash", u32, struct pstate, pstates, 4096);     // tgid -> last accept, fork/connect count
BPF_TABLE("lru_hash", u32, struct fork_val, forks, 16384);    // child tgid -> parent
BPF_TABLE("lru_hash", u32, struct exit_val, exits, 4096);
#ifdef NO_BYTES
#define SOCKIO_SIZE 1       // unused: no byte counts
#else
#define SOCKIO_SIZE 65536
#endif
BPF_TABLE("lru_hash", struct io_key, struct io_val, sockio, SOCKIO_SIZE);  // (tgid, fd) of a tracked socket -> bytes
BPF_TABLE("lru_hash", u32, struct io_pending, iopending, 4096);    // tid -> read/write in progress

static __always_inline int watched(void) {
    struct comm_key k = {};
    bpf_get_current_comm(&k.comm, sizeof(k.comm));
    return comms.lookup(&k) != NULL;
}

// `events` is the first map declared, so bcc's placeholder for it is -1 (bcc 0.26 has no
// events.ringbuf_query(); a placeholder of another map is refused by the verifier at load).
#define EVENTS_MAP ((void *)bpf_pseudo_fd(1, -1))

// Bulk records wake the consumer only every WAKEUP_EVERY events per CPU: it
// also polls with a timeout, so wakeups stay few under load (1024 measured
// better than 64 on the bench: fewer context switches). Records that can
// lead to a block (accepts) wake it at once (`urgent`), so a lone offender on
// a quiet host is not left waiting for the poll timeout. A wakeup costs the
// producer a self-interrupt (10-14 us here), so none is sent while the
// consumer has not yet read the record that last woke it. The check comes
// after this record is reserved: from then on the consumer's level-triggered
// poll counts it as pending, so a consumer that has not yet read that earlier
// record (whose own wakeup is sent or still coming) reads this one too.
// `woke_at` gets the producer position read before the waking record's
// reserve: at most its start, so an error can only send a wakeup more.
static __always_inline void emit_record(void *data, u32 size, int urgent) {
    u32 zero = 0;
    u64 flags = BPF_RB_NO_WAKEUP;
    u32 *n = unwoken.lookup(&zero);
    u64 *woke = woke_at.lookup(&zero);
    u64 start = bpf_ringbuf_query(EVENTS_MAP, BPF_RB_PROD_POS);
    void *slot = events.ringbuf_reserve(size);
    if (!slot) {
        u64 *count = lost.lookup(&zero);
        if (count)
            (*count)++;
        return;
    }
    bpf_probe_read_kernel(slot, size, data);
    if (urgent || (n && ++(*n) >= WAKEUP_EVERY)) {
        if (n)
            *n = 0;
        if (!woke || bpf_ringbuf_query(EVENTS_MAP, BPF_RB_CONS_POS) >= *woke) {
            flags = BPF_RB_FORCE_WAKEUP;
            if (woke)
                *woke = start;
        }
    }
    events.ringbuf_submit(slot, flags);
}

static __always_inline void emit(void *data, u32 size) { emit_record(data, size, 0); }

// Identity of the current task into an event header, all but its parent.
static __always_inline void fill_identity(struct event *ev) {
    u64 id = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();
    ev->pid = id >> 32;
    ev->tid = (u32)id;
    ev->uid = (u32)ug;
    ev->gid = ug >> 32;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
}

// Identity of the current task and its parent; its fork entry (NULL if none), for the caller to use too.
static __always_inline struct fork_val *fill_task(struct event *ev) {
    fill_identity(ev);
    u32 tgid = ev->pid;
    struct fork_val *f = forks.lookup(&tgid);
    ev->ppid = f ? f->ppid : 0;
    return f;
}

// `conn_ports` has a bit for the local port of every socket accepted into `conns` and one for the
// remote port of every socket dialled into it. Bits are set before the insert and never cleared: a
// state change whose ports have no bit is not a tracked socket's, known without a lookup in the
// large `conns` table (most sockets of the host: every TCP client and server that is not a relay).
static __always_inline void mark_port(u32 side, u16 port) {
    u32 word = side * PORT_WORDS + (port >> 6);
    u64 *bits = conn_ports.lookup(&word);
    if (bits)
        __sync_fetch_and_or(bits, 1ULL << (port & 63));
}

static __always_inline int port_marked(u32 side, u16 port) {
    u32 word = side * PORT_WORDS + (port >> 6);
    u64 *bits = conn_ports.lookup(&word);
    return bits && ((*bits >> (port & 63)) & 1);
}

// Start counting the bytes of a tracked socket (tgid, fd): compiled out with
// -DNO_BYTES, when nothing reads the counts.
static __always_inline void count_bytes(u32 tgid, u32 fd) {
#ifndef NO_BYTES
    struct io_key ik = {.tgid = tgid, .fd = fd};
    struct io_val zero_io = {};
    sockio.update(&ik, &zero_io);
#endif
}

static __always_inline void bump_activity(u32 tgid) {
    struct pstate *p = pstates.lookup(&tgid);
    if (p)
        __sync_fetch_and_add(&p->activity, 1);
}

// ---- listeners ----------------------------------------------------------

TRACEPOINT_PROBE(syscalls, sys_enter_bind) {
    if (!watched())
        return 0;
    u8 sa[4] = {};
    bpf_probe_read_user(sa, sizeof(sa), args->umyaddr);
    u16 fam = sa[0] | (sa[1] << 8);
    if (fam != AF_INET && fam != AF_INET6)
        return 0;
    int port = (sa[2] << 8) | sa[3];
    u8 one = 1;
    ports.update(&port, &one);
    return 0;
}

// ---- accept ---------------------------------------------------------------

static __always_inline int accept_enter(void *uaddr) {
    if (!watched() || !uaddr)
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    struct accept_args a = {.addr = (u64)uaddr};
    accepts.update(&tid, &a);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_accept) { return accept_enter(args->upeer_sockaddr); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return accept_enter(args->upeer_sockaddr); }

static __always_inline int accept_exit(long ret) {
    u32 tid = bpf_get_current_pid_tgid();
    struct accept_args *a = accepts.lookup(&tid);
    if (!a)
        return 0;
    u64 uaddr = a->addr;
    accepts.delete(&tid);
    if (ret < 0)
        return 0;
    // sockaddr_in: family, port, addr[4]; socat's sockaddr_in6 is cut at 16
    // bytes: family, port, flowinfo, addr[0..8].
    u8 sa[16] = {};
    bpf_probe_read_user(sa, sizeof(sa), (void *)uaddr);
    struct estab_key k = {};
    k.family = sa[0] | (sa[1] << 8);
    k.port = (sa[2] << 8) | sa[3];
    if (k.family == AF_INET)
        __builtin_memcpy(k.addr, &sa[4], 4);
    else if (k.family == AF_INET6)
        __builtin_memcpy(k.addr, &sa[8], 8);
    else
        return 0;

    struct conn c = {};
    struct event *ev = &c.ev;
    ev->type = EV_ACCEPT;
    ev->flags = F_INGRESS;
    ev->ts = bpf_ktime_get_ns();
    ev->cookie = ev->ts;
    struct fork_val *f = fill_task(ev);
    ev->family = k.family;
    ev->sport = k.port;
    struct estab_val *e = estab.lookup(&k);
    u64 sk = 0;
    if (e) {
        sk = e->skaddr;
        ev->family = e->family;
        ev->dport = e->lport;
        __builtin_memcpy(ev->saddr, e->caddr, 16);
        __builtin_memcpy(ev->daddr, e->laddr, 16);
        ev->lport = e->lport;
        ev->lfamily = e->family;
        __builtin_memcpy(ev->laddr, e->laddr, 16);
        estab.delete(&k);
    } else {
        ev->flags |= F_PARTIAL;
        __builtin_memcpy(ev->saddr, k.addr, 8);
    }
    emit_record(ev, sizeof(*ev), 1);

    u32 tgid = ev->pid;
    struct pstate fresh = {};
    if (f)
        f->accepted = 1;
    struct pstate *p = pstates.lookup_or_try_init(&tgid, &fresh);
    if (p) {
        p->cookie = ev->cookie;
        p->sk = sk;
        p->fd = ret;
        p->lport = ev->lport;
        p->lfamily = ev->lfamily;
        __builtin_memcpy(p->laddr, ev->laddr, 16);
        c.activity = p->activity;
    }
    if (sk) {
        c.fd = ret;
        mark_port(ACCEPTED, ev->lport);
        conns.update(&sk, &c);
        count_bytes(tgid, ret);
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return accept_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return accept_exit(args->ret); }

// ---- connect --------------------------------------------------------------

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    if (!watched())
        return 0;
    u8 sa[24] = {};
    bpf_probe_read_user(sa, sizeof(sa), args->uservaddr);
    struct connect_args c = {};
    c.family = sa[0] | (sa[1] << 8);
    c.dport = (sa[2] << 8) | sa[3];
    if (c.family == AF_INET)
        __builtin_memcpy(c.daddr, &sa[4], 4);
    else if (c.family == AF_INET6)
        __builtin_memcpy(c.daddr, &sa[8], 16);
    else
        return 0;
    c.fd = args->fd;
    u32 tid = bpf_get_current_pid_tgid();
    connects.update(&tid, &c);
    bump_activity(bpf_get_current_pid_tgid() >> 32);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    u32 tid = bpf_get_current_pid_tgid();
    struct connect_args *a = connects.lookup(&tid);
    if (!a)
        return 0;
    u64 sk = a->skaddr;
    connects.delete(&tid);
    long ret = args->ret;
    struct conn *c = sk ? conns.lookup(&sk) : NULL;
    if (!c)
        return 0;   // not TCP (no SYN sent), or failed before the handshake
    if (ret == -EINPROGRESS) {
        // Whoever of us and the state change comes second reports the result
        // (no atomic exchange on this LLVM: in a tight race both may report;
        // user space drops the duplicate, identical record).
        c->pending = 1;
        if (c->state) {
            emit(&c->ev, sizeof(c->ev));
            if (c->ev.flags & F_FAILED)
                conns.delete(&sk);
        }
        return 0;
    }
    if (ret < 0) {
        c->ev.flags |= F_FAILED;
        c->ev.err = -ret;
    }
    emit(&c->ev, sizeof(c->ev));
    if (ret < 0)
        conns.delete(&sk);
    return 0;
}

// A tracked socket's close, with the bytes its holder moved on it.
static __always_inline void emit_close(u64 sk, struct conn *c) {
    c->ev.type = EV_CLOSE;
#ifndef NO_BYTES
    struct io_key ik = {.tgid = c->ev.pid, .fd = c->fd};
    struct io_val *io = sockio.lookup(&ik);
    if (io) {
        c->ev.bytes_in = io->rd;
        c->ev.bytes_out = io->wr;
        sockio.delete(&ik);
    }
#endif
    emit(&c->ev, sizeof(c->ev));
    conns.delete(&sk);
}

// ---- bytes: read()/write() on the tracked sockets' (tgid, fd) ----------------
// (compiled out with -DNO_BYTES: then no program runs on read/write at all, and
// the `sockio` table is never touched)

#ifndef NO_BYTES
static __always_inline int io_enter(u32 fd, u32 write) {
    u64 id = bpf_get_current_pid_tgid();
    struct io_pending pend = {.key = {.tgid = id >> 32, .fd = fd}, .write = write};
    if (!sockio.lookup(&pend.key))
        return 0;
    u32 tid = id;
    iopending.update(&tid, &pend);
    return 0;
}

static __always_inline int io_exit(long ret) {
    u32 tid = bpf_get_current_pid_tgid();
    struct io_pending *pend = iopending.lookup(&tid);
    if (!pend)
        return 0;
    struct io_val *io = sockio.lookup(&pend->key);
    if (io && ret > 0) {
        if (pend->write)
            io->wr += ret;
        else
            io->rd += ret;
    }
    iopending.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_read) { return io_enter(args->fd, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return io_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return io_enter(args->fd, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return io_exit(args->ret); }
#endif

// ---- process lifecycle ----------------------------------------------------

TRACEPOINT_PROBE(sched, sched_process_fork) {
    struct fork_val f = {.ppid = args->parent_pid};
    u32 child = args->child_pid;
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    if (watched()) {
        f.tracked = 1;
        struct pstate *p = pstates.lookup(&parent);
        if (p) {
            __sync_fetch_and_add(&p->activity, 1);
            if (p->cookie)
                count_bytes(child, p->fd);
            f.cookie = p->cookie;
            f.in_sk = p->sk;
            f.lport = p->lport;
            f.lfamily = p->lfamily;
            __builtin_memcpy(f.laddr, p->laddr, 16);
        } else {
            // a child of a relay child inherits its session
            struct fork_val *pf = forks.lookup(&parent);
            if (pf) {
                f.cookie = pf->cookie;
                f.lport = pf->lport;
                f.lfamily = pf->lfamily;
                __builtin_memcpy(f.laddr, pf->laddr, 16);
            }
        }
    }
    forks.update(&child, &f);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve) {
    u32 zero = 0;
    struct exec_event *x = exec_scratch.lookup(&zero);
    if (!x)
        return 0;
    const char *const *argv = (const char *const *)args->argv;
    x->argc = 0;
#pragma unroll
    for (int i = 0; i < MAX_ARGS; i++) {
        const char *p = NULL;
        bpf_probe_read_user(&p, sizeof(p), &argv[i]);
        if (!p)
            break;
        bpf_probe_read_user_str(x->argv[i], ARG_LEN, p);
        x->argc = i + 1;
    }
    // Keyed by process, not thread: an exec from a non-leader thread returns as the
    // leader (its tid becomes the tgid), so only the tgid finds the entry again.
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    execs.update(&tgid, x);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_execve) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 zero = 0;
    struct exec_event *x = execs.lookup(&tgid);
    if (!x) {
        // An entry evicted (a flood of execs, or threads killed mid-exec): report the
        // exec without argv (user space reads /proc), and count it.
        if (args->ret != 0 || !watched())
            return 0;
        x = exec_scratch.lookup(&zero);
        u64 *n = exec_missed.lookup(&zero);
        if (!x || !n)
            return 0;
        (*n)++;
        x->argc = 0;
    }
    if (args->ret == 0 && watched()) {
        __builtin_memset(&x->h, 0, sizeof(x->h));
        x->h.type = EV_EXEC;
        x->h.ts = bpf_ktime_get_ns();
        fill_task(&x->h);
        emit(x, sizeof(*x));
    }
    execs.delete(&tgid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group) {
    if (!watched())
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct exit_val v = {.code = args->error_code & 0xff, .exited = 1};
    struct fork_val *f = forks.lookup(&tgid);
    if (f)
        f->end = v;
    else
        exits.update(&tgid, &v);
    return 0;
}

// Only a signal that can end a process matters (the last one delivered is
// the fatal one): the ones whose default is to be ignored never do, and
// SIGCHLD reaches every relay at each of its children's exits.
#define SIGCHLD 17
#define SIGCONT 18
#define SIGURG 23
#define SIGWINCH 28

TRACEPOINT_PROBE(signal, signal_deliver) {
    int sig = args->sig;
    if (sig == SIGCHLD || sig == SIGCONT || sig == SIGURG || sig == SIGWINCH || !watched())
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct fork_val *f = forks.lookup(&tgid);
    if (f) {
        f->end.sig = sig;
        return 0;
    }
    struct exit_val fresh = {};
    struct exit_val *v = exits.lookup_or_try_init(&tgid, &fresh);
    if (v)
        v->sig = sig;
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = id;
    if (tid != tgid) {
        forks.delete(&tid);   // a thread: fork saw its creation too
        return 0;
    }
    // Every process exit looks up `forks`: a relay child that exec'd another
    // program (EXEC:...,nofork) is no longer watched but still holds sockets.
    struct fork_val *f = forks.lookup(&tgid);
    u64 in_sk = 0, out_sk = 0, cookie = 0;
    u32 tracked = 0, lport = 0, ppid = 0, forked = 0, accepted = 0;
    struct exit_val end = {};
    if (f) {
        forked = 1;
        accepted = f->accepted;
        end = f->end;
        ppid = f->ppid;
        tracked = f->tracked;
        cookie = f->cookie;
        lport = f->lport;
        if (tracked) {
            in_sk = f->in_sk;
            out_sk = f->out_sk;
        }
        // delete before looking at `closed`: a concurrent TCP close then
        // either sees no fork entry (and reports itself) or is seen here
        forks.delete(&tgid);
    }
    // the closes deferred while this relay child lived (see inet_sock_set_state)
    struct conn *c;
    if (in_sk && (c = conns.lookup(&in_sk)) && c->closed && c->ev.pid == tgid)
        emit_close(in_sk, c);
    if (out_sk && (c = conns.lookup(&out_sk)) && c->closed && c->ev.pid == tgid)
        emit_close(out_sk, c);
    if (!watched())
        return 0;
    struct event ev = {};
    ev.type = EV_EXIT;
    ev.ts = bpf_ktime_get_ns();
    fill_identity(&ev);
    ev.ppid = ppid;
    ev.cookie = cookie;
    ev.lport = lport;
    if (!forked) {
        struct exit_val *v = exits.lookup(&tgid);
        if (v)
            end = *v;
    }
    if (end.exited) {
        ev.flags = F_EXITED;
        ev.err = end.code;
    } else {
        ev.sig = end.sig;
    }
    if (!(tracked && ev.flags == F_EXITED && ev.err == 0))   // quiet: a clean relay child
        emit(&ev, sizeof(ev));
    if (!forked)
        exits.delete(&tgid);
    if (!forked || accepted)
        pstates.delete(&tgid);
    return 0;
}

// ---- TCP state changes (any context: softirq on loopback) -----------------

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != 6)
        return 0;
    int old = args->oldstate, new = args->newstate;
    u64 sk = (u64)args->skaddr;

    if (old == TCP_SYN_RECV && new == TCP_ESTABLISHED) {
        // Server side of a handshake: remember it if a watched process listens there.
        u16 lport = args->sport;
        int slot = lport;
        u8 *bound = ports.lookup(&slot);
        if (!bound || !*bound)
            return 0;
        struct estab_key k = {.family = args->family, .port = args->dport};
        struct estab_val v = {.skaddr = sk, .family = args->family, .lport = lport, .cport = args->dport};
        if (args->family == AF_INET) {
            __builtin_memcpy(k.addr, args->daddr, 4);
            __builtin_memcpy(v.caddr, args->daddr, 4);
            __builtin_memcpy(v.laddr, args->saddr, 4);
        } else {
            __builtin_memcpy(k.addr, args->daddr_v6, 8);
            __builtin_memcpy(v.caddr, args->daddr_v6, 16);
            __builtin_memcpy(v.laddr, args->saddr_v6, 16);
        }
        estab.update(&k, &v);
        return 0;
    }

    if (old == TCP_CLOSE && new == TCP_SYN_SENT) {
        // Runs in the connecting task: tie the socket to its connect().
        u32 tid = bpf_get_current_pid_tgid();
        struct connect_args *a = connects.lookup(&tid);
        if (!a)
            return 0;
        a->skaddr = sk;
        struct conn c = {};
        struct event *ev = &c.ev;
        ev->type = EV_CONNECT;
        ev->ts = bpf_ktime_get_ns();
        struct fork_val *f = fill_task(ev);
        ev->family = args->family;
        ev->dport = a->dport;
        if (a->family == AF_INET && args->family == AF_INET6) {
            // IPv4 destination on a dual-stack socket: keep it v4-mapped
            ev->daddr[10] = 0xff;
            ev->daddr[11] = 0xff;
            __builtin_memcpy(&ev->daddr[12], a->daddr, 4);
        } else {
            __builtin_memcpy(ev->daddr, a->daddr, 16);
        }
        u32 tgid = ev->pid;
        struct pstate *p = f && !f->accepted ? NULL : pstates.lookup(&tgid);
        if (p && p->cookie) {
            ev->cookie = p->cookie;
            ev->lport = p->lport;
            ev->lfamily = p->lfamily;
            __builtin_memcpy(ev->laddr, p->laddr, 16);
        } else if (f) {
            f->out_sk = sk;
            ev->cookie = f->cookie;
            ev->lport = f->lport;
            ev->lfamily = f->lfamily;
            __builtin_memcpy(ev->laddr, f->laddr, 16);
        }
        c.fd = a->fd;
        mark_port(DIALLED, args->dport);
        conns.update(&sk, &c);
        count_bytes(tgid, a->fd);
        return 0;
    }

    // Only these moments matter for a tracked socket: skip the lookup otherwise
    // (ESTABLISHED -> CLOSE_WAIT, FIN_WAIT1 -> FIN_WAIT2, listeners, ...).
    if (old != TCP_SYN_SENT && new != TCP_FIN_WAIT1 && new != TCP_LAST_ACK && new != TCP_CLOSE)
        return 0;
    if (!port_marked(DIALLED, args->dport) && (old == TCP_SYN_SENT || !port_marked(ACCEPTED, args->sport)))
        return 0;
    struct conn *c = conns.lookup(&sk);
    if (!c)
        return 0;

    if (old == TCP_SYN_SENT) {
        // Result of an outbound connect: local address now known.
        c->ev.sport = args->sport;
        if (args->family == AF_INET)
            __builtin_memcpy(c->ev.saddr, args->saddr, 4);
        else
            __builtin_memcpy(c->ev.saddr, args->saddr_v6, 16);
        if (new != TCP_ESTABLISHED)
            c->ev.flags |= F_FAILED;
        c->state = new;
        if (c->pending) {
            // the connect() already returned EINPROGRESS: report it here
            emit(&c->ev, sizeof(c->ev));
            if (new != TCP_ESTABLISHED)
                conns.delete(&sk);
        }
        return 0;
    }

    if (new == TCP_FIN_WAIT1 || new == TCP_LAST_ACK) {
        // Local shutdown/close: runs in the task that holds the socket.
        u64 id = bpf_get_current_pid_tgid();
        u32 tgid = id >> 32;
        if ((c->ev.flags & F_INGRESS) && tgid == c->ev.pid) {
            struct pstate *p = pstates.lookup(&tgid);
            if (p && p->activity == c->activity)
                c->ev.flags |= F_REFUSED;
        } else if (watched()) {
            c->ev.pid = tgid;
            c->ev.tid = (u32)id;
            struct fork_val *f = forks.lookup(&tgid);
            c->ev.ppid = f ? f->ppid : 0;
        }
        return 0;
    }

    if (new == TCP_CLOSE) {
        u64 now = bpf_ktime_get_ns();
        c->ev.duration = now - c->ev.ts;
        c->ev.ts = now;
        // A relay child may not have read() the last data yet: while it lives,
        // its exit reports this close, with final byte counts.
        __sync_fetch_and_add(&c->closed, 1);
        u32 holder = c->ev.pid;
        struct fork_val *f = forks.lookup(&holder);
        if (f && f->tracked && (f->in_sk == sk || f->out_sk == sk))
            return 0;
        emit_close(sk, c);
    }
    return 0;
}
