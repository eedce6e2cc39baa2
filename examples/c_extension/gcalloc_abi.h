/* gcalloc's C ABI: what a C extension receives to use a gcalloc heap.
 *
 * Python fills this struct with ctypes callbacks (see run.py) and passes a pointer to it to the
 * extension. Addresses are plain uint64_t. Every call returns 0 (or a non-NULL address) on
 * success; on an error (an exception inside gcalloc) it returns -1 (or 0 from alloc) and prints
 * the error on stderr.
 *
 * Rules, as for any garbage-collected heap:
 *  - Pointers held only in C locals or C globals are NOT roots. Keep an object alive with
 *    add_root (counted; undo with remove_root), or make it reachable from a rooted object.
 *  - Link a new object into a reachable one before the next alloc: an allocation may start a
 *    collection (the object being returned is safe during that collection).
 *  - An object allocated with noscan=1 is never scanned: it must hold no heap pointers.
 *  - A finalizer runs on gcalloc's finalizer thread with the object's address, after a
 *    collection found the object unreachable; the object is freed by a later collection.
 */
#ifndef GCALLOC_ABI_H
#define GCALLOC_ABI_H

#include <stdint.h>

typedef void (*gcalloc_finalizer)(uint64_t addr);

typedef struct gcalloc_api {
    uint64_t (*alloc)(uint64_t size, int32_t noscan);  /* zeroed object; 0 on failure */
    int32_t (*free)(uint64_t addr);                     /* explicit free */
    int32_t (*collect)(void);                           /* a full collection */
    int32_t (*add_root)(uint64_t addr);
    int32_t (*remove_root)(uint64_t addr);
    int32_t (*set_finalizer)(uint64_t addr, gcalloc_finalizer fn);  /* fn NULL: clear */
} gcalloc_api;

#endif
