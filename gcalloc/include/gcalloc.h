/* gcalloc.h: gcalloc's C ABI, header-only. A C extension allocates in a gcalloc heap with it.
 *
 *     #define _GNU_SOURCE
 *     #include <gcalloc.h>        cc -I$(python -c 'import gcalloc; print(gcalloc.get_include())')
 *
 *     gcalloc_api *api = (gcalloc_api *)(uintptr_t)heap_capi;   Python: heap.capi (an int)
 *     struct node *n = gcalloc_alloc(api, sizeof *n);           zeroed, scanned conservatively
 *
 * There is no library to link: every call below is a static function of this header. The
 * Python side (gcalloc/capi.py) fills a `gcalloc_api` for each heap in memory that stays
 * mapped for the life of the process, so a pointer to it never dangles: after the heap's
 * close() every call fails cleanly (NULL or -1, gcalloc_last_error "HeapClosed: ...").
 *
 * The fast path (gcalloc_alloc, gcalloc_alloc_noscan of at most 32 KiB) is inline: each
 * thread has a record (gcalloc_thread) holding, per span class, a bucket -- the cursor and end
 * of a run of free, zeroed slots its mcache reserved -- and an allocation bumps the cursor
 * without entering Python. Only an empty bucket calls into Python (a noinline slow path), which
 * takes the next run from the thread's mcache, the same one Heap.alloc uses on that thread.
 * Every other call (free, collect, roots, finalizers, typed objects, large objects) is one
 * call into Python. docs/capi.md documents each call, its errors and the rules for C callers;
 * docs/capi_threads.md the threads and stacks (gcalloc_stop.h).
 *
 * Errors: a call that fails returns NULL (allocations) or -1 and leaves a message for
 * gcalloc_last_error(api) on the calling thread: "<ExceptionName>: <message>", the exception
 * the same Python call would raise. A successful call leaves the last message in place.
 */
#ifndef GCALLOC_H
#define GCALLOC_H

#include <stddef.h>
#include <stdint.h>
#include <sched.h>
#include <string.h>

#include "gcalloc_stop.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GCALLOC_ABI_VERSION 1
#define GCALLOC_MAX_SMALL_SIZE 32768
#define GCALLOC_NUM_SIZE_CLASSES 68
#define GCALLOC_NUM_SPAN_CLASSES 136
#define GCALLOC_ERROR_BYTES 256

#define GCALLOC__LIKELY(x) __builtin_expect(!!(x), 1)
#define GCALLOC__UNLIKELY(x) __builtin_expect(!!(x), 0)
#define GCALLOC__NOINLINE __attribute__((noinline, unused))
#ifndef GCALLOC_TLS_MODEL
/* initial-exec: a thread-local read is one load off the thread pointer, no __tls_get_addr
 * call. A module loaded with dlopen takes a few bytes of glibc's static TLS surplus for it;
 * define GCALLOC_TLS_MODEL "global-dynamic" where that surplus is used up. */
#define GCALLOC_TLS_MODEL "initial-exec"
#endif

struct gcalloc_api;

/* A run of free slots of one span class: [cursor, end), slots of the class's size. */
typedef struct gcalloc_bucket {
    uint64_t cursor;
    uint64_t end;
} gcalloc_bucket;

/* One thread's record for one heap. Python allocates it on the thread's first call (in memory
 * it never unmaps) and reuses it only after the thread exited. */
typedef struct gcalloc_thread {
    gcalloc_stop stop;                     /*    0: FIRST member (gcalloc_stop.h, 128 B) */
    struct gcalloc_api *api;               /*  128: the heap this record belongs to */
    struct gcalloc_thread *next;           /*  136: this thread's records of other heaps */
    uint64_t refills;                      /*  144: calls into Python for a new bucket */
    uint64_t reserved[5];                  /*  152 */
    gcalloc_bucket buckets[GCALLOC_NUM_SPAN_CLASSES];  /* 192: by span class (class<<1|noscan) */
    char error[GCALLOC_ERROR_BYTES];       /* 2368: this thread's last failure message */
} gcalloc_thread;                          /* 2624 bytes */

