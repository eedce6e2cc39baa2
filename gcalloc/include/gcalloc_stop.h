/* gcalloc_stop.h: stopping C threads for a collection (included by gcalloc.h).
 *
 * Every C thread that uses a heap has a stop record (gcalloc_stop, the first 128 bytes of
 * its per-thread record). While the collector marks, every registered thread but the
 * collector's own is stopped at a point where its stack and registers are in memory, and the
 * collector scans [stack_lo, stack_hi) conservatively: C locals are roots, as under Boehm GC
 * (pthread_stop_world.c) or MPS (mps_thread_reg). Linux only (pthread_sigqueue, futex).
 *
 * The state machine. `state` holds one of GCALLOC_STOP_* in its low byte plus, while a
 * collection wants the thread stopped, the bit GCALLOC_STOP_REQUESTED. Only the thread
 * changes the low byte, always by CAS; only the collector sets and clears the bit, with one
 * atomic read-modify-write done by the kernel (futex FUTEX_WAKE_OP: OR to request, ANDN and
 * wake to resume), so a thread's CAS that expects the bit clear fails once it is set and the
 * collector needs no CAS of its own:
 *
 *   UNREGISTERED ─register─► RUNNING ◄──────leave────── IN_CALL ◄─ (Python's add())
 *                              │  ▲ ───SPILL_ENTER───────►  │
 *           signal handler:    │  │ resumed                 │ leave with the bit set:
 *           bit set, safe pc   ▼  │                         ▼ waits until it is cleared
 *                            SUSPENDED                (the collector counts IN_CALL|bit
 *           bit set, inside    │                       as stopped: the thread is in
 *           the fast path:     │                       Python, its stack_lo recorded
 *           SUSPEND_REQ ─fast_end─► SUSPENDED           at entry, below its spills)
 *   any ─gcalloc_stop_exited─► EXITED  (reaped by the collector at its next stop)
 *
 * STOPPED_IN_CALL (5) is kept for the layout's sake and unused: "IN_CALL with the bit set"
 * is that state, and needs no transition the thread could race with.
 *
 * The signal handler stops a thread only where it holds no lock the collector may need: it
 * declines (and the collector re-sends) while the thread holds the interpreter lock, or when
 * it was interrupted inside the C library, the dynamic loader, libffi or the interpreter,
 * unless it sits at a system-call instruction (a blocked, restartable call: SA_RESTART).
 * These are Go's "async safe points" (signal_unix.go doSigPreempt, preempt.go). The ranges
 * come from the process-wide gcalloc_stop_table the Python side fills (gcalloc/gc/cthreads.py)
 * and stores in every record it adds. See docs/capi_threads.md for the rules C code keeps.
 */
#ifndef GCALLOC_STOP_H
#define GCALLOC_STOP_H

#ifndef _GNU_SOURCE
#error "gcalloc.h needs _GNU_SOURCE (define it before any #include, or compile with -D_GNU_SOURCE)"
#endif
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#include <linux/futex.h>

enum {
    GCALLOC_STOP_UNREGISTERED = 0,
    GCALLOC_STOP_RUNNING = 1,         /* running its own C code (or back in Python) */
    GCALLOC_STOP_IN_CALL = 2,         /* inside a gcalloc call (in Python): stack_lo valid */
    GCALLOC_STOP_SUSPEND_REQ = 3,     /* the signal found it in the fast path: fast_end stops */
    GCALLOC_STOP_SUSPENDED = 4,       /* waiting in the handler (or fast_end) until resumed */
    GCALLOC_STOP_STOPPED_IN_CALL = 5, /* unused: IN_CALL | REQUESTED is this state */
    GCALLOC_STOP_EXITED = 6,          /* the thread ended: the collector reaps the record */
};
#define GCALLOC_STOP_STATE_MASK 0xff
#define GCALLOC_STOP_REQUESTED 0x100  /* set by the collector: stop now */

/* Indices into reserved[] (the layout is fixed; these give the spare words their meaning). */
#define GCALLOC_STOP_R_TABLE 0     /* gcalloc_stop_table * (process-wide), set by add() */
#define GCALLOC_STOP_R_DECLINED 1  /* signals the handler declined (unsafe point): a count */
#define GCALLOC_STOP_R_PC 2        /* the pc the last signal interrupted (diagnostics) */
#define GCALLOC_STOP_R_DEPTH 3     /* nested SPILL_ENTER depth */
#define GCALLOC_STOP_R_STOPS 4     /* times this thread stopped in the handler or fast_end */
#define GCALLOC_STOP_R_RESULT 5    /* the object the current call returns (a root until
                                      leave: it is in no frame the collector scans yet) */
