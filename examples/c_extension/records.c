/* A small C extension that builds a data structure in a gcalloc heap, through gcalloc.h (the
 * packaged, header-only C ABI: cc -I$(python -c 'import gcalloc; print(gcalloc.get_include())')).
 *
 * build_records(api, n) makes a singly linked list of n records in the heap. Each record points
 * to a separately allocated name string ("item-<i>", a noscan object) that carries a C
 * finalizer. The head is registered with gcalloc_add_root before anything else is allocated,
 * and each new object is linked in before the next allocation, so a collection at any point --
 * one the pacer starts inside an allocation, or the one this code asks for halfway -- finds
 * every record. A scratch buffer shows explicit free. Returns the head (NULL on failure: the
 * reason is gcalloc_last_error(api)).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE   /* gcalloc.h needs it (Python.h defines it too) */
#endif
#include <stdio.h>
#include <string.h>

#include <gcalloc.h>

struct record {
    struct record *next;   /* a heap pointer: scanned */
    char *name;            /* a heap pointer: scanned */
    int64_t value;
};

static volatile int64_t names_finalized;

static void on_name_finalized(void *obj, void *data) {
    (void)obj;
    (void)data;
    names_finalized++;     /* finalizers run one at a time on the heap's finalizer thread */
}

int64_t finalized_count(void) { return names_finalized; }

static char *make_name(gcalloc_api *api, int64_t i) {
    char *s = gcalloc_alloc_noscan(api, 32);
    if (s == NULL) return NULL;
    snprintf(s, 32, "item-%lld", (long long)i);
    if (gcalloc_set_finalizer(api, s, on_name_finalized, NULL) != 0) return NULL;
    return s;
}

struct record *build_records(gcalloc_api *api, int64_t n) {
    struct record *head = gcalloc_alloc(api, sizeof *head);
    if (head == NULL || gcalloc_add_root(api, head) != 0) return NULL;
    struct record *tail = head;
    for (int64_t i = 0; i < n; i++) {
        struct record *r = i == 0 ? head : gcalloc_alloc(api, sizeof *r);
        if (r == NULL) return NULL;
        if (r != head) {
            tail->next = r;        /* reachable from the root before the next alloc */
            tail = r;
        }
        r->value = i * i;
        r->name = make_name(api, i);
        if (r->name == NULL) return NULL;
        if (i == n / 2) {
            char *scratch = gcalloc_alloc_noscan(api, 4096);
            if (scratch == NULL) return NULL;
            memset(scratch, 0xAB, 4096);
            if (gcalloc_free(api, scratch) != 0) return NULL;
            if (gcalloc_collect(api) != 0) return NULL;   /* the half-built list must survive */
        }
    }
    return head;
}

/* The error of this thread's last failed call, for the Python side to report. */
const char *records_error(gcalloc_api *api) { return gcalloc_last_error(api); }
