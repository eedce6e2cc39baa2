/* A minimal stand-in for the C ABI's calls, for tests/capi/test_cthreads.py: it includes only
 * gcalloc_stop.h. Each "gcalloc call" is a ctypes callback into Python bracketed as the real
 * header's calls are (GCALLOC_STOP_SPILL_ENTER ... gcalloc_stop_leave); the data structures
 * keep heap pointers only in C locals. */
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

/* Bytes of garbage allocated (and dropped) with every node, so that even GOGC=100 collects
 * while the structures are built. */
static size_t h_garbage;
void h_set_garbage(size_t n) { h_garbage = n; }

static void *h_alloc(gcalloc_stop *s, h_alloc_fn cb, size_t n) {
    if (h_garbage && !h_call(s, cb, h_garbage))
        return NULL;
    return h_call(s, cb, n);
}

struct node {
    struct node *next;
    uint64_t value;
};

/* n nodes, head only in a local; then walk: the number of nodes found intact (n if all). */
static int64_t walk(struct node *head, int64_t n) {
    int64_t ok = 0;
    uint64_t want = head ? head->value : 0;
    int up = head && head->next && head->next->value == want + 1;
    for (struct node *p = head; p && ok <= n; p = p->next, ok++, want = up ? want + 1 : want - 1)
        if (p->value != want)
            break;
    return ok;
}

static struct node *build(gcalloc_stop *s, h_alloc_fn cb, int64_t n) {
    struct node *head = NULL;
    for (int64_t i = 0; i < n; i++) {
        struct node *x = h_alloc(s, cb, sizeof *x);
        if (!x)
            return NULL;
        x->value = (uint64_t)i;
        x->next = head;
        head = x;
    }
    return head;
}

int64_t h_list(gcalloc_stop *s, h_alloc_fn cb, int64_t n) {
    struct node *head = build(s, cb, n);
    return head ? walk(head, n) : -1;
}

struct tnode {
    struct tnode *left, *right;
    uint64_t depth;
};

/* Bottom-up: the left subtree lives only in this frame while the right one is built. */
static struct tnode *tree(gcalloc_stop *s, h_alloc_fn cb, int d, int *failed) {
    struct tnode *left, *right, *t;
    if (d == 0 || *failed)
        return NULL;
    left = tree(s, cb, d - 1, failed);
    right = tree(s, cb, d - 1, failed);
    t = h_alloc(s, cb, sizeof *t);
    if (!t) {
        *failed = 1;
        return NULL;
    }
    t->left = left;
    t->right = right;
    t->depth = (uint64_t)d;
    return t;
}

static int64_t count(const struct tnode *t, int d) {
    if (d == 0)
        return t == NULL ? 0 : -(1 << 30);
    if (t == NULL || t->depth != (uint64_t)d)
        return -(1 << 30);
    return 1 + count(t->left, d - 1) + count(t->right, d - 1);
}

/* A complete tree of depth d: (1 << d) - 1 nodes if intact, less (or negative) if not. */
int64_t h_tree(gcalloc_stop *s, h_alloc_fn cb, int d) {
    int failed = 0;
    struct tnode *t = tree(s, cb, d, &failed);
    return failed ? -1 : count(t, d);
}

/* Build n nodes, then reverse the list in place in pure C (no gcalloc call, head in a
 * local) until *stop; *rounds counts the reversals. Returns the nodes found intact. */
int64_t h_reverse(gcalloc_stop *s, h_alloc_fn cb, int64_t n, volatile int32_t *stop,
                  volatile int64_t *rounds) {
    struct node *head = build(s, cb, n);
    if (!head)
        return -1;
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) {
        struct node *prev = NULL, *cur = head;
        while (cur) {
            struct node *next = cur->next;
            cur->next = prev;
            prev = cur;
            cur = next;
        }
        head = prev;
        __atomic_fetch_add(rounds, 1, __ATOMIC_RELEASE);
    }
    return walk(head, n);
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

/* Build n nodes (head in a local), then call back into Python outside any gcalloc call (the
 * thread's own callback: it may collect on this very thread), then walk. */
int64_t h_list_then_callback(gcalloc_stop *s, h_alloc_fn cb, int64_t n, void (*user)(void)) {
    struct node *head = build(s, cb, n);
    if (!head)
        return -1;
    user();
    return walk(head, n);
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