#define GCALLOC_STOP_R_STACK_MIN 6 /* the stack's lowest address: a stack_lo outside
                                      [min, stack_hi) (a switched stack) is not scanned */

typedef struct gcalloc_stop {
    volatile int32_t state;     /* GCALLOC_STOP_* | GCALLOC_STOP_REQUESTED: see above */
    volatile int32_t mallocing; /* the inline fast path is between its load and store */
    volatile int32_t pending;   /* a suspension arrived while mallocing: fast_end takes it */
    volatile int32_t ack;       /* bumped by the thread on every answer to a stop request */
    uint64_t stack_lo;          /* sp at the last call entry or suspension (below the spills) */
    uint64_t stack_hi;          /* the stack's base (its highest address) */
    uint64_t tid;               /* pthread_t */
    volatile uint64_t reserved[11]; /* GCALLOC_STOP_R_* */
} gcalloc_stop;

_Static_assert(sizeof(gcalloc_stop) == 128, "gcalloc_stop is 128 bytes");

/* Filled once per process by gcalloc/gc/cthreads.py (never freed); read-only here except
 * `installed`. Layout mirrored by cthreads.py's _Table. */
#define GCALLOC_STOP_TABLE_MAGIC 0x54534347u /* "GCST" */
#define GCALLOC_STOP_MAX_RANGES 30
typedef struct gcalloc_stop_table {
    uint32_t magic;
    volatile int32_t installed;          /* signal number whose handler is in place, or 0 */
    int (*gil_check)(void);              /* PyGILState_Check */
    void *(*save_thread)(void);          /* PyEval_SaveThread */
    void (*restore_thread)(void *);      /* PyEval_RestoreThread */
    uint64_t nranges;
    uint64_t ranges[GCALLOC_STOP_MAX_RANGES][2]; /* [lo, hi): text where locks may be held */
} gcalloc_stop_table;

/* --- small atomics and the futex ------------------------------------------------------- */

static inline int32_t gcalloc_stop__load(volatile int32_t *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}

