/* A small C extension that builds a data structure in a gcalloc heap.
 *
 * build_records(api, n) makes a singly linked list of n records in the heap. Each record points
 * to a separately allocated name string ("item-<i>", a noscan object) that carries a C
 * finalizer. The head is registered with add_root before anything else is allocated, and each
 * new object is linked in before the next allocation, so a collection at any point -- one the
 * pacer starts inside alloc, or the one this code asks for halfway -- finds every record.
 * A scratch buffer shows explicit free. Returns the head (0 on failure).
 */
#include <stdio.h>
#include <string.h>

#include "gcalloc_abi.h"

struct record {
    struct record *next;   /* a heap pointer: scanned */
    char *name;            /* a heap pointer: scanned */
    int64_t value;
};

static volatile int64_t names_finalized;

static void on_name_finalized(uint64_t addr) {
    (void)addr;
    names_finalized++;     /* finalizers run one at a time on the finalizer thread */
}

int64_t finalized_count(void) { return names_finalized; }

static char *make_name(const gcalloc_api *api, int64_t i) {
    char *s = (char *)(uintptr_t)api->alloc(24, 1);
    if (s == NULL) return NULL;
    snprintf(s, 24, "item-%lld", (long long)i);
    if (api->set_finalizer((uint64_t)(uintptr_t)s, on_name_finalized) != 0) return NULL;
    return s;
}

uint64_t build_records(const gcalloc_api *api, int64_t n) {
    struct record *head = (struct record *)(uintptr_t)api->alloc(sizeof(struct record), 0);
    if (head == NULL || api->add_root((uint64_t)(uintptr_t)head) != 0) return 0;
    struct record *tail = head;
    for (int64_t i = 0; i < n; i++) {
        struct record *r = i == 0 ? head
                                  : (struct record *)(uintptr_t)api->alloc(sizeof *r, 0);
        if (r == NULL) return 0;
        if (r != head) {
            tail->next = r;        /* reachable from the root before the next alloc */
            tail = r;
        }
        r->value = i * i;
        r->name = make_name(api, i);
        if (r->name == NULL) return 0;
        if (i == n / 2) {
            char *scratch = (char *)(uintptr_t)api->alloc(4096, 1);
            if (scratch == NULL) return 0;
            memset(scratch, 0xAB, 4096);
            if (api->free((uint64_t)(uintptr_t)scratch) != 0) return 0;
            if (api->collect() != 0) return 0;   /* the half-built list must survive */
        }
    }
    return (uint64_t)(uintptr_t)head;
}
