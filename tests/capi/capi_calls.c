/* The C side of tests/capi/test_capi.py: every gcalloc.h call, from plain C functions the
 * tests call through ctypes. */
#define _GNU_SOURCE
#include <gcalloc.h>

struct node {
    struct node *next;
    int64_t value;
};

/* A list of n nodes from gcalloc_alloc (typed when type > 0), head rooted with add_root,
 * with a collection after every `collect_every` nodes (0: none). The head, or NULL. */
struct node *build_list(gcalloc_api *api, int64_t n, int64_t type, int64_t collect_every) {
    struct node *head = type > 0 ? gcalloc_alloc_typed(api, type, 1)
                                 : gcalloc_alloc(api, sizeof *head);
    if (head == NULL || gcalloc_add_root(api, head) != 0)
        return NULL;
    struct node *tail = head;
    for (int64_t i = 1; i < n; i++) {
        struct node *x = type > 0 ? gcalloc_alloc_typed(api, type, 1)
                                  : gcalloc_alloc(api, sizeof *x);
        if (x == NULL)
            return NULL;
        x->value = i;
        tail->next = x;
        tail = x;
        if (collect_every && i % collect_every == 0 && gcalloc_collect(api) != 0)
            return NULL;
    }
    return head;
}

int64_t sum_list(struct node *p) {
    int64_t s = 0;
    for (; p != NULL; p = p->next)
        s += p->value;
    return s;
}

void *alloc(gcalloc_api *api, uint64_t size, int noscan) {
    return noscan ? gcalloc_alloc_noscan(api, size) : gcalloc_alloc(api, size);
}

int64_t register_node_type(gcalloc_api *api) {
    size_t offsets[1] = {offsetof(struct node, next)};
    return gcalloc_register_type(api, sizeof(struct node), offsets, 1);
}

int64_t register_type(gcalloc_api *api, uint64_t size, const size_t *offsets, uint64_t n) {
    return gcalloc_register_type(api, size, offsets, n);
}

void *alloc_typed(gcalloc_api *api, int64_t type, uint64_t count) {
    return gcalloc_alloc_typed(api, type, count);
}

int free_(gcalloc_api *api, void *p) { return gcalloc_free(api, p); }
int collect(gcalloc_api *api) { return gcalloc_collect(api); }
int add_root(gcalloc_api *api, void *p) { return gcalloc_add_root(api, p); }
int remove_root(gcalloc_api *api, void *p) { return gcalloc_remove_root(api, p); }
int64_t add_root_range(gcalloc_api *api, void *p, uint64_t n) {
    return gcalloc_add_root_range(api, p, n);
}
int remove_root_range(gcalloc_api *api, int64_t token) {
    return gcalloc_remove_root_range(api, token);
}
int no_gc_enter(gcalloc_api *api) { return gcalloc_no_gc_enter(api); }
int no_gc_leave(gcalloc_api *api) { return gcalloc_no_gc_leave(api); }
int read_stats(gcalloc_api *api, gcalloc_stats *out) { return gcalloc_read_stats(api, out); }
const char *last_error(gcalloc_api *api) { return gcalloc_last_error(api); }

/* A global the tests register as a root range. */
void *global_slot[4];

static volatile int64_t finalized;
static volatile uint64_t finalized_data;

static void on_finalize(void *obj, void *data) {
    (void)obj;
    finalized++;
    finalized_data = (uint64_t)(uintptr_t)data;
}

int set_finalizer(gcalloc_api *api, void *p, int clear) {
    return gcalloc_set_finalizer(api, p, clear ? NULL : on_finalize, (void *)0x5eed);
}
int64_t finalized_count(void) { return finalized; }
uint64_t finalized_with(void) { return finalized_data; }

/* The calling thread's record for api (NULL before its first call) and its bucket of the
 * span class `spc`. */
gcalloc_thread *thread_record(gcalloc_api *api) { return gcalloc__find(api); }
uint64_t bucket_left(gcalloc_api *api, unsigned spc) {
    gcalloc_thread *t = gcalloc__find(api);
    return t == NULL ? 0 : t->buckets[spc].end - t->buckets[spc].cursor;
}
unsigned span_class_of(uint64_t size, int noscan) {
    return (gcalloc__sizeclass(size) << 1) | (unsigned)noscan;
}
uint64_t class_size(unsigned sizeclass) { return gcalloc__class_to_size[sizeclass]; }

/* A thread Python does not know: it allocates n objects, then exits; pthread_join returns
 * after its thread-specific data destructors ran. */
struct thread_arg {
    gcalloc_api *api;
    int64_t n;
    void *last;
    gcalloc_thread *record;
};

static void *thread_body(void *argp) {
    struct thread_arg *arg = argp;
    for (int64_t i = 0; i < arg->n; i++)
        arg->last = gcalloc_alloc_noscan(arg->api, 32);
    arg->record = gcalloc__find(arg->api);
    return NULL;
}

void *alloc_in_pthread(gcalloc_api *api, int64_t n, uint64_t *record) {
    struct thread_arg arg = {api, n, NULL, NULL};
    pthread_t th;
    if (pthread_create(&th, NULL, thread_body, &arg) != 0 || pthread_join(th, NULL) != 0)
        return NULL;
    *record = (uint64_t)(uintptr_t)arg.record;
    return arg.last;
}