/* A snapshot of a few of the heap's statistics (Heap.read_memstats field names). */
typedef struct gcalloc_stats {
    uint64_t heap_alloc;      /* bytes of allocated objects */
    uint64_t heap_objects;    /* allocated objects */
    uint64_t heap_sys;        /* bytes of heap memory obtained from the OS */
    uint64_t mallocs;         /* cumulative objects allocated */
    uint64_t frees;           /* cumulative objects freed */
    uint64_t num_gc;          /* completed collections */
    uint64_t next_gc;         /* heap size goal of the next collection (0: GOGC off) */
    uint64_t pause_total_ns;  /* cumulative stop-the-world pause */
} gcalloc_stats;

typedef void (*gcalloc_finalizer_fn)(void *obj, void *data);

/* Process-wide: the pthread key whose value is the calling thread's chain of records. */
typedef struct gcalloc_shared {
    volatile int32_t key_state;            /* 0 none, 1 being created, 2 ready */
    int32_t key_error;                     /* pthread_key_create's error, once it failed */
    uint64_t key;                          /* a pthread_key_t */
} gcalloc_shared;

/* The heap's table. Every callback takes the calling thread's record first; the C functions
 * below are the interface, not these fields. */
typedef struct gcalloc_api {
    uint32_t abi_version;                  /*   0: GCALLOC_ABI_VERSION */
    uint32_t struct_size;                  /*   4: sizeof(gcalloc_api) */
    volatile int32_t closed;               /*   8: set once by close(); then every call fails */
    int32_t suspend_signal;                /*  12: for gcalloc_stop_register */
    uint32_t num_span_classes;             /*  16: GCALLOC_NUM_SPAN_CLASSES */
    uint32_t max_small_size;               /*  20: GCALLOC_MAX_SMALL_SIZE */
    uint64_t tables_check;                 /*  24: checksum of the size-class tables below */
    gcalloc_shared *shared;                /*  32 */
    gcalloc_thread *(*new_thread)(char *err, uint64_t errlen);                    /*  40 */
    uint64_t (*alloc)(gcalloc_thread *t, uint64_t size, int32_t noscan);          /*  48 */
    uint64_t (*alloc_typed)(gcalloc_thread *t, int64_t type, uint64_t count);     /*  56 */
    int64_t (*register_type)(gcalloc_thread *t, uint64_t size, const uint64_t *offsets,
                             uint64_t n);                                         /*  64 */
    int32_t (*free)(gcalloc_thread *t, uint64_t p);                               /*  72 */
    int32_t (*collect)(gcalloc_thread *t);                                        /*  80 */
    int32_t (*add_root)(gcalloc_thread *t, uint64_t p);                           /*  88 */
    int32_t (*remove_root)(gcalloc_thread *t, uint64_t p);                        /*  96 */
    int64_t (*add_root_range)(gcalloc_thread *t, uint64_t addr, uint64_t size);   /* 104 */
    int32_t (*remove_root_range)(gcalloc_thread *t, int64_t token);               /* 112 */
    int32_t (*set_finalizer)(gcalloc_thread *t, uint64_t p, gcalloc_finalizer_fn fn,
                             uint64_t data);                                      /* 120 */
    int32_t (*no_gc)(gcalloc_thread *t, int32_t enter);                           /* 128 */
    int32_t (*stats)(gcalloc_thread *t, gcalloc_stats *out);                      /* 136 */
} gcalloc_api;                                                                    /* 144 */

_Static_assert(sizeof(gcalloc_thread) == 2624, "gcalloc_thread layout");
_Static_assert(offsetof(gcalloc_thread, buckets) == 192, "gcalloc_thread layout");
_Static_assert(sizeof(gcalloc_api) == 144, "gcalloc_api layout");

