/* The C side of tests/capi/test_capi_roots.py: naive C through the packaged header only. Heap
 * pointers live only in locals (stack and registers): no gcalloc_add_root, no root range. Each
 * function returns the nodes it found intact afterwards, so a collection that missed a local
 * shows as a short count (a freed node is reused zeroed, or its slot handed out again). */
#define _GNU_SOURCE
#include <gcalloc.h>

struct node {
    struct node *next;
    uint64_t value;
};

struct tnode {
    struct tnode *left, *right;
    uint64_t depth;
};

/* One object of n bytes, after `garbage` bytes dropped at once (so that GOGC=100 collects
 * while a structure is built, as GOGC=10 does on its own). */
static void *alloc_with_garbage(gcalloc_api *api, size_t n, size_t garbage) {
    if (garbage && gcalloc_alloc_noscan(api, garbage) == NULL)
        return NULL;
    return gcalloc_alloc(api, n);
}

/* Nodes values 0..n-1 (head is n-1) or, reversed, the other way round: the number found in
 * order from the head. */
static int64_t walk(const struct node *head, int64_t n) {
    int64_t ok = 0;
    uint64_t want = head ? head->value : 0;
    int up = head && head->next && head->next->value == want + 1;
    for (const struct node *p = head; p && ok <= n;
         p = p->next, ok++, want = up ? want + 1 : want - 1)
        if (p->value != want)
            break;
    return ok;
}

static struct node *build(gcalloc_api *api, int64_t n, size_t garbage) {
    struct node *head = NULL;
    for (int64_t i = 0; i < n; i++) {
        struct node *x = alloc_with_garbage(api, sizeof *x, garbage);
        if (x == NULL)
            return NULL;
        x->value = (uint64_t)i;
        x->next = head;
        head = x;
    }
    return head;
}

/* A singly linked list of n nodes, head only in a local. -1 if an allocation failed. */
int64_t naive_list(gcalloc_api *api, int64_t n, size_t garbage) {
    struct node *head = build(api, n, garbage);
    return head ? walk(head, n) : -1;
}

/* Bottom-up: the left subtree lives only in this frame while the right one is built. */
static struct tnode *tree(gcalloc_api *api, int d, size_t garbage, int *failed) {
    struct tnode *left, *right, *t;
    if (d == 0 || *failed)
        return NULL;
    left = tree(api, d - 1, garbage, failed);
    right = tree(api, d - 1, garbage, failed);
    t = alloc_with_garbage(api, sizeof *t, garbage);
    if (t == NULL) {
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

/* A complete tree of depth d: (1 << d) - 1 if intact, less (or negative) if not; -1 if an
 * allocation failed. */
int64_t naive_tree(gcalloc_api *api, int d, size_t garbage) {
    int failed = 0;
    struct tnode *t = tree(api, d, garbage, &failed);
    return failed ? -1 : count(t, d);
}

/* Build n nodes, then reverse the list in place in pure C (no gcalloc call, head in a local)
 * until *stop; *rounds counts the reversals. The nodes found intact, or -1. */
int64_t naive_reverse(gcalloc_api *api, int64_t n, volatile int32_t *stop,
                      volatile int64_t *rounds) {
    struct node *head = build(api, n, 0);
    if (head == NULL)
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

/* Build n nodes, call the caller's own function (not a gcalloc call: it may collect on this
 * very thread), then walk. */
int64_t naive_list_then_callback(gcalloc_api *api, int64_t n, void (*user)(void)) {
    struct node *head = build(api, n, 0);
    if (head == NULL)
        return -1;
    user();
    return walk(head, n);
}

/* Allocate 32-byte objects until a call fails; *count counts them. The objects are not
 * touched: one handed out just before close() may be unmapped by the time this thread runs
 * again. Returns 1 if the failure was the heap's close, else 0. */
int alloc_until_closed(gcalloc_api *api, volatile int64_t *count) {
    for (;;) {
        if (gcalloc_alloc_noscan(api, 32) == NULL)
            return strcmp(gcalloc_last_error(api), "HeapClosed: heap is closed") == 0;
        __atomic_fetch_add(count, 1, __ATOMIC_RELAXED);
    }
}
