/*
 * The fused LTC solver in C: the robot's step and the training kernel (float64 and float32).
 *
 * Same equations as liquid_control/core/ltc.py (Hasani et al. 2021, the fused semi-implicit
 * step, ncps numerics) over the existing synapses only. For each of U unfolds of a control step
 * with h = elapsed / U:
 *
 *     s_k = sigmoid(sigma_k (v_src(k) - mu_k))                           k: src(k) -> dst(k)
 *     v_j <- (cm_j/h v_j + a_j + sum_{dst(k)=j} s_k wn_k) / (b_j + sum_{dst(k)=j} s_k wd_k)
 *
 * with wn = w erev, wd = w, a = gleak vleak + the sensory numerator, b = cm/h + gleak + the
 * sensory denominator + eps (the sensory terms are the same sums over the sensory synapses, once
 * per step). Speed: the sigmoid is 1 / (1 + e^-z) with an exp of our own (range reduction and a
 * degree-12 polynomial, accurate to ~2 ulp) that the compiler vectorises, compiled for AVX-512,
 * AVX2 and the baseline and picked at load time; everything else is plain loops.
 *
 * The Python interface (no numpy C API: buffers only, so it builds against any numpy):
 *   Net(...)                      a network and its policy maps (normalisation, scaling, limits)
 *   Net.step(obs, state, elapsed, action, clip)            one robot step, state in place
 *   Net.rollout(obs[T,S], elapsed[T], state, action[T,M], states[T,N] | None)
 *   Net.step_batch(obs[B,S], state[B,N], elapsed[B], action[B,M])
 *   unfold_forward(...), unfold_backward(...)               the training kernel over (B, T)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "csrc/ltc.h"

#include "csrc/pybuf.h"

/* ------------------------------------------------------------------------------------------ */
/* the Net type                                                                                 */
/* ------------------------------------------------------------------------------------------ */
typedef struct {
    PyObject_HEAD
    ltc_net net;
    void *memory;
    ltc_handle handle;
} NetObject;

static void Net_dealloc(NetObject *self) {
    free(self->memory);
    Py_TYPE(self)->tp_free((PyObject *)self);
}


/* Reorder the synapses (src, dst and 4 value arrays) by destination neuron, keeping their order
 * within a neuron, and set row[j] .. row[j+1] to neuron j's synapses: each neuron's sums are
 * then one contiguous reduction. */
static int group_by_destination(int n, int k, int64_t *src, int64_t *dst, int64_t *row,
                                double *values[4]) {
    int64_t *order = malloc((size_t)(k > 0 ? k : 1) * sizeof(int64_t));
    double *tmp = malloc((size_t)(k > 0 ? k : 1) * sizeof(double));
    int64_t *itmp = malloc((size_t)(k > 0 ? k : 1) * sizeof(int64_t));
    if (!order || !tmp || !itmp) {
        free(order); free(tmp); free(itmp);
        return -1;
    }
    for (int j = 0; j <= n; j++) row[j] = 0;
    for (int q = 0; q < k; q++) row[dst[q] + 1]++;
    for (int j = 0; j < n; j++) row[j + 1] += row[j];
    {
        int64_t *next = malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
        if (!next) { free(order); free(tmp); free(itmp); return -1; }
        for (int j = 0; j < n; j++) next[j] = row[j];
        for (int q = 0; q < k; q++) order[next[dst[q]]++] = q;
        free(next);
    }
    for (int a = 0; a < 4; a++) {
        for (int q = 0; q < k; q++) tmp[q] = values[a][order[q]];
        memcpy(values[a], tmp, (size_t)k * sizeof(double));
    }
    for (int q = 0; q < k; q++) itmp[q] = src[order[q]];
    memcpy(src, itmp, (size_t)k * sizeof(int64_t));
    for (int q = 0; q < k; q++) itmp[q] = dst[order[q]];
    memcpy(dst, itmp, (size_t)k * sizeof(int64_t));
    free(order); free(tmp); free(itmp);
    return 0;
}

static const char *NET_FIELDS[] = {"src",     "dst",    "wn",    "wd",     "sigma",  "mu",
                                   "ssrc",    "sdst",   "swn",   "swd",    "ssigma", "smu",
                                   "glvl",    "gleak",  "cm",    "input_w", "input_b", "output_w",
                                   "output_b", "mean",  "inv_std", "scale", "offset", "low",
                                   "high",    NULL};