/* --- size classes (Go 1.16), generated from gcalloc/sizeclasses.py ------------------------ */
/* BEGIN GENERATED: python tools/mkcapitables.py */
static const uint16_t gcalloc__class_to_size[68] = {
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 288,
    320, 352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280, 1408, 1536,
    1792, 2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528, 6784, 6912, 8192,
    9472, 9728, 10240, 10880, 12288, 13568, 14336, 16384, 18432, 19072, 20480, 21760, 24576,
    27264, 28672, 32768,
};
static const uint8_t gcalloc__size_to_class8[129] = {
    0, 1, 2, 3, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15,
    15, 16, 16, 17, 17, 18, 18, 19, 19, 19, 19, 20, 20, 20, 20, 21, 21, 21, 21, 22, 22, 22, 22,
    23, 23, 23, 23, 24, 24, 24, 24, 25, 25, 25, 25, 26, 26, 26, 26, 27, 27, 27, 27, 27, 27, 27,
    27, 28, 28, 28, 28, 28, 28, 28, 28, 29, 29, 29, 29, 29, 29, 29, 29, 30, 30, 30, 30, 30, 30,
    30, 30, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 31, 32, 32, 32, 32, 32,
    32, 32, 32, 32, 32, 32, 32, 32, 32, 32, 32,
};
static const uint8_t gcalloc__size_to_class128[249] = {
    32, 33, 34, 35, 36, 37, 37, 38, 38, 39, 39, 40, 40, 40, 41, 41, 41, 42, 43, 43, 44, 44, 44,
    44, 44, 45, 45, 45, 45, 45, 45, 46, 46, 46, 46, 47, 47, 47, 47, 47, 47, 48, 48, 48, 49, 49,
    50, 51, 51, 51, 51, 51, 51, 51, 51, 51, 51, 52, 52, 52, 52, 52, 52, 52, 52, 52, 52, 53, 53,
    54, 54, 54, 54, 55, 55, 55, 55, 55, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 56, 57, 57, 57,
    57, 57, 57, 57, 57, 57, 57, 58, 58, 58, 58, 58, 58, 59, 59, 59, 59, 59, 59, 59, 59, 59, 59,
    59, 59, 59, 59, 59, 59, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 60, 61,
    61, 61, 61, 61, 62, 62, 62, 62, 62, 62, 62, 62, 62, 62, 62, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 64,
    64, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 65, 66,
    66, 66, 66, 66, 66, 66, 66, 66, 66, 66, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67,
    67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67, 67,
};
#define GCALLOC__TABLES_CHECK 0x04297d7b7bd707c4ULL
/* END GENERATED */

/* Size class of a small size (1..32768): Go's size_to_class8 / size_to_class128 lookup.
 * Folded to a constant when size is one. */
static inline unsigned gcalloc__sizeclass(size_t size) {
    if (size <= 1024 - 8)
        return gcalloc__size_to_class8[(size + 7) >> 3];
    return gcalloc__size_to_class128[(size - 1024 + 128 - 1) >> 7];
}

/* --- the calling thread's record ----------------------------------------------------------- */

/* This translation unit's cache of the calling thread's record for the last heap it used.
 * A record is reused only after its thread exited and api structs are never reused, so a
 * cached pair stays right for the life of the thread. */
typedef struct gcalloc__tls_cache {
    struct gcalloc_api *api;
    gcalloc_thread *t;
} gcalloc__tls_cache;
static __thread gcalloc__tls_cache gcalloc__tls __attribute__((tls_model(GCALLOC_TLS_MODEL)));
/* Messages of failures that happened before the thread had a record for the heap. */
static __thread char gcalloc__early_error[GCALLOC_ERROR_BYTES];

static inline void gcalloc__set_error(gcalloc_thread *t, const char *msg) {
    char *dst = t != NULL ? t->error : gcalloc__early_error;
    size_t n = strlen(msg);
    if (n >= GCALLOC_ERROR_BYTES)
        n = GCALLOC_ERROR_BYTES - 1;
    memcpy(dst, msg, n);
    dst[n] = 0;
}

/* The pthread key's destructor: the thread exits; every record it has is done. */
static void gcalloc__thread_exit(void *value) {
    gcalloc_thread *t = (gcalloc_thread *)value;
    while (t != NULL) {
        gcalloc_thread *next = t->next;   /* read first: an exited record may be reused */
        gcalloc_stop_exited(&t->stop);
        t = next;
    }
}

