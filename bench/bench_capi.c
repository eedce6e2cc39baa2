/* The loops of bench/bench_capi.py: the same C code allocating through gcalloc.h and Boehm's
 * gc.h, timed inside C (clock_gettime) so no ctypes call is counted. */
#define _GNU_SOURCE
/* Boehm as a threaded program uses it: GC_THREADS gives each thread its own free lists. */
#define GC_THREADS
#include <gc.h>
#include <gcalloc.h>
#include <time.h>

static volatile uint64_t sink;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void boehm_init(void) { GC_INIT(); }

/* Each returns the elapsed ns of n allocations (or pairs), -1 on a failed call. */
int64_t gcalloc_noscan_loop(gcalloc_api *api, int64_t n, uint64_t size) {
    uint64_t x = 0;
    int64_t t0 = now_ns();
    for (int64_t i = 0; i < n; i++) {
        void *p = gcalloc_alloc_noscan(api, size);
        if (p == NULL) return -1;
        x ^= (uint64_t)(uintptr_t)p;
    }
    int64_t t1 = now_ns();
    sink = x;
    return t1 - t0;
}

int64_t gcalloc_scan_loop(gcalloc_api *api, int64_t n, uint64_t size) {
    uint64_t x = 0;
    int64_t t0 = now_ns();
    for (int64_t i = 0; i < n; i++) {
        void *p = gcalloc_alloc(api, size);
        if (p == NULL) return -1;
        x ^= (uint64_t)(uintptr_t)p;
    }
    int64_t t1 = now_ns();
    sink = x;
    return t1 - t0;
}

int64_t boehm_atomic_loop(int64_t n, uint64_t size) {
    uint64_t x = 0;
    int64_t t0 = now_ns();
    for (int64_t i = 0; i < n; i++) {
        void *p = GC_malloc_atomic(size);
        if (p == NULL) return -1;
        x ^= (uint64_t)(uintptr_t)p;
    }
    int64_t t1 = now_ns();
    sink = x;
    return t1 - t0;
}

int64_t boehm_scan_loop(int64_t n, uint64_t size) {
    uint64_t x = 0;
    int64_t t0 = now_ns();
    for (int64_t i = 0; i < n; i++) {
        void *p = GC_malloc(size);
        if (p == NULL) return -1;
        x ^= (uint64_t)(uintptr_t)p;
    }
    int64_t t1 = now_ns();
    sink = x;
    return t1 - t0;
}

int64_t gcalloc_root_pairs(gcalloc_api *api, int64_t n) {
    void *obj = gcalloc_alloc(api, 64);
    if (obj == NULL) return -1;
    int64_t t0 = now_ns();
    for (int64_t i = 0; i < n; i++) {
        if (gcalloc_add_root(api, obj) != 0 || gcalloc_remove_root(api, obj) != 0) return -1;
    }
    return now_ns() - t0;
}

/* Refills into Python so far (every thread record's counter is this thread's only here). */
uint64_t gcalloc_refills(gcalloc_api *api) {
    gcalloc_alloc_noscan(api, 8);
    return gcalloc__tls.api == api ? gcalloc__tls.t->refills : 0;
}