static int Net_init(NetObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"n", "m", "s", "unfolds", "epsilon", "arrays", NULL};
    int n, m, s, unfolds;
    double eps;
    PyObject *arrays;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iiiidO!", kwlist, &n, &m, &s, &unfolds, &eps,
                                     &PyDict_Type, &arrays))
        return -1;
    if (n < 1 || m < 1 || m > n || s < 1 || unfolds < 1 || !(eps > 0)) {
        PyErr_SetString(PyExc_ValueError, "Net: expected n >= m >= 1, s >= 1, unfolds >= 1, eps > 0");
        return -1;
    }
    PyObject *src = PyDict_GetItemString(arrays, "src");
    PyObject *ssrc = PyDict_GetItemString(arrays, "ssrc");
    for (int i = 0; NET_FIELDS[i]; i++)
        if (!PyDict_GetItemString(arrays, NET_FIELDS[i])) {
            PyErr_Format(PyExc_KeyError, "Net: arrays lacks '%s'", NET_FIELDS[i]);
            return -1;
        }
    Py_ssize_t k, ks;
    {
        buf_t b;
        if (get_buf(src, &b, "src", 'q', -1, 0) < 0) { release(&b, 1); return -1; }
        k = b.view.len / 8;
        release(&b, 1);
        if (get_buf(ssrc, &b, "ssrc", 'q', -1, 0) < 0) { release(&b, 1); return -1; }
        ks = b.view.len / 8;
        release(&b, 1);
    }
    size_t doubles = (size_t)(4 * k + 4 * ks + 3 * n + 4 * s + 6 * m) /* parameters and maps */
                     + (size_t)(s + ks + 4 * n + k);                     /* work buffers */
    size_t bytes = (size_t)(2 * k + 2 * ks + 2 * (n + 1)) * sizeof(int64_t) + doubles * sizeof(double);
    free(self->memory);
    self->memory = calloc(1, bytes + 64);
    if (!self->memory) {
        PyErr_NoMemory();
        return -1;
    }
    ltc_net *net = &self->net;
    net->n = n; net->m = m; net->s = s; net->k = (int)k; net->ks = (int)ks;
    net->unfolds = unfolds; net->eps = eps;
    int64_t *ip = (int64_t *)self->memory;
    net->src = ip; ip += k; net->dst = ip; ip += k; net->ssrc = ip; ip += ks; net->sdst = ip; ip += ks;
    net->row = ip; ip += n + 1; net->srow = ip; ip += n + 1;
    double *dp = (double *)ip;
#define TAKE(field, cnt) do { net->field = dp; dp += (cnt); } while (0)
    TAKE(wn, k); TAKE(wd, k); TAKE(sigma, k); TAKE(mu, k);
    TAKE(swn, ks); TAKE(swd, ks); TAKE(ssigma, ks); TAKE(smu, ks);
    TAKE(glvl, n); TAKE(gl, n); TAKE(cm, n);
    TAKE(in_w, s); TAKE(in_b, s); TAKE(out_w, m); TAKE(out_b, m);
    TAKE(mean, s); TAKE(inv_std, s);
    TAKE(scale, m); TAKE(offset, m); TAKE(low, m); TAKE(high, m);
    TAKE(xm, s); TAKE(zs, ks); TAKE(a, n); TAKE(b, n); TAKE(num, n); TAKE(den, n); TAKE(z, k);
