/*
 * Building a cdr_reader (csrc/cdr.h) from the tuple liquid_control/ros/native_tick.py prepares,
 * and the Python type _cltc.InputReader over it (for the parity tests against the Python
 * decoder and readers). Needs get_buf/copy_items from the including module.
 *
 * reader tuple: (ops int32[6 * nops], kind, k, index int64[k], sectors int64[k], need,
 *                field int64[k], keys [bytes] * k, transform int64[k], max_bytes)
 */
#ifndef LIQUID_CONTROL_CDR_PY_H
#define LIQUID_CONTROL_CDR_PY_H
#include "cdr.h"

static void cdr_reader_free(cdr_reader *r) {
    free((void *)r->ops);
    free(r->index);
    free(r->sectors);
    free(r->field);
    free(r->transform);
    if (r->key)
        for (int q = 0; q < r->k; q++) free((void *)r->key[q]);
    free((void *)r->key);
    free(r->key_len);
    free(r->plan_names);
    free(r->plan);
    free(r->table);
    free(r->used);
    free(r->ctx.str_off);
    free(r->ctx.str_len);
    memset(r, 0, sizeof *r);
}

static int cdr_reader_from_py(cdr_reader *r, PyObject *t) {
    PyObject *o_ops, *o_index, *o_sectors, *o_field, *o_keys, *o_tf;
    int kind, k, need;
    Py_ssize_t max_bytes;
    memset(r, 0, sizeof *r);
    if (!PyArg_ParseTuple(t, "OiiOOiOO!On", &o_ops, &kind, &k, &o_index, &o_sectors, &need,
                          &o_field, &PyList_Type, &o_keys, &o_tf, &max_bytes))
        return -1;
    if (kind < RD_FIELDS || kind > RD_LASER || k < 1 || k > CDR_REGS || max_bytes < 8 ||
        PyList_GET_SIZE(o_keys) != (kind == RD_JOINTS ? k : 0)) {
        PyErr_SetString(PyExc_ValueError, "InputReader: bad reader description");
        return -1;
    }
    buf_t b;
    if (get_buf(o_ops, &b, "ops", 'i', -1, 0) < 0) { release(&b, 1); return -1; }
    Py_ssize_t words = b.view.len / 4;
    if (words % 6 || words == 0) {
        release(&b, 1);
        PyErr_SetString(PyExc_ValueError, "InputReader: ops must be 6 int32 per op");
        return -1;
    }
    r->nops = (int)(words / 6);
    r->ops = malloc((size_t)b.view.len);
    if (r->ops) memcpy((void *)r->ops, b.view.buf, (size_t)b.view.len);
    release(&b, 1);
    r->kind = kind;
    r->k = k;
    r->need = need;
    r->index = calloc((size_t)k, sizeof(int64_t));
    r->sectors = calloc((size_t)k, sizeof(int64_t));
    int64_t *field = calloc((size_t)k, sizeof(int64_t)), *tf = calloc((size_t)k, sizeof(int64_t));
    r->field = calloc((size_t)k, sizeof(int));
    r->transform = calloc((size_t)k, sizeof(int));
    r->key = calloc((size_t)k, sizeof(char *));
    r->key_len = calloc((size_t)k, sizeof(int64_t));
    r->plan = calloc((size_t)k, sizeof(int64_t));
    int64_t str_cap = max_bytes / 5 + 1, cap = 16;
    while (cap < 2 * str_cap + 16) cap *= 2;
    r->table_cap = cap;
    r->table = malloc((size_t)cap * sizeof(int32_t));
    r->used = calloc((size_t)str_cap, sizeof(int64_t));
    r->plan_cap = max_bytes;
    r->plan_names = malloc((size_t)max_bytes);
    r->ctx.str_cap = str_cap;
    r->ctx.str_off = calloc((size_t)str_cap, sizeof(int64_t));
    r->ctx.str_len = calloc((size_t)str_cap, sizeof(int64_t));
    if (!r->ops || !r->index || !r->sectors || !field || !tf || !r->field || !r->transform ||
        !r->key || !r->key_len || !r->plan || !r->table || !r->used || !r->plan_names ||
        !r->ctx.str_off || !r->ctx.str_len) {
        free(field); free(tf);
        cdr_reader_free(r);
        PyErr_NoMemory();
        return -1;
    }
    for (int64_t i = 0; i < cap; i++) r->table[i] = -1;
    int bad = copy_items(r->index, o_index, "index", 'q', k) < 0 ||
              copy_items(r->sectors, o_sectors, "sectors", 'q', k) < 0 ||
              copy_items(field, o_field, "field", 'q', k) < 0 ||
              copy_items(tf, o_tf, "transform", 'q', k) < 0;
    for (int q = 0; q < k && !bad; q++) {
        r->field[q] = (int)field[q];
        r->transform[q] = (int)tf[q];
        if (field[q] < 0 || field[q] > 2 || tf[q] < 0 || tf[q] > 2 ||
            (kind == RD_LASER && (r->sectors[q] < 1 || r->index[q] < 0 || r->index[q] >= r->sectors[q])) ||
            (kind == RD_MULTIARRAY && (r->index[q] < 0 || r->index[q] >= need)) ||
            (kind == RD_FIELDS && (r->index[q] < 0 || r->index[q] >= CDR_REGS))) {
            PyErr_SetString(PyExc_ValueError, "InputReader: a value description is out of range");
            bad = 1;
        }
    }
    for (int q = 0; q < (kind == RD_JOINTS ? k : 0) && !bad; q++) {
        char *s;
        Py_ssize_t n;
        if (PyBytes_AsStringAndSize(PyList_GET_ITEM(o_keys, q), &s, &n) < 0) { bad = 1; break; }
        char *copy = malloc((size_t)n + 1);
        if (!copy) { PyErr_NoMemory(); bad = 1; break; }
        memcpy(copy, s, (size_t)n + 1);
        r->key[q] = copy;
        r->key_len[q] = n;
    }
    /* the ops: registers and sequences within range */
    for (int i = 0; i < r->nops && !bad; i++) {
        const cdr_op *op = &r->ops[i];
        int ok = op->op >= OP_SCALAR && op->op <= OP_REPEAT;
        if (op->op == OP_SCALAR) ok = ok && op->a >= 1 && op->a <= 8 && op->b >= 0 && op->b <= DT_F64 && op->c < CDR_REGS;
        if (op->op == OP_NUMSEQ) ok = ok && op->a >= 1 && op->a <= 8 && op->e < CDR_SEQS;
        if (op->op == OP_REPEAT) ok = ok && op->c >= 0 && i + op->c < r->nops && op->d >= 1;
        if (!ok) {
            PyErr_Format(PyExc_ValueError, "InputReader: op %d is invalid", i);
            bad = 1;
        }
    }
    free(field);
    free(tf);
    if (bad) {
        cdr_reader_free(r);
        return -1;
    }
    return 0;
}

