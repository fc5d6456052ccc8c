/*
 * The Python type of the C safety core (csrc/safety.h): _cltc.SafetyCore. It exists so that the
 * C decisions can be run against liquid_control/core/safety.py on the same arbitrary sequences
 * (test_native_safety.py); liquid_control.core.native.NativeSafetyCore wraps it with the
 * Python core's types. Included by _cltc.c (uses its buffer helpers).
 *
 *   SafetyCore(config, space, period_s)
 *       config: (sensor_timeout_s, resume_after_fresh_samples, safe_action (0 zero, 1 hold,
 *                2 spec), reset_on_resume, max_action_rate, blend_s, max_dt_s, use_measured_dt,
 *                watchdog_timeout_s)
 *       space:  (low, high, zero, spec_safe or None, position (float64 0/1), feedback (int64),
 *                action_lo, action_hi, observation_lo, observation_hi)
 *   .decide(now_s, wall_s, received_s[T] (NaN: none), counts[T] (int64), raw[S] or None,
 *           estop (-1, 0, 1), enabled, reset_requested) -> None, or (dt, reset) to step
 *   .finish(raw_action[M] or None, state_ok, action_out[M])
 *           -> (publish, commanding, reasons, events, dt, steps, reset_policy)
 *   .set_config(config) .set_space(space) .restart() .safe_action(out[M])
 *   .latch -> (kind, index, value)
 */
#ifndef LIQUID_CONTROL_SAFETY_PY_H
#define LIQUID_CONTROL_SAFETY_PY_H
#include "safety.h"

typedef struct {
    PyObject_HEAD
    sc_core core;
    double *mem;     /* low high zero spec_safe position(as 0/1) act_lo act_hi (m each), obs_lo
                        obs_hi (s each), prev fade_start (m each) */
    uint8_t *pos;    /* m */
    int64_t *fb;     /* m */
    sc_input in;     /* the input of the last decide (finish reads raw and now_s from it) */
    double *raw;     /* s: a copy of the last raw observation */
    double *recv;    /* SC_MAX_TOPICS */
    int64_t *counts; /* SC_MAX_TOPICS */
} SafetyObject;