#undef TAKE
    struct { const char *name; void *dst; char fmt; Py_ssize_t cnt; } spec[] = {
        {"src", net->src, 'q', k},      {"dst", net->dst, 'q', k},
        {"ssrc", net->ssrc, 'q', ks},   {"sdst", net->sdst, 'q', ks},
        {"wn", net->wn, 'd', k},        {"wd", net->wd, 'd', k},
        {"sigma", net->sigma, 'd', k},  {"mu", net->mu, 'd', k},
        {"swn", net->swn, 'd', ks},     {"swd", net->swd, 'd', ks},
        {"ssigma", net->ssigma, 'd', ks}, {"smu", net->smu, 'd', ks},
        {"glvl", net->glvl, 'd', n},    {"gleak", net->gl, 'd', n},
        {"cm", net->cm, 'd', n},        {"input_w", net->in_w, 'd', s},
        {"input_b", net->in_b, 'd', s}, {"output_w", net->out_w, 'd', m},
        {"output_b", net->out_b, 'd', m}, {"mean", net->mean, 'd', s},
        {"inv_std", net->inv_std, 'd', s}, {"scale", net->scale, 'd', m},
        {"offset", net->offset, 'd', m}, {"low", net->low, 'd', m},
        {"high", net->high, 'd', m},
    };
    for (size_t i = 0; i < sizeof(spec) / sizeof(spec[0]); i++)
        if (copy_items(spec[i].dst, PyDict_GetItemString(arrays, spec[i].name), spec[i].name,
                       spec[i].fmt, spec[i].cnt) < 0)
            return -1;
    for (Py_ssize_t q = 0; q < k; q++)
        if (net->src[q] < 0 || net->src[q] >= n || net->dst[q] < 0 || net->dst[q] >= n) {
            PyErr_SetString(PyExc_ValueError, "Net: a synapse index is out of range");
            return -1;
        }
    for (Py_ssize_t q = 0; q < ks; q++)
        if (net->ssrc[q] < 0 || net->ssrc[q] >= s || net->sdst[q] < 0 || net->sdst[q] >= n) {
            PyErr_SetString(PyExc_ValueError, "Net: a sensory synapse index is out of range");
            return -1;
        }
    if (group_by_destination(n, (int)k, net->src, net->dst, net->row,
                             (double *[]){net->wn, net->wd, net->sigma, net->mu}) < 0 ||
        group_by_destination(n, (int)ks, net->ssrc, net->sdst, net->srow,
                             (double *[]){net->swn, net->swd, net->ssigma, net->smu}) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int check_elapsed(double e) {
    if (!(e > 0) || !isfinite(e)) {
        PyErr_Format(PyExc_ValueError, "elapsed: expected a finite number > 0, got %g", e);
        return -1;
    }
    return 0;
}

/* step(obs, state, elapsed, action, clip) */
static PyObject *Net_step(NetObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "step(obs, state, elapsed, action, clip)");
        return NULL;
    }
    ltc_net *net = &self->net;
    double elapsed = PyFloat_AsDouble(args[2]);
    if (elapsed == -1.0 && PyErr_Occurred()) return NULL;
    if (check_elapsed(elapsed) < 0) return NULL;
    int clip = PyObject_IsTrue(args[4]);
    buf_t b[3];
    memset(b, 0, sizeof(b));
    if (get_buf(args[0], &b[0], "obs", 'd', net->s, 0) < 0 ||
        get_buf(args[1], &b[1], "state", 'd', net->n, 1) < 0 ||
        get_buf(args[3], &b[2], "action", 'd', net->m, 1) < 0) {
        release(b, 3);
        return NULL;
    }
    const double *obs = (const double *)b[0].view.buf;
    for (int i = 0; i < net->s; i++)
        if (!isfinite(obs[i])) {
            release(b, 3);
            PyErr_Format(PyExc_ValueError, "observation: NaN or Inf at [%d]", i);
            return NULL;
        }
    policy_step(net, obs, (double *)b[1].view.buf, elapsed, (double *)b[2].view.buf, clip,
                net->xm, net->a, net->b, net->num, net->den, net->z, net->zs);
    release(b, 3);
    Py_RETURN_NONE;
}

/* rollout(obs[T,S], elapsed[T], state[N], action[T,M], states[T,N] or None) */
static PyObject *Net_rollout(NetObject *self, PyObject *args) {
    PyObject *o_obs, *o_el, *o_state, *o_act, *o_states;
    if (!PyArg_ParseTuple(args, "OOOOO", &o_obs, &o_el, &o_state, &o_act, &o_states)) return NULL;
    ltc_net *net = &self->net;
    buf_t b[5];
    memset(b, 0, sizeof(b));
    if (get_buf(o_el, &b[1], "elapsed", 'd', -1, 0) < 0) { release(b, 5); return NULL; }
    Py_ssize_t T = b[1].view.len / 8;
    if (get_buf(o_obs, &b[0], "obs", 'd', T * net->s, 0) < 0 ||
        get_buf(o_state, &b[2], "state", 'd', net->n, 1) < 0 ||
        get_buf(o_act, &b[3], "action", 'd', T * net->m, 1) < 0 ||
        (o_states != Py_None && get_buf(o_states, &b[4], "states", 'd', T * net->n, 1) < 0)) {
        release(b, 5);
        return NULL;
    }
    const double *obs = b[0].view.buf, *el = b[1].view.buf;
    for (Py_ssize_t t = 0; t < T; t++)
        if (check_elapsed(el[t]) < 0) { release(b, 5); return NULL; }
    double *v = b[2].view.buf, *act = b[3].view.buf;
    double *states = o_states != Py_None ? (double *)b[4].view.buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < T; t++) {
        policy_step(net, obs + t * net->s, v, el[t], act + t * net->m, 1, net->xm, net->a, net->b,
                    net->num, net->den, net->z, net->zs);
        if (states) memcpy(states + t * net->n, v, (size_t)net->n * sizeof(double));
    }
    Py_END_ALLOW_THREADS
    release(b, 5);
    Py_RETURN_NONE;
}