typedef struct {
    PyObject_HEAD
    cdr_reader r;
    int ready;
} ReaderObject;

static void Reader_dealloc(ReaderObject *self) {
    if (self->ready) cdr_reader_free(&self->r);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Reader_init(ReaderObject *self, PyObject *args, PyObject *kwds) {
    PyObject *t;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &t)) return -1;
    if (self->ready) cdr_reader_free(&self->r);
    self->ready = 0;
    if (cdr_reader_from_py(&self->r, t) < 0) return -1;
    self->ready = 1;
    return 0;
}

/* read(data, out) -> (reason code, detail) */
static PyObject *Reader_read(ReaderObject *self, PyObject *args) {
    PyObject *o_data, *o_out;
    if (!PyArg_ParseTuple(args, "OO", &o_data, &o_out)) return NULL;
    if (!self->ready) { PyErr_SetString(PyExc_RuntimeError, "InputReader: not initialised"); return NULL; }
    Py_buffer data;
    if (PyObject_GetBuffer(o_data, &data, PyBUF_SIMPLE) < 0) return NULL;
    buf_t b;
    if (get_buf(o_out, &b, "out", 'd', self->r.k, 1) < 0) {
        release(&b, 1);
        PyBuffer_Release(&data);
        return NULL;
    }
    int rc = cdr_read(&self->r, (const uint8_t *)data.buf, data.len, (double *)b.view.buf);
    release(&b, 1);
    PyBuffer_Release(&data);
    return Py_BuildValue("(is)", rc, rc ? self->r.ctx.detail : "");
}

static PyMethodDef Reader_methods[] = {
    {"read", (PyCFunction)Reader_read, METH_VARARGS,
     "read(data, out) -> (reason code, detail): one serialized message into out"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "liquid_control.core._cltc.InputReader",
    .tp_basicsize = sizeof(ReaderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Serialized input message -> observation values (csrc/cdr.h).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
};

#endif
