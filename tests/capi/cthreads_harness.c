/* A minimal stand-in for the C ABI's calls, for tests/capi/test_cthreads.py and
 * bench/bench_cthreads.py: it includes only gcalloc_stop.h, registers threads as gcalloc.h does
 * and puts them in each state the protocol knows. A "gcalloc call" is a ctypes callback into
 * Python bracketed as the real header's calls are (GCALLOC_STOP_SPILL_ENTER ...
 * gcalloc_stop_leave). */
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "gcalloc_stop.h"

typedef void *(*h_alloc_fn)(size_t);
typedef void (*h_add_fn)(void *);

/* The first call of a thread: enter Python (which allocates and adds the record in the real
 * ABI), then register the thread's stack and leave the call. */
int h_attach(gcalloc_stop *s, h_add_fn add, int signum) {
    add(s);
    return gcalloc_stop_register(s, signum);
}

void h_detach(gcalloc_stop *s) { gcalloc_stop_exited(s); }

static __attribute__((noinline)) void *h_call(gcalloc_stop *s, h_alloc_fn cb, size_t n) {
    void *p;
    GCALLOC_STOP_SPILL_ENTER(s);
    p = cb(n);
    gcalloc_stop_leave(s);
    return p;
}

/* The inline fast path's bracket, for the mallocing/pending protocol: spin in a loop of
 * fast_begin/fast_end pairs (the "bump" is a store into *slot) until *stop. */
int64_t h_fast_loop(gcalloc_stop *s, volatile int32_t *stop, volatile uint64_t *slot) {
    int64_t i = 0;
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
        gcalloc_stop_fast_begin(s);
        *slot = (uint64_t)i;
        gcalloc_stop_fast_end(s);
        i++;
    }
    return i;
}

/* A thread that registers and then blocks its suspend signal (a rule broken on purpose). */
int h_block_signal(int signum) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signum);
    return pthread_sigmask(SIG_BLOCK, &set, NULL);
}

int h_unblock_signal(int signum) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signum);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* Spin in pure C until *stop (a thread between gcalloc calls, holding nothing). */
int64_t h_spin(volatile int32_t *stop) {
    int64_t i = 0;
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE))
        i++;
    return i;
}

/* One call into Python (fn(0)) bracketed like a gcalloc call: the thread is IN_CALL while
 * fn runs (the benchmark parks threads there). */
void h_in_call(gcalloc_stop *s, h_alloc_fn fn) { (void)h_call(s, fn, 0); }

/* Blocked in a system call in its own C code until *stop (a thread waiting on I/O between
 * gcalloc calls): the signal interrupts nanosleep, which restarts. */
int64_t h_sleep(volatile int32_t *stop) {
    int64_t i = 0;
    struct timespec ts = {0, 1000000};
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
        nanosleep(&ts, NULL);
        i++;
    }
    return i;
}

/* Stay inside the fast path's bracket (mallocing set) until *release, then leave it and
 * spin until *stop: a signal that arrives meanwhile must wait for fast_end. */
int64_t h_fast_hold(gcalloc_stop *s, volatile int32_t *release, volatile int32_t *stop) {
    gcalloc_stop_fast_begin(s);
    while (!__atomic_load_n(release, __ATOMIC_ACQUIRE))
        ;
    gcalloc_stop_fast_end(s);
    return h_spin(stop);
}