static inline int gcalloc_stop__cas(volatile int32_t *p, int32_t old, int32_t new_) {
    return __atomic_compare_exchange_n(p, &old, new_, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}

static inline void gcalloc_stop__futex_wait(volatile int32_t *p, int32_t val) {
    syscall(SYS_futex, p, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static inline void gcalloc_stop__futex_wake(volatile int32_t *p) {
    syscall(SYS_futex, p, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
}

static inline uint64_t gcalloc_stop__sp(void) {
    uint64_t sp;
#if defined(__x86_64__)
    __asm__ volatile("mov %%rsp, %0" : "=r"(sp));
#elif defined(__aarch64__)
    __asm__ volatile("mov %0, sp" : "=r"(sp));
#else
    volatile char here;
    sp = (uint64_t)(uintptr_t)&here;
#endif
    return sp;
}

static inline gcalloc_stop_table *gcalloc_stop__table(gcalloc_stop *s) {
    gcalloc_stop_table *t = (gcalloc_stop_table *)(uintptr_t)s->reserved[GCALLOC_STOP_R_TABLE];
    return (t && t->magic == GCALLOC_STOP_TABLE_MAGIC) ? t : (gcalloc_stop_table *)0;
}

static inline int gcalloc_stop__holds_gil(gcalloc_stop *s) {
    gcalloc_stop_table *t = gcalloc_stop__table(s);
    return t && t->gil_check && t->gil_check();
}

/* Tell the collector this thread answered (stopped, or declined): it waits on `ack`. */
static inline void gcalloc_stop__answer(gcalloc_stop *s) {
    __atomic_fetch_add(&s->ack, 1, __ATOMIC_SEQ_CST);
    gcalloc_stop__futex_wake(&s->ack);
}

/* Wait while the collector's request bit is set in state (the low byte stays `low`). The
 * interpreter lock, if this thread holds it (never in the signal handler: it declines), is
 * released while waiting, as Py_BEGIN_ALLOW_THREADS would: the collector needs it. */
static inline void gcalloc_stop__wait_resumed(gcalloc_stop *s, int32_t low, int may_release) {
    void *ts = 0;
    gcalloc_stop_table *t = gcalloc_stop__table(s);
    if (may_release && t && t->gil_check && t->save_thread && t->gil_check())
        ts = t->save_thread();
    while (gcalloc_stop__load(&s->state) == (low | GCALLOC_STOP_REQUESTED))
        gcalloc_stop__futex_wait(&s->state, low | GCALLOC_STOP_REQUESTED);
    if (ts)
        t->restore_thread(ts);
}

/* Stop here until resumed: spill the callee-saved registers into this frame, record the
 * stack pointer below them, move `from | REQUESTED` to SUSPENDED | REQUESTED, answer, wait,
 * then go back to RUNNING. Returns 0 if the request was withdrawn first (nothing done).
 * `may_release`: 0 in the signal handler (which declines rather than stop holding the
 * interpreter lock), 1 elsewhere (the lock is released while waiting). */
static __attribute__((noinline, unused)) int gcalloc_stop__suspend_self(gcalloc_stop *s,
                                                                        int32_t from,
                                                                        int may_release) {
    __builtin_unwind_init();
    s->stack_lo = gcalloc_stop__sp();
    if (!gcalloc_stop__cas(&s->state, from | GCALLOC_STOP_REQUESTED,
                           GCALLOC_STOP_SUSPENDED | GCALLOC_STOP_REQUESTED))
        return 0;
    s->reserved[GCALLOC_STOP_R_STOPS]++;
    gcalloc_stop__answer(s);
    gcalloc_stop__wait_resumed(s, GCALLOC_STOP_SUSPENDED, may_release);
    /* Resumed: the bit is clear and only this thread moves the low byte. */
    gcalloc_stop__cas(&s->state, GCALLOC_STOP_SUSPENDED, GCALLOC_STOP_RUNNING);
    return 1;
}

/* Whether the interrupted context is a point where the thread may hold a lock the collector
 * needs: its pc inside a listed text range, except in a blocked system call: either at the
 * system-call instruction (a restartable call; SA_RESTART rewound pc onto it) or just after
 * one that returned EINTR (a wait the signal broke, such as nanosleep, which restarts no
 * call with a handler). A call that returned anything else may have been mmap under
 * malloc's lock, with the signal merely delivered on its way out. */
static inline int gcalloc_stop__unsafe(gcalloc_stop_table *t, void *uc) {
    ucontext_t *u = (ucontext_t *)uc;
    uint64_t i, pc;
#if defined(__x86_64__)
    pc = (uint64_t)u->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    pc = (uint64_t)u->uc_mcontext.pc;
#else
    (void)u;
    return 0;
#endif
    if (!t)
        return 0;
    for (i = 0; i < t->nranges && i < GCALLOC_STOP_MAX_RANGES; i++) {
        uint64_t lo = t->ranges[i][0], hi = t->ranges[i][1];
        if (pc < lo || pc >= hi)
            continue;
#if defined(__x86_64__)
        {
            const unsigned char *c = (const unsigned char *)(uintptr_t)pc;
            if (pc + 2 <= hi && c[0] == 0x0f && c[1] == 0x05)
                return 0;   /* at syscall */
            if (pc >= lo + 2 && c[-2] == 0x0f && c[-1] == 0x05 &&
                u->uc_mcontext.gregs[REG_RAX] == -EINTR)
                return 0;   /* after a syscall the signal interrupted */
        }
#elif defined(__aarch64__)
        {
            const uint32_t *c = (const uint32_t *)(uintptr_t)pc;
            if (pc + 4 <= hi && c[0] == 0xd4000001u)
                return 0;   /* at svc #0 */
            if (pc >= lo + 4 && c[-1] == 0xd4000001u &&
                (int64_t)u->uc_mcontext.regs[0] == -EINTR)
                return 0;
        }
#endif
        return 1;
    }
    return 0;
}

static inline uint64_t gcalloc_stop__pc(void *uc) {
    ucontext_t *u = (ucontext_t *)uc;
#if defined(__x86_64__)
    return (uint64_t)u->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    return (uint64_t)u->uc_mcontext.pc;
#else
    (void)u;
    return 0;
#endif
}

/* The suspend signal's handler (async-signal-safe: loads, CAS, futex, getpid, pthread_self,
 * the interpreter's PyGILState_Check, which reads thread-specific data). The interrupted
 * registers are in the kernel's ucontext, on this stack between the handler's frame and the
 * interrupted sp, so stack_lo (taken in suspend_self, deeper still) covers them. */
static void __attribute__((unused)) gcalloc_stop__handler(int sig, siginfo_t *si, void *uc) {
    int saved_errno = errno;
    gcalloc_stop *s;
    int32_t st;
    (void)sig;
    if (si->si_code != SI_QUEUE || si->si_pid != getpid())
        goto out;      /* not the collector's: ignore */
    s = (gcalloc_stop *)si->si_value.sival_ptr;
    if (!s || s->tid != (uint64_t)pthread_self())
        goto out;
    st = gcalloc_stop__load(&s->state);
    if (st != (GCALLOC_STOP_RUNNING | GCALLOC_STOP_REQUESTED))
        goto out;      /* stale (resumed already), in a call (counted stopped), or exiting */
    s->reserved[GCALLOC_STOP_R_PC] = gcalloc_stop__pc(uc);
    if (gcalloc_stop__holds_gil(s)) {
        s->reserved[GCALLOC_STOP_R_DECLINED]++;   /* the collector needs the lock: re-sent */
        gcalloc_stop__answer(s);
        goto out;
    }
    if (s->mallocing) {
        /* Inside the inline fast path: fast_end stops the thread once its bump is done. */
        if (gcalloc_stop__cas(&s->state, st,
                              GCALLOC_STOP_SUSPEND_REQ | GCALLOC_STOP_REQUESTED))
            s->pending = 1;
        goto out;
    }
    if (gcalloc_stop__unsafe(gcalloc_stop__table(s), uc)) {
        s->reserved[GCALLOC_STOP_R_DECLINED]++;
        gcalloc_stop__answer(s);
        goto out;
    }
    gcalloc_stop__suspend_self(s, GCALLOC_STOP_RUNNING, 0);
out:
    errno = saved_errno;
}

/* --- the calls gcalloc.h makes ------------------------------------------------------- */

/* The inline fast path brackets its bump with these (Go's m.mallocing). */
static inline void gcalloc_stop_fast_begin(gcalloc_stop *s) {
    s->mallocing = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

static __attribute__((noinline, unused)) void gcalloc_stop__fast_stop(gcalloc_stop *s) {
    s->pending = 0;
    if (!gcalloc_stop__suspend_self(s, GCALLOC_STOP_SUSPEND_REQ, 1))
        /* Withdrawn (the collector gave up): back to RUNNING. */
        gcalloc_stop__cas(&s->state, GCALLOC_STOP_SUSPEND_REQ, GCALLOC_STOP_RUNNING);
}

static inline void gcalloc_stop_fast_end(gcalloc_stop *s) {
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    s->mallocing = 0;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    if (__builtin_expect(s->pending, 0))
        gcalloc_stop__fast_stop(s);
}

/* Enter a call into Python: record sp (the caller spilled its callee-saved registers just
 * above it) and move RUNNING -> IN_CALL, keeping the request bit: a thread that enters a
 * call while a collection stops the world is stopped in that call (Python parks it). */
static inline void gcalloc_stop_enter(gcalloc_stop *s, uint64_t sp) {
    for (;;) {
        int32_t st = gcalloc_stop__load(&s->state);
        int32_t low = st & GCALLOC_STOP_STATE_MASK;
        if (low == GCALLOC_STOP_RUNNING) {
            s->stack_lo = sp;
            if (gcalloc_stop__cas(&s->state, st,
                                  GCALLOC_STOP_IN_CALL | (st & GCALLOC_STOP_REQUESTED)))
                return;
        } else if (low == GCALLOC_STOP_IN_CALL) {
            /* Nested (C called back from inside a call): scan from the deeper frame too. */
            s->reserved[GCALLOC_STOP_R_DEPTH]++;
            if (sp < s->stack_lo)
                s->stack_lo = sp;
            return;
        } else if (low == GCALLOC_STOP_SUSPEND_REQ) {
            gcalloc_stop__fast_stop(s);   /* never reached from capi's calls; for safety */
        } else {
            return;    /* unregistered or exited: nothing to record */
        }
    }
}

/* In a noinline function that calls into Python: spill the callee-saved registers into this
 * frame and record the stack pointer below them, then enter the call. */
#define GCALLOC_STOP_SPILL_ENTER(s)                                                     \
    do {                                                                                \
        __builtin_unwind_init();                                                        \
        gcalloc_stop_enter((s), gcalloc_stop__sp());                                    \
    } while (0)

/* Leave the call: IN_CALL -> RUNNING, or wait while a collection has the thread stopped. */
static inline void gcalloc_stop_leave(gcalloc_stop *s) {
    if (s->reserved[GCALLOC_STOP_R_DEPTH]) {
        s->reserved[GCALLOC_STOP_R_DEPTH]--;
        return;
    }
    for (;;) {
        int32_t st = gcalloc_stop__load(&s->state);
        if (st == GCALLOC_STOP_IN_CALL) {
            if (gcalloc_stop__cas(&s->state, st, GCALLOC_STOP_RUNNING)) {
                /* Running: the result is in this thread's registers or frames now, which
                 * the signal handler's stop covers. */
                s->reserved[GCALLOC_STOP_R_RESULT] = 0;
                return;
            }
        } else if (st == (GCALLOC_STOP_IN_CALL | GCALLOC_STOP_REQUESTED)) {
            gcalloc_stop__wait_resumed(s, GCALLOC_STOP_IN_CALL, 1);
        } else {
            return;    /* unregistered or exited */
        }
    }
}

/* Called by the thread that owns s, after the Python side's CThreads.add(s) (which stored
 * the table and made the record IN_CALL: the thread was inside its first call) or on a
 * fresh record: fill tid and the stack bounds, unblock the signal, install the handler once
 * per process (SA_SIGINFO | SA_RESTART), then leave the call (RUNNING). 0, or -1 (errno). */
static inline int gcalloc_stop_register(gcalloc_stop *s, int signum) {
    pthread_attr_t attr;
    void *addr;
    size_t size;
    sigset_t set;
    gcalloc_stop_table *t = gcalloc_stop__table(s);
    static int installed_here;   /* per object file, when no table is known */
    volatile int32_t *flag = t ? &t->installed : (volatile int32_t *)&installed_here;
    if (signum <= 0 || signum >= 65) {
        errno = EINVAL;
        return -1;
    }
    if (pthread_getattr_np(pthread_self(), &attr) != 0)
        return -1;
    if (pthread_attr_getstack(&attr, &addr, &size) != 0) {
        pthread_attr_destroy(&attr);
        return -1;
    }
    pthread_attr_destroy(&attr);
    if (gcalloc_stop__load(flag) != signum) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = gcalloc_stop__handler;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        sigfillset(&sa.sa_mask);      /* nothing else runs on top of a stopped thread */
        if (sigaction(signum, &sa, NULL) != 0)
            return -1;
        __atomic_store_n(flag, signum, __ATOMIC_SEQ_CST);
    }
    sigemptyset(&set);
    sigaddset(&set, signum);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    s->tid = (uint64_t)pthread_self();
    s->stack_hi = (uint64_t)(uintptr_t)addr + size;
    s->reserved[GCALLOC_STOP_R_STACK_MIN] = (uint64_t)(uintptr_t)addr;
    if (!s->stack_lo)
        s->stack_lo = gcalloc_stop__sp();
    for (;;) {
        int32_t st = gcalloc_stop__load(&s->state);
        int32_t low = st & GCALLOC_STOP_STATE_MASK;
        if (low == GCALLOC_STOP_IN_CALL) {
            gcalloc_stop_leave(s);
            return 0;
        }
        if (low != GCALLOC_STOP_UNREGISTERED)
            return 0;  /* registered already */
        if (st & GCALLOC_STOP_REQUESTED)
            gcalloc_stop__wait_resumed(s, GCALLOC_STOP_UNREGISTERED, 1);
        else if (gcalloc_stop__cas(&s->state, st, GCALLOC_STOP_RUNNING))
            return 0;
    }
}

/* The thread is ending (capi's thread-key destructor): stop being scanned or signalled. A
 * thread stopped in a call waits for the restart first; the collector reaps the record at
 * its next stop (CThreads.on_reap). */
static inline void gcalloc_stop_exited(gcalloc_stop *s) {
    for (;;) {
        int32_t st = gcalloc_stop__load(&s->state);
        int32_t low = st & GCALLOC_STOP_STATE_MASK;
        if (low == GCALLOC_STOP_EXITED)
            return;
        if (low == GCALLOC_STOP_SUSPEND_REQ) {
            gcalloc_stop__fast_stop(s);
            continue;
        }
        if (st == (GCALLOC_STOP_RUNNING | GCALLOC_STOP_REQUESTED)) {
            gcalloc_stop__suspend_self(s, GCALLOC_STOP_RUNNING, 1);  /* answer the signal */
            continue;
        }
        if (st & GCALLOC_STOP_REQUESTED) {
            gcalloc_stop__wait_resumed(s, low, 1);
            continue;
        }
        if (gcalloc_stop__cas(&s->state, st, GCALLOC_STOP_EXITED))
            return;
    }
}

#endif
