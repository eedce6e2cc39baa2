/* records.c as a compiled CPython extension module: `records_ext.build(heap.capi, n)`.
 * Built by run_extension.py with the system compiler, Python.h and gcalloc.h on the include
 * path; no library to link. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "records.c"

static PyObject *build(PyObject *self, PyObject *args) {
    unsigned long long capi;
    long long n;
    (void)self;
    if (!PyArg_ParseTuple(args, "KL", &capi, &n))
        return NULL;
    gcalloc_api *api = (gcalloc_api *)(uintptr_t)capi;
    struct record *head = build_records(api, n);
    if (head == NULL) {
        PyErr_SetString(PyExc_MemoryError, gcalloc_last_error(api));
        return NULL;
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)head);
}

static PyObject *finalized(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyLong_FromLongLong(finalized_count());
}

static PyMethodDef methods[] = {
    {"build", build, METH_VARARGS, "build(capi, n) -> address of the list's head"},
    {"finalized", finalized, METH_NOARGS, "how many name finalizers ran"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "records_ext",
                                    .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit_records_ext(void) { return PyModule_Create(&module); }
