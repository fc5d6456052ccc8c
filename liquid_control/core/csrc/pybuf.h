/*
 * Python buffers in C (no numpy C API: buffers only, so it builds against any numpy), shared by
 * the extension modules (_cltc, _ctick).
 */
#ifndef LIQUID_CONTROL_PYBUF_H
#define LIQUID_CONTROL_PYBUF_H
#include <Python.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* buffers                                                                                      */
/* ------------------------------------------------------------------------------------------ */
typedef struct {
    Py_buffer view;
    int ok;
} buf_t;

/* Get a C-contiguous buffer of `format` ("d", "f" or "q") with `count` items (-1: any). */
static int get_buf(PyObject *obj, buf_t *b, const char *name, char format, Py_ssize_t count,
                   int writable) {
    b->ok = 0;
    if (PyObject_GetBuffer(obj, &b->view,
                           PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a C-contiguous%s array", name,
                     writable ? " writable" : "");
        return -1;
    }
    b->ok = 1;
    const char *f = b->view.format ? b->view.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') f++;
    char want = format;
    int match = (*f == want) || (want == 'q' && (*f == 'l' && sizeof(long) == 8));
    if (!match || f[1] != '\0') {
        PyErr_Format(PyExc_TypeError, "%s: expected %s items, got format '%s'", name,
                     want == 'd' ? "float64" : want == 'f' ? "float32" : "int64", b->view.format);
        return -1;
    }
    Py_ssize_t n = b->view.len / b->view.itemsize;
    if (count >= 0 && n != count) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items, got %zd", name, count, n);
        return -1;
    }
    return 0;
}

static void release(buf_t *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].ok) {
            PyBuffer_Release(&bufs[i].view);
            bufs[i].ok = 0;
        }
}

static int copy_items(void *dst, PyObject *obj, const char *name, char format, Py_ssize_t count) {
    buf_t b;
    if (get_buf(obj, &b, name, format, count, 0) < 0) {
        release(&b, 1);
        return -1;
    }
    memcpy(dst, b.view.buf, (size_t)b.view.len);
    release(&b, 1);
    return 0;
}

#endif