static void Safety_dealloc(SafetyObject *self) {
    free(self->mem);
    free(self->pos);
    free(self->fb);
    free(self->raw);
    free(self->recv);
    free(self->counts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int safety_config(PyObject *cfg, sc_config *out) {
    long long resume;
    int mode, reset_on_resume, measured;
    if (!PyArg_ParseTuple(cfg, "dLipdddpd", &out->sensor_timeout_s, &resume, &mode,
                          &reset_on_resume, &out->max_action_rate, &out->blend_s, &out->max_dt_s,
                          &measured, &out->watchdog_timeout_s))
        return -1;
    if (mode < SC_ZERO || mode > SC_SPEC || resume < 1) {
        PyErr_SetString(PyExc_ValueError, "SafetyCore config: bad safe_action or resume count");
        return -1;
    }
    out->resume_after_fresh_samples = resume;
    out->safe_action = mode;
    out->reset_on_resume = reset_on_resume;
    out->use_measured_dt = measured;
    return 0;
}

/* Copy a space tuple into self's memory (allocated on first use; m and s may not change). */
static int safety_space(SafetyObject *self, PyObject *space) {
    PyObject *o[10];
    if (!PyArg_ParseTuple(space, "OOOOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                          &o[7], &o[8], &o[9]))
        return -1;
    buf_t b;
    if (get_buf(o[0], &b, "low", 'd', -1, 0) < 0) { release(&b, 1); return -1; }
    Py_ssize_t m = b.view.len / 8;
    release(&b, 1);
    if (get_buf(o[8], &b, "observation_lo", 'd', -1, 0) < 0) { release(&b, 1); return -1; }
    Py_ssize_t s = b.view.len / 8;
    release(&b, 1);
    if (m < 1 || s < 1) {
        PyErr_SetString(PyExc_ValueError, "SafetyCore space: expected m >= 1 actions, s >= 1 observations");
        return -1;
    }
    if (self->mem && (m != self->core.space.m || s != self->core.space.s)) {
        PyErr_SetString(PyExc_ValueError, "SafetyCore.set_space: the sizes of the space changed");
        return -1;
    }
    if (!self->mem) {
        self->mem = calloc((size_t)(9 * m + 2 * s), sizeof(double));
        self->pos = calloc((size_t)m, 1);
        self->fb = calloc((size_t)m, sizeof(int64_t));
        self->raw = calloc((size_t)s, sizeof(double));
        self->recv = calloc(SC_MAX_TOPICS, sizeof(double));
        self->counts = calloc(SC_MAX_TOPICS, sizeof(int64_t));
        if (!self->mem || !self->pos || !self->fb || !self->raw || !self->recv || !self->counts) {
            PyErr_NoMemory();
            return -1;
        }
    }
    double *d = self->mem;
    double *low = d, *high = d + m, *zero = d + 2 * m, *spec = d + 3 * m, *posd = d + 4 * m;
    double *alo = d + 5 * m, *ahi = d + 6 * m, *olo = d + 7 * m, *ohi = d + 7 * m + s;
    if (copy_items(low, o[0], "low", 'd', m) < 0 || copy_items(high, o[1], "high", 'd', m) < 0 ||
        copy_items(zero, o[2], "zero", 'd', m) < 0 ||
        (o[3] != Py_None && copy_items(spec, o[3], "spec_safe", 'd', m) < 0) ||
        copy_items(posd, o[4], "position", 'd', m) < 0 ||
        copy_items(self->fb, o[5], "feedback", 'q', m) < 0 ||
        copy_items(alo, o[6], "action_lo", 'd', m) < 0 ||
        copy_items(ahi, o[7], "action_hi", 'd', m) < 0 ||
        copy_items(olo, o[8], "observation_lo", 'd', s) < 0 ||
        copy_items(ohi, o[9], "observation_hi", 'd', s) < 0)
        return -1;
    for (Py_ssize_t j = 0; j < m; j++) {
        self->pos[j] = posd[j] != 0.0;
        if (self->fb[j] >= s) {
            PyErr_SetString(PyExc_ValueError, "SafetyCore space: a feedback index is out of range");
            return -1;
        }
    }
    sc_space sp = {(int)m, (int)s, low, high, zero, o[3] != Py_None ? spec : NULL, self->pos,
                   self->fb, alo, ahi, olo, ohi};
    if (!self->core.prev) { /* first time */
        self->core.space = sp;
        self->core.prev = d + 7 * m + 2 * s;
        self->core.fade_start = d + 8 * m + 2 * s;
    } else {
        sc_set_policy(&self->core, &sp);
    }
    return 0;
}

static int Safety_init(SafetyObject *self, PyObject *args, PyObject *kwds) {
    PyObject *cfg, *space;
    double period;
    if (!PyArg_ParseTuple(args, "O!O!d", &PyTuple_Type, &cfg, &PyTuple_Type, &space, &period))
        return -1;
    if (self->mem) {
        PyErr_SetString(PyExc_RuntimeError, "SafetyCore: already initialised");
        return -1;
    }
    if (!(period > 0) || !isfinite(period)) {
        PyErr_Format(PyExc_ValueError, "period_s: expected > 0, got %g", period);
        return -1;
    }
    memset(&self->core, 0, sizeof self->core);
    if (safety_config(cfg, &self->core.cfg) < 0 || safety_space(self, space) < 0) return -1;
    self->core.period_s = period;
    sc_restart(&self->core);
    self->core.latch = SC_LATCH_NONE;
    return 0;
}

static PyObject *Safety_decide(SafetyObject *self, PyObject *args) {
    double now, wall;
    PyObject *o_recv, *o_counts, *o_raw;
    int estop, enabled, reset;
    if (!PyArg_ParseTuple(args, "ddOOOipp", &now, &wall, &o_recv, &o_counts, &o_raw, &estop,
                          &enabled, &reset))
        return NULL;
    buf_t b;
    if (get_buf(o_recv, &b, "received_s", 'd', -1, 0) < 0) { release(&b, 1); return NULL; }
    Py_ssize_t topics = b.view.len / 8;
    if (topics > SC_MAX_TOPICS) {
        release(&b, 1);
        PyErr_Format(PyExc_ValueError, "SafetyCore: at most %d input topics", SC_MAX_TOPICS);
        return NULL;
    }
    memcpy(self->recv, b.view.buf, (size_t)b.view.len);
    release(&b, 1);
    if (copy_items(self->counts, o_counts, "counts", 'q', topics) < 0) return NULL;
    if (o_raw != Py_None && copy_items(self->raw, o_raw, "raw", 'd', self->core.space.s) < 0)
        return NULL;
    sc_input in = {now, wall, (int)topics, self->recv, self->counts,
                   o_raw != Py_None ? self->raw : NULL, estop < 0 ? -1 : estop > 0, enabled,
                   reset};
    self->in = in;
    double dt = 0;
    int do_reset = 0;
    if (!sc_decide(&self->core, &self->in, &dt, &do_reset)) Py_RETURN_NONE;
    return Py_BuildValue("(dO)", dt, do_reset ? Py_True : Py_False);
}

static PyObject *Safety_finish(SafetyObject *self, PyObject *args) {
    PyObject *o_raw, *o_out;
    int state_ok;
    if (!PyArg_ParseTuple(args, "OpO", &o_raw, &state_ok, &o_out)) return NULL;
    const int m = self->core.space.m;
    buf_t b[2];
    memset(b, 0, sizeof b);
    if ((o_raw != Py_None && get_buf(o_raw, &b[0], "raw_action", 'd', m, 0) < 0) ||
        get_buf(o_out, &b[1], "action", 'd', m, 1) < 0) {
        release(b, 2);
        return NULL;
    }
    sc_result r;
    int reset = sc_finish(&self->core, &self->in, o_raw != Py_None ? (double *)b[0].view.buf : NULL,
                          state_ok, (double *)b[1].view.buf, &r);
    release(b, 2);
    return Py_BuildValue("(OOiidLO)", r.publish ? Py_True : Py_False,
                         r.commanding ? Py_True : Py_False, r.reasons, r.events, r.dt,
                         (long long)r.steps, reset ? Py_True : Py_False);
}

static PyObject *Safety_set_config(SafetyObject *self, PyObject *args) {
    PyObject *cfg;
    sc_config c;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &cfg) || safety_config(cfg, &c) < 0) return NULL;
    self->core.cfg = c;
    Py_RETURN_NONE;
}

static PyObject *Safety_set_space(SafetyObject *self, PyObject *args) {
    PyObject *space;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &space) || safety_space(self, space) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Safety_restart(SafetyObject *self, PyObject *unused) {
    sc_restart(&self->core);
    Py_RETURN_NONE;
}

static PyObject *Safety_safe_action(SafetyObject *self, PyObject *args) {
    PyObject *o_out;
    if (!PyArg_ParseTuple(args, "O", &o_out)) return NULL;
    buf_t b;
    if (get_buf(o_out, &b, "out", 'd', self->core.space.m, 1) < 0) { release(&b, 1); return NULL; }
    sc_safe_action(&self->core, (double *)b.view.buf);
    release(&b, 1);
    Py_RETURN_NONE;
}

static PyObject *Safety_latch(SafetyObject *self, void *closure) {
    return Py_BuildValue("(iid)", self->core.latch, self->core.latch_index, self->core.latch_value);
}

static PyMethodDef Safety_methods[] = {
    {"decide", (PyCFunction)Safety_decide, METH_VARARGS,
     "decide(now_s, wall_s, received_s, counts, raw|None, estop, enabled, reset_requested)"},
    {"finish", (PyCFunction)Safety_finish, METH_VARARGS, "finish(raw_action|None, state_ok, out)"},
    {"set_config", (PyCFunction)Safety_set_config, METH_VARARGS, "new settings"},
    {"set_space", (PyCFunction)Safety_set_space, METH_VARARGS, "a swap (sc_set_policy)"},
    {"restart", (PyCFunction)Safety_restart, METH_NOARGS, "activation"},
    {"safe_action", (PyCFunction)Safety_safe_action, METH_VARARGS, "the safe action now"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Safety_getset[] = {
    {"latch", (getter)Safety_latch, NULL, "(kind, index, value) of the latch (kind 0: none)", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject SafetyType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "liquid_control.core._cltc.SafetyCore",
    .tp_basicsize = sizeof(SafetyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The C safety core (csrc/safety.h), for parity tests against core/safety.py.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Safety_init,
    .tp_dealloc = (destructor)Safety_dealloc,
    .tp_methods = Safety_methods,
    .tp_getset = Safety_getset,
};

#endif