/* step_batch(obs[B,S], state[B,N], elapsed[B], action[B,M]): B independent samples */
static PyObject *Net_step_batch(NetObject *self, PyObject *args) {
    PyObject *o_obs, *o_state, *o_el, *o_act;
    if (!PyArg_ParseTuple(args, "OOOO", &o_obs, &o_state, &o_el, &o_act)) return NULL;
    ltc_net *net = &self->net;
    buf_t b[4];
    memset(b, 0, sizeof(b));
    if (get_buf(o_el, &b[2], "elapsed", 'd', -1, 0) < 0) { release(b, 4); return NULL; }
    Py_ssize_t B = b[2].view.len / 8;
    if (get_buf(o_obs, &b[0], "obs", 'd', B * net->s, 0) < 0 ||
        get_buf(o_state, &b[1], "state", 'd', B * net->n, 1) < 0 ||
        get_buf(o_act, &b[3], "action", 'd', B * net->m, 1) < 0) {
        release(b, 4);
        return NULL;
    }
    const double *obs = b[0].view.buf, *el = b[2].view.buf;
    for (Py_ssize_t i = 0; i < B; i++)
        if (check_elapsed(el[i]) < 0) { release(b, 4); return NULL; }
    double *v = b[1].view.buf, *act = b[3].view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < B; i++)
        policy_step(net, obs + i * net->s, v + i * net->n, el[i], act + i * net->m, 1, net->xm,
                    net->a, net->b, net->num, net->den, net->z, net->zs);
    Py_END_ALLOW_THREADS
    release(b, 4);
    Py_RETURN_NONE;
}

/* capsule(): the network for the compiled control tick (liquid_control/ros/_ctick.c), which
 * keeps a reference to this Net while it steps it */
static PyObject *Net_capsule(NetObject *self, PyObject *unused) {
    self->handle.net = &self->net;
    self->handle.step = policy_step;
    return PyCapsule_New(&self->handle, LTC_HANDLE_CAPSULE, NULL);
}