static inline int gcalloc__key(gcalloc_shared *sh, pthread_key_t *key) {
    int32_t state = __atomic_load_n(&sh->key_state, __ATOMIC_ACQUIRE);
    if (GCALLOC__UNLIKELY(state != 2)) {
        int32_t expect = 0;
        if (__atomic_compare_exchange_n(&sh->key_state, &expect, 1, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            pthread_key_t k;
            int rc = pthread_key_create(&k, gcalloc__thread_exit);
            if (rc != 0) {
                sh->key_error = rc;
                __atomic_store_n(&sh->key_state, 0, __ATOMIC_RELEASE);
                return -1;
            }
            sh->key = (uint64_t)k;
            __atomic_store_n(&sh->key_state, 2, __ATOMIC_RELEASE);
        } else {
            while (__atomic_load_n(&sh->key_state, __ATOMIC_ACQUIRE) == 1)
                sched_yield();
            if (__atomic_load_n(&sh->key_state, __ATOMIC_ACQUIRE) != 2)
                return -1;
        }
    }
    *key = (pthread_key_t)sh->key;
    return 0;
}

/* The calling thread's record for api, without creating one: NULL if it has none. */
static inline gcalloc_thread *gcalloc__find(struct gcalloc_api *api) {
    pthread_key_t key;
    if (api == NULL)
        return NULL;
    if (gcalloc__tls.api == api)
        return gcalloc__tls.t;
    if (api->abi_version != GCALLOC_ABI_VERSION ||
        __atomic_load_n(&api->shared->key_state, __ATOMIC_ACQUIRE) != 2 ||
        gcalloc__key(api->shared, &key) != 0)
        return NULL;
    for (gcalloc_thread *t = (gcalloc_thread *)pthread_getspecific(key); t; t = t->next) {
        if (t->api == api) {
            gcalloc__tls.api = api;
            gcalloc__tls.t = t;
            return t;
        }
    }
    return NULL;
}

/* First call of this thread on this heap (in this translation unit): find or make its
 * record. Python allocates it and registers it with the collector; then the header registers
 * the thread's stack (gcalloc_stop_register) and links the record into the thread's chain. */
GCALLOC__NOINLINE static gcalloc_thread *gcalloc__attach(struct gcalloc_api *api) {
    pthread_key_t key;
    gcalloc_thread *t;
    if (api == NULL) {
        gcalloc__set_error(NULL, "InvalidArgument: api is NULL");
        return NULL;
    }
    if (api->abi_version != GCALLOC_ABI_VERSION || api->struct_size != sizeof(gcalloc_api) ||
        api->tables_check != GCALLOC__TABLES_CHECK) {
        gcalloc__set_error(NULL, "InvalidArgument: gcalloc.h does not match the installed "
                                 "gcalloc (ABI version or size-class tables): rebuild with "
                                 "gcalloc.get_include()");
        return NULL;
    }
    t = gcalloc__find(api);
    if (t != NULL)
        return t;
    if (api->closed) {
        gcalloc__set_error(NULL, "HeapClosed: heap is closed");
        return NULL;
    }
    if (gcalloc__key(api->shared, &key) != 0) {
        gcalloc__set_error(NULL, "OutOfMemory: pthread_key_create failed");
        return NULL;
    }
    t = api->new_thread(gcalloc__early_error, GCALLOC_ERROR_BYTES);
    if (t == NULL)
        return NULL;
    if (gcalloc_stop_register(&t->stop, api->suspend_signal) != 0) {
        gcalloc_stop_exited(&t->stop);   /* Python reaps it */
        gcalloc__set_error(NULL, "OutOfMemory: could not register the thread's stack");
        return NULL;
    }
    t->next = (gcalloc_thread *)pthread_getspecific(key);
    pthread_setspecific(key, t);
    gcalloc__tls.api = api;
    gcalloc__tls.t = t;
    return t;
}

/* The calling thread's record, made on first use; NULL (and a message) if the heap is
 * closed or the header does not match. */
static inline gcalloc_thread *gcalloc__thread(struct gcalloc_api *api) {
    gcalloc_thread *t;
    if (GCALLOC__LIKELY(gcalloc__tls.api == api && api != NULL))
        t = gcalloc__tls.t;
    else if ((t = gcalloc__attach(api)) == NULL)
        return NULL;
    if (GCALLOC__UNLIKELY(api->closed)) {
        gcalloc__set_error(t, "HeapClosed: heap is closed");
        return NULL;
    }
    return t;
}

/* --- allocation ----------------------------------------------------------------------------- */

/* Bump the bucket of size's class: the object, or NULL when the bucket is used up. */
static inline void *gcalloc__bump(gcalloc_thread *t, size_t size, unsigned noscan) {
    unsigned sc = gcalloc__sizeclass(size);
    gcalloc_bucket *b = &t->buckets[(sc << 1) | noscan];
    void *out = NULL;
    gcalloc_stop_fast_begin(&t->stop);
    uint64_t p = b->cursor;
    uint64_t next = p + gcalloc__class_to_size[sc];
    if (GCALLOC__LIKELY(next <= b->end)) {   /* an empty bucket is (0, 0): never true */
        b->cursor = next;
        out = (void *)(uintptr_t)p;
    }
    gcalloc_stop_fast_end(&t->stop);
    return out;
}

GCALLOC__NOINLINE static void *gcalloc__alloc_slow(struct gcalloc_api *api, size_t size,
                                                   unsigned noscan) {
    gcalloc_thread *t = gcalloc__thread(api);
    uint64_t p;
    if (t == NULL)
        return NULL;
    if (size - 1 < GCALLOC_MAX_SMALL_SIZE) {
        /* The translation unit's cache missed, but the bucket may have slots. */
        void *q = gcalloc__bump(t, size, noscan);
        if (q != NULL)
            return q;
    }
    GCALLOC_STOP_SPILL_ENTER(&t->stop);
    p = api->alloc(t, (uint64_t)size, (int32_t)noscan);
    gcalloc_stop_leave(&t->stop);
    return (void *)(uintptr_t)p;
}

static inline void *gcalloc__alloc(struct gcalloc_api *api, size_t size, unsigned noscan) {
    gcalloc_thread *t = gcalloc__tls.t;   /* NULL until this thread's first call: api NULL */
    if (GCALLOC__LIKELY(gcalloc__tls.api == api && t != NULL &&
                        size - 1 < GCALLOC_MAX_SMALL_SIZE)) {
        void *p = gcalloc__bump(t, size, noscan);
        if (GCALLOC__LIKELY(p != NULL))
            return p;
    }
    return gcalloc__alloc_slow(api, size, noscan);
}

/* size bytes, zeroed; every word may be a pointer (scanned conservatively). NULL on failure
 * (InvalidSize above 2^48, OutOfMemory, HeapClosed). Size 0 returns one shared address. */
static inline void *gcalloc_alloc(struct gcalloc_api *api, size_t size) {
    return gcalloc__alloc(api, size, 0);
}

/* size bytes, zeroed, never scanned: the object must hold no heap pointers. */
static inline void *gcalloc_alloc_noscan(struct gcalloc_api *api, size_t size) {
    return gcalloc__alloc(api, size, 1);
}

/* A type registered once: size bytes, pointer words at the byte offsets given (each a
 * multiple of 8, inside the type). Returns the type's id (> 0) for gcalloc_alloc_typed, or
 * -1 (InvalidType, InvalidArgument, HeapClosed). The same gcalloc.Type as Python's
 * gcalloc.Type(size, mask). */
GCALLOC__NOINLINE static int64_t gcalloc_register_type(struct gcalloc_api *api, size_t size,
                                                      const size_t *ptr_offsets,
                                                      size_t n) {
    gcalloc_thread *t = gcalloc__thread(api);
    int64_t r;
    if (t == NULL)
        return -1;
    if (n != 0 && ptr_offsets == NULL) {
        gcalloc__set_error(t, "InvalidArgument: ptr_offsets is NULL");
        return -1;
    }
    GCALLOC_STOP_SPILL_ENTER(&t->stop);
    r = api->register_type(t, (uint64_t)size, (const uint64_t *)ptr_offsets, (uint64_t)n);
    gcalloc_stop_leave(&t->stop);
    return r;
}

/* count objects of a registered type, as one array object, zeroed, scanned precisely.
 * NULL on failure (InvalidArgument: unknown type; InvalidSize: count 0 or too large). */
GCALLOC__NOINLINE static void *gcalloc_alloc_typed(struct gcalloc_api *api, int64_t type,
                                                   size_t count) {
    gcalloc_thread *t = gcalloc__thread(api);
    uint64_t p;
    if (t == NULL)
        return NULL;
    GCALLOC_STOP_SPILL_ENTER(&t->stop);
    p = api->alloc_typed(t, type, (uint64_t)count);
    gcalloc_stop_leave(&t->stop);
    return (void *)(uintptr_t)p;
}

/* Expand to a noinline call with one Python callback: body of the calls below. */
#define GCALLOC__ONE_CALL(rtype, failed, expr)                                             \
    gcalloc_thread *t = gcalloc__thread(api);                                              \
    rtype r;                                                                               \
    if (t == NULL)                                                                         \
        return failed;                                                                     \
    GCALLOC_STOP_SPILL_ENTER(&t->stop);                                                    \
    r = (expr);                                                                            \
    gcalloc_stop_leave(&t->stop);                                                          \
    return r

/* Free the object starting at p now (Heap.free: NULL and size-0 objects are no-ops). 0, or -1
 * (NotHeapPointer, InteriorPointer, DoubleFree, TinyObjectFree, HeapClosed). */
GCALLOC__NOINLINE static int gcalloc_free(struct gcalloc_api *api, void *p) {
    GCALLOC__ONE_CALL(int32_t, -1, api->free(t, (uint64_t)(uintptr_t)p));
}

/* A full collection, sweeping finished (Heap.collect). 0, or -1 (HeapClosed). */
GCALLOC__NOINLINE static int gcalloc_collect(struct gcalloc_api *api) {
    GCALLOC__ONE_CALL(int32_t, -1, api->collect(t));
}

/* Keep the object holding p alive until a matching gcalloc_remove_root (counted). 0, or -1
 * (NotHeapPointer, HeapClosed). */
GCALLOC__NOINLINE static int gcalloc_add_root(struct gcalloc_api *api, void *p) {
    GCALLOC__ONE_CALL(int32_t, -1, api->add_root(t, (uint64_t)(uintptr_t)p));
}

/* Undo one gcalloc_add_root. 0, or -1 (NotARoot, NotHeapPointer, HeapClosed). */
GCALLOC__NOINLINE static int gcalloc_remove_root(struct gcalloc_api *api, void *p) {
    GCALLOC__ONE_CALL(int32_t, -1, api->remove_root(t, (uint64_t)(uintptr_t)p));
}

/* Scan [addr, addr+size) -- memory outside the heap, mapped readable -- conservatively at
 * every collection until gcalloc_remove_root_range(token). The token (>= 0), or -1
 * (InvalidRootRange, HeapClosed). */
GCALLOC__NOINLINE static int64_t gcalloc_add_root_range(struct gcalloc_api *api, void *addr,
                                                       size_t size) {
    GCALLOC__ONE_CALL(int64_t, -1,
                      api->add_root_range(t, (uint64_t)(uintptr_t)addr, (uint64_t)size));
}

/* Stop scanning a range. 0, or -1 (NotARoot, HeapClosed). */
GCALLOC__NOINLINE static int gcalloc_remove_root_range(struct gcalloc_api *api, int64_t token) {
    GCALLOC__ONE_CALL(int32_t, -1, api->remove_root_range(t, token));
}

/* When a collection finds the object starting at p unreachable, fn(p, data) runs once on the
 * heap's finalizer thread (Heap.set_finalizer); fn NULL clears it. 0, or -1
 * (NotHeapPointer, InteriorPointer, FinalizerAlreadySet, HeapClosed). */
GCALLOC__NOINLINE static int gcalloc_set_finalizer(struct gcalloc_api *api, void *p,
                                                  gcalloc_finalizer_fn fn, void *data) {
    GCALLOC__ONE_CALL(int32_t, -1, api->set_finalizer(t, (uint64_t)(uintptr_t)p, fn,
                                                      (uint64_t)(uintptr_t)data));
}

/* No collection starts (in any thread) until the matching gcalloc_no_gc_leave on this
 * thread (Heap.no_gc); they nest. 0, or -1 (HeapClosed; InvalidArgument: leave without
 * enter). */
GCALLOC__NOINLINE static int gcalloc_no_gc_enter(struct gcalloc_api *api) {
    GCALLOC__ONE_CALL(int32_t, -1, api->no_gc(t, 1));
}

GCALLOC__NOINLINE static int gcalloc_no_gc_leave(struct gcalloc_api *api) {
    GCALLOC__ONE_CALL(int32_t, -1, api->no_gc(t, 0));
}

/* Fill *out from Heap.read_memstats. 0, or -1 (InvalidArgument: out NULL; HeapClosed). */
GCALLOC__NOINLINE static int gcalloc_read_stats(struct gcalloc_api *api, gcalloc_stats *out) {
    GCALLOC__ONE_CALL(int32_t, -1, api->stats(t, out));
}

/* The message of the calling thread's last failed call on this heap ("" if none):
 * "<ExceptionName>: <message>". Valid until the thread's next failing call. */
GCALLOC__NOINLINE static const char *gcalloc_last_error(struct gcalloc_api *api) {
    gcalloc_thread *t = api != NULL && api->abi_version == GCALLOC_ABI_VERSION
                            ? gcalloc__find(api) : NULL;
    return t != NULL ? t->error : gcalloc__early_error;
}

#ifdef __cplusplus
}
#endif

#endif
