/* gcalloc_stop.h: a C thread's stop record (included by gcalloc.h; not used on its own).
 *
 * SKELETON: this first version only fixes the layout and the names that gcalloc.h uses. It
 * records each thread's stack bounds and the stack pointer at every call into gcalloc, but it
 * does not yet suspend threads that run their own C code while another thread collects.
 */
#ifndef GCALLOC_STOP_H
#define GCALLOC_STOP_H

#include <stdint.h>

#ifndef _GNU_SOURCE
#error "gcalloc.h needs _GNU_SOURCE (define it before any #include, or compile with -D_GNU_SOURCE)"
#endif
#include <pthread.h>

enum {
    GCALLOC_STOP_UNREGISTERED = 0,
    GCALLOC_STOP_RUNNING = 1,
    GCALLOC_STOP_IN_CALL = 2,
    GCALLOC_STOP_SUSPEND_REQ = 3,
    GCALLOC_STOP_SUSPENDED = 4,
    GCALLOC_STOP_STOPPED_IN_CALL = 5,
    GCALLOC_STOP_EXITED = 6,
};

typedef struct gcalloc_stop {
    volatile int32_t state;     /* GCALLOC_STOP_*: changed by compare-and-swap only */
    volatile int32_t mallocing; /* the inline fast path is between its load and store */
    volatile int32_t pending;   /* a suspension arrived while mallocing: fast_end takes it */
    volatile int32_t ack;
    uint64_t stack_lo;          /* sp at the last call entry or suspension (below the spills) */
    uint64_t stack_hi;          /* the stack's base (its highest address) */
    uint64_t tid;               /* pthread_t */
    uint64_t reserved[11];
} gcalloc_stop;

_Static_assert(sizeof(gcalloc_stop) == 128, "gcalloc_stop is 128 bytes");

static inline void gcalloc_stop_fast_begin(gcalloc_stop *s) {
    s->mallocing = 1;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

static inline void gcalloc_stop_fast_end(gcalloc_stop *s) {
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    s->mallocing = 0;
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

/* In a noinline function that calls into Python: spill the callee-saved registers into this
 * frame and record the stack pointer below them, then enter the call. */
#define GCALLOC_STOP_SPILL_ENTER(s)                                                     \
    do {                                                                                \
        __builtin_unwind_init();                                                        \
        (s)->stack_lo = gcalloc_stop__sp();                                             \
        __atomic_store_n(&(s)->state, GCALLOC_STOP_IN_CALL, __ATOMIC_SEQ_CST);          \
    } while (0)

static inline void gcalloc_stop_leave(gcalloc_stop *s) {
    __atomic_store_n(&s->state, GCALLOC_STOP_RUNNING, __ATOMIC_SEQ_CST);
}

static inline int gcalloc_stop_register(gcalloc_stop *s, int signum) {
    pthread_attr_t attr;
    void *addr;
    size_t size;
    (void)signum;
    if (pthread_getattr_np(pthread_self(), &attr) != 0)
        return -1;
    if (pthread_attr_getstack(&attr, &addr, &size) != 0) {
        pthread_attr_destroy(&attr);
        return -1;
    }
    pthread_attr_destroy(&attr);
    s->tid = (uint64_t)pthread_self();
    s->stack_hi = (uint64_t)(uintptr_t)addr + size;
    s->stack_lo = gcalloc_stop__sp();
    __atomic_store_n(&s->state, GCALLOC_STOP_RUNNING, __ATOMIC_SEQ_CST);
    return 0;
}

static inline void gcalloc_stop_exited(gcalloc_stop *s) {
    __atomic_store_n(&s->state, GCALLOC_STOP_EXITED, __ATOMIC_SEQ_CST);
}

#endif