static PyMethodDef Net_methods[] = {
    {"capsule", (PyCFunction)Net_capsule, METH_NOARGS,
     "the network as a capsule, for the compiled control tick"},
    {"step", (PyCFunction)(void (*)(void))Net_step, METH_FASTCALL,
     "step(obs, state, elapsed, action, clip): one robot step; state and action written in place"},
    {"rollout", (PyCFunction)Net_rollout, METH_VARARGS,
     "rollout(obs[T,S], elapsed[T], state[N], action[T,M], states[T,N] or None)"},
    {"step_batch", (PyCFunction)Net_step_batch, METH_VARARGS,
     "step_batch(obs[B,S], state[B,N], elapsed[B], action[B,M]): independent samples"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject NetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "liquid_control.core._cltc.Net",
    .tp_basicsize = sizeof(NetObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An LTC network with its policy maps (see liquid_control.core.native).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Net_init,
    .tp_dealloc = (destructor)Net_dealloc,
    .tp_methods = Net_methods,
};

#include "csrc/safety_py.h"
#include "csrc/cdr_py.h"

/* ------------------------------------------------------------------------------------------ */
/* the training kernel: the recurrent unfolds over (B, T), forward and backward               */
/* ------------------------------------------------------------------------------------------ */
/* Layout: the batch is the innermost (SIMD) axis. h0 (N, B); cm_t, a, b (T, N, B);
 * V (T*U+1, N, B) the state entering each unfold (V[0] = h0); D (T*U, N, B) the denominators.
 * Every synapse's work is the same for all samples, so each loop over [b0, b1) is a plain
 * vector loop: no gathers, no scatters. A thread takes a slice [b0, b1) of the batch. */
#define DEFINE_FORWARD(NAME, REAL, EXP)                                                         \
    LTC_CLONES                                                                                  \
    static void NAME(int T, int U, int N, int K, long B, long b0, long b1,                     \
                     const int64_t *src, const int64_t *dst, const REAL *wn, const REAL *wd,   \
                     const REAL *sigma, const REAL *mu, const REAL *h0, const REAL *cm_t,      \
                     const REAL *a, const REAL *b, REAL *V, REAL *D, REAL *num) {              \
        const size_t NB = (size_t)N * B;                                                        \
        for (int j = 0; j < N; j++)                                                             \
            memcpy(V + j * B + b0, h0 + j * B + b0, (size_t)(b1 - b0) * sizeof(REAL));          \
        for (int t = 0; t < T; t++) {                                                           \
            const REAL *cm = cm_t + t * NB, *at = a + t * NB, *bt = b + t * NB;                 \
            for (int u = 0; u < U; u++) {                                                       \
                size_t i = (size_t)t * U + u;                                                   \
                const REAL *v = V + i * NB;                                                     \
                REAL *vn = V + (i + 1) * NB, *den = D + i * NB;                                 \
                for (int j = 0; j < N; j++) {                                                   \
                    const size_t o = (size_t)j * B;                                             \
                    _Pragma("omp simd")                                                         \
                    for (long l = b0; l < b1; l++) {                                            \
                        num[o + l] = at[o + l] + cm[o + l] * v[o + l];                          \
                        den[o + l] = bt[o + l];                                                 \
                    }                                                                           \
                }                                                                               \
                for (int q = 0; q < K; q++) {                                                   \
                    const REAL *vs = v + src[q] * B;                                            \
                    REAL *nq = num + dst[q] * B, *dq = den + dst[q] * B;                        \
                    const REAL sg = sigma[q], m = mu[q], wnq = wn[q], wdq = wd[q];              \
                    _Pragma("omp simd")                                                         \
                    for (long l = b0; l < b1; l++) {                                            \
                        REAL z = (REAL)1 / ((REAL)1 + EXP(-sg * (vs[l] - m)));                  \
                        nq[l] += z * wnq;                                                       \
                        dq[l] += z * wdq;                                                       \
                    }                                                                           \
                }                                                                               \
                for (int j = 0; j < N; j++) {                                                   \
                    const size_t o = (size_t)j * B;                                             \
                    _Pragma("omp simd")                                                         \
                    for (long l = b0; l < b1; l++) vn[o + l] = num[o + l] / den[o + l];         \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
    }

DEFINE_FORWARD(unfold_forward_d, double, exp_d)
DEFINE_FORWARD(unfold_forward_f, float, exp_f)

/* The backward pass over [b0, b1). g_out (T, N, B): gradient of the state after each step.
 * Outputs: g_h0 (N, B), g_cm_t, g_a, g_b (T, N, B) for these samples; the parameter gradients
 * of these samples are added into acc (4 K: wn, wd, sigma, mu). gv, gn, gd: (N, B) work. */
#define DEFINE_BACKWARD(NAME, REAL, EXP)                                                        \
    LTC_CLONES                                                                                  \
    static void NAME(int T, int U, int N, int K, long B, long b0, long b1,                     \
                     const int64_t *src, const int64_t *dst, const REAL *wn, const REAL *wd,   \
                     const REAL *sigma, const REAL *mu, const REAL *cm_t, const REAL *V,       \
                     const REAL *D, const REAL *g_out, REAL *g_h0, REAL *g_cm_t, REAL *g_a,    \
                     REAL *g_b, REAL *acc, REAL *gv, REAL *gn, REAL *gd) {                      \
        const size_t NB = (size_t)N * B;                                                        \
        REAL *g_wn = acc, *g_wd = acc + K, *g_sigma = acc + 2 * K, *g_mu = acc + 3 * K;        \
        for (int j = 0; j < N; j++)                                                             \
            for (long l = b0; l < b1; l++) gv[(size_t)j * B + l] = 0;                           \
        for (int t = 0; t < T; t++)                                                             \
            for (int j = 0; j < N; j++)                                                         \
                for (long l = b0; l < b1; l++) {                                                \
                    size_t o = t * NB + (size_t)j * B + l;                                      \
                    g_cm_t[o] = 0; g_a[o] = 0; g_b[o] = 0;                                      \
                }                                                                               \
        for (long i = (long)T * U - 1; i >= 0; i--) {                                           \
            const int t = (int)(i / U), u = (int)(i % U);                                       \
            const REAL *v = V + (size_t)i * NB, *vn = V + (size_t)(i + 1) * NB,                 \
                       *den = D + (size_t)i * NB, *cm = cm_t + t * NB;                          \
            REAL *ga = g_a + t * NB, *gb = g_b + t * NB, *gc = g_cm_t + t * NB;                 \
            const REAL *go = g_out + t * NB;                                                    \
            for (int j = 0; j < N; j++) {                                                       \
                const size_t o = (size_t)j * B;                                                 \
                const int last = (u == U - 1);                                                  \
                _Pragma("omp simd")                                                             \
                for (long l = b0; l < b1; l++) {                                                \
                    REAL g = gv[o + l] + (last ? go[o + l] : (REAL)0);                          \
                    REAL n_ = g / den[o + l];      /* dL/dnum */                                \
                    REAL d_ = n_ * vn[o + l];      /* -dL/dden */                               \
                    gn[o + l] = n_;                                                             \
                    gd[o + l] = d_;                                                             \
                    ga[o + l] += n_;                                                            \
                    gb[o + l] -= d_;                                                            \
                    gc[o + l] += n_ * v[o + l];                                                 \
                    gv[o + l] = n_ * cm[o + l];                                                 \
                }                                                                               \
            }                                                                                   \
            for (int q = 0; q < K; q++) {                                                       \
                const REAL *vs = v + src[q] * B, *gnq = gn + dst[q] * B, *gdq = gd + dst[q] * B; \
                REAL *gvs = gv + src[q] * B;                                                    \
                const REAL sg = sigma[q], m = mu[q], wnq = wn[q], wdq = wd[q];                  \
                REAL s_wn = 0, s_wd = 0, s_sg = 0, s_mu = 0;                                    \
                _Pragma("omp simd reduction(+ : s_wn, s_wd, s_sg, s_mu)")                       \
                for (long l = b0; l < b1; l++) {                                                \
                    REAL dv = vs[l] - m;                                                        \
                    REAL z = (REAL)1 / ((REAL)1 + EXP(-sg * dv));                               \
                    REAL g_s = gnq[l] * wnq - gdq[l] * wdq;                                     \
                    REAL gz = g_s * z * ((REAL)1 - z);                                          \
                    s_wn += z * gnq[l];                                                         \
                    s_wd -= z * gdq[l];                                                         \
                    s_sg += gz * dv;                                                            \
                    s_mu -= gz * sg;                                                            \
                    gvs[l] += gz * sg;                                                          \
                }                                                                               \
                g_wn[q] += s_wn; g_wd[q] += s_wd; g_sigma[q] += s_sg; g_mu[q] += s_mu;          \
            }                                                                                   \
        }                                                                                       \
        for (int j = 0; j < N; j++)                                                             \
            for (long l = b0; l < b1; l++) g_h0[(size_t)j * B + l] = gv[(size_t)j * B + l];     \
    }

DEFINE_BACKWARD(unfold_backward_d, double, exp_d)
DEFINE_BACKWARD(unfold_backward_f, float, exp_f)

static int thread_count(int want, Py_ssize_t batch) {
    int t = want < 1 ? 1 : want;
    if (t > batch) t = (int)(batch > 0 ? batch : 1);
    return t;
}

/* The slice of the batch thread `tid` of `nt` takes: multiples of 16 lanes where possible. */
static void slice(Py_ssize_t B, int nt, int tid, long *b0, long *b1) {
    long chunk = (long)((B + nt - 1) / nt);
    chunk = (chunk + 15) / 16 * 16;
    *b0 = (long)tid * chunk;
    *b1 = *b0 + chunk;
    if (*b0 > B) *b0 = (long)B;
    if (*b1 > B) *b1 = (long)B;
}

/* Checked buffers of the kernel: every array with its item count. */
static int kernel_buffers(PyObject **objs, buf_t *bufs, const char **names, Py_ssize_t *counts,
                          const char *formats, const int *writable, int n) {
    for (int i = 0; i < n; i++)
        if (get_buf(objs[i], &bufs[i], names[i], formats[i], counts[i], writable[i]) < 0)
            return -1;
    return 0;
}

static int check_synapses(const int64_t *src, const int64_t *dst, Py_ssize_t K, Py_ssize_t N) {
    for (Py_ssize_t q = 0; q < K; q++)
        if (src[q] < 0 || src[q] >= N || dst[q] < 0 || dst[q] >= N) {
            PyErr_SetString(PyExc_ValueError, "a synapse index is out of range");
            return -1;
        }
    return 0;
}

/* unfold_forward(B, T, N, K, unfolds, h0[N,B], cm_t[T,N,B], a[T,N,B], b[T,N,B],
 *                wn, wd, sigma, mu [K], src, dst [K], V[T*U+1,N,B], D[T*U,N,B], threads)
 * float32 or float64 (all real arrays alike: the format of h0). */
static PyObject *py_unfold_forward(PyObject *mod, PyObject *args) {
    Py_ssize_t B, T, N, K;
    int U, threads;
    PyObject *o[13];
    if (!PyArg_ParseTuple(args, "nnnniOOOOOOOOOOOOi", &B, &T, &N, &K, &U, &o[0], &o[1], &o[2],
                          &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11],
                          &threads))
        return NULL;
    if (B < 1 || T < 1 || N < 1 || K < 0 || U < 1) {
        PyErr_SetString(PyExc_ValueError, "unfold_forward: expected B, T, N, unfolds >= 1");
        return NULL;
    }
    buf_t b[12];
    memset(b, 0, sizeof(b));
    if (get_buf(o[0], &b[0], "h0", 'd', -1, 0) < 0) {
        PyErr_Clear();
        release(b, 12);
        if (get_buf(o[0], &b[0], "h0", 'f', -1, 0) < 0) { release(b, 12); return NULL; }
    }
    char r = b[0].view.itemsize == 8 ? 'd' : 'f';
    const char *names[] = {"h0", "cm_t", "a", "b", "wn", "wd", "sigma", "mu", "src", "dst", "V", "D"};
    Py_ssize_t TU = T * U;
    Py_ssize_t counts[] = {N * B, T * N * B, T * N * B, T * N * B, K, K, K, K, K, K,
                           (TU + 1) * N * B, TU * N * B};
    char formats[] = {r, r, r, r, r, r, r, r, 'q', 'q', r, r, 0};
    int writable[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1};
    release(b, 1);
    if (kernel_buffers(o, b, names, counts, formats, writable, 12) < 0 ||
        check_synapses(b[8].view.buf, b[9].view.buf, K, N) < 0) {
        release(b, 12);
        return NULL;
    }
    int nt = thread_count(threads, (B + 15) / 16);
    size_t isz = (size_t)b[0].view.itemsize;
    char *num = malloc((size_t)N * B * isz + 64);
    if (!num) { release(b, 12); return PyErr_NoMemory(); }
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int tid = 0; tid < nt; tid++) {
        long b0, b1;
        slice(B, nt, tid, &b0, &b1);
        if (b0 < b1) {
            if (r == 'd')
                unfold_forward_d((int)T, U, (int)N, (int)K, (long)B, b0, b1, b[8].view.buf,
                                 b[9].view.buf, b[4].view.buf, b[5].view.buf, b[6].view.buf,
                                 b[7].view.buf, b[0].view.buf, b[1].view.buf, b[2].view.buf,
                                 b[3].view.buf, b[10].view.buf, b[11].view.buf, (double *)num);
            else
                unfold_forward_f((int)T, U, (int)N, (int)K, (long)B, b0, b1, b[8].view.buf,
                                 b[9].view.buf, b[4].view.buf, b[5].view.buf, b[6].view.buf,
                                 b[7].view.buf, b[0].view.buf, b[1].view.buf, b[2].view.buf,
                                 b[3].view.buf, b[10].view.buf, b[11].view.buf, (float *)num);
        }
    }
    Py_END_ALLOW_THREADS
    free(num);
    release(b, 12);
    Py_RETURN_NONE;
}

/* unfold_backward(B, T, N, K, unfolds, V, D, cm_t, wn, wd, sigma, mu, src, dst, g_out[T,N,B],
 *                 g_h0[N,B], g_cm_t[T,N,B], g_a[T,N,B], g_b[T,N,B], g_params[4,K] (added to),
 *                 threads) */
static PyObject *py_unfold_backward(PyObject *mod, PyObject *args) {
    Py_ssize_t B, T, N, K;
    int U, threads;
    PyObject *o[16];
    if (!PyArg_ParseTuple(args, "nnnniOOOOOOOOOOOOOOOi", &B, &T, &N, &K, &U, &o[0], &o[1],
                          &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10], &o[11],
                          &o[12], &o[13], &o[14], &threads))
        return NULL;
    if (B < 1 || T < 1 || N < 1 || K < 0 || U < 1) {
        PyErr_SetString(PyExc_ValueError, "unfold_backward: expected B, T, N, unfolds >= 1");
        return NULL;
    }
    buf_t b[16];
    memset(b, 0, sizeof(b));
    if (get_buf(o[0], &b[0], "V", 'd', -1, 0) < 0) {
        PyErr_Clear();
        release(b, 16);
        if (get_buf(o[0], &b[0], "V", 'f', -1, 0) < 0) { release(b, 16); return NULL; }
    }
    char r = b[0].view.itemsize == 8 ? 'd' : 'f';
    release(b, 1);
    Py_ssize_t TU = T * U, TNB = T * N * B;
    const char *names[] = {"V", "D", "cm_t", "wn", "wd", "sigma", "mu", "src", "dst", "g_out",
                           "g_h0", "g_cm_t", "g_a", "g_b", "g_params"};
    Py_ssize_t counts[] = {(TU + 1) * N * B, TU * N * B, TNB, K, K, K, K, K, K, TNB,
                           N * B, TNB, TNB, TNB, 4 * K};
    char formats[] = {r, r, r, r, r, r, r, 'q', 'q', r, r, r, r, r, r, 0};
    int writable[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1};
    if (kernel_buffers(o, b, names, counts, formats, writable, 15) < 0 ||
        check_synapses(b[7].view.buf, b[8].view.buf, K, N) < 0) {
        release(b, 16);
        return NULL;
    }
    int nt = thread_count(threads, (B + 15) / 16);
    size_t isz = (size_t)b[0].view.itemsize;
    size_t NB = (size_t)N * B;
    /* shared (N, B) work arrays (each thread writes its own lanes) and per-thread 4K sums */
    char *work = calloc(1, (3 * NB + (size_t)nt * 4 * K) * isz + 64);
    if (!work) { release(b, 16); return PyErr_NoMemory(); }
    Py_BEGIN_ALLOW_THREADS
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int tid = 0; tid < nt; tid++) {
        long b0, b1;
        slice(B, nt, tid, &b0, &b1);
        if (b0 < b1) {
            if (r == 'd') {
                double *w = (double *)work;
                unfold_backward_d((int)T, U, (int)N, (int)K, (long)B, b0, b1, b[7].view.buf,
                                  b[8].view.buf, b[3].view.buf, b[4].view.buf, b[5].view.buf,
                                  b[6].view.buf, b[2].view.buf, b[0].view.buf, b[1].view.buf,
                                  b[9].view.buf, b[10].view.buf, b[11].view.buf, b[12].view.buf,
                                  b[13].view.buf, w + 3 * NB + (size_t)tid * 4 * K, w, w + NB,
                                  w + 2 * NB);
            } else {
                float *w = (float *)work;
                unfold_backward_f((int)T, U, (int)N, (int)K, (long)B, b0, b1, b[7].view.buf,
                                  b[8].view.buf, b[3].view.buf, b[4].view.buf, b[5].view.buf,
                                  b[6].view.buf, b[2].view.buf, b[0].view.buf, b[1].view.buf,
                                  b[9].view.buf, b[10].view.buf, b[11].view.buf, b[12].view.buf,
                                  b[13].view.buf, w + 3 * NB + (size_t)tid * 4 * K, w, w + NB,
                                  w + 2 * NB);
            }
        }
    }
    Py_END_ALLOW_THREADS
    for (int t = 0; t < nt; t++)
        for (Py_ssize_t q = 0; q < 4 * K; q++) {
            if (r == 'd')
                ((double *)b[14].view.buf)[q] += ((double *)work)[3 * NB + (size_t)t * 4 * K + q];
            else
                ((float *)b[14].view.buf)[q] += ((float *)work)[3 * NB + (size_t)t * 4 * K + q];
        }
    free(work);
    release(b, 16);
    Py_RETURN_NONE;
}

static PyObject *py_openmp(PyObject *mod, PyObject *unused) {
#ifdef _OPENMP
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef module_methods[] = {
    {"unfold_forward", py_unfold_forward, METH_VARARGS,
     "unfold_forward(B, T, N, K, unfolds, h0, cm_t, a, b, wn, wd, sigma, mu, src, dst, V, D, "
     "threads): batch-innermost layout, see _cltc.c"},
    {"unfold_backward", py_unfold_backward, METH_VARARGS,
     "unfold_backward(B, T, N, K, unfolds, V, D, cm_t, wn, wd, sigma, mu, src, dst, g_out, g_h0, "
     "g_cm_t, g_a, g_b, g_params, threads): batch-innermost layout, see _cltc.c"},
    {"openmp", py_openmp, METH_NOARGS, "whether the kernel was built with OpenMP threads"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cltc",
                                    "The fused LTC solver in C (see _cltc.c).", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__cltc(void) {
    if (PyType_Ready(&NetType) < 0 || PyType_Ready(&SafetyType) < 0 ||
        PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&NetType);
    if (PyModule_AddObject(m, "Net", (PyObject *)&NetType) < 0) {
        Py_DECREF(&NetType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "InputReader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&SafetyType);
    if (PyModule_AddObject(m, "SafetyCore", (PyObject *)&SafetyType) < 0) {
        Py_DECREF(&SafetyType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
