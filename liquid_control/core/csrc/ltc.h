/*
 * The LTC network in C, header-only (static functions): the vectorisable exp and sigmoid, the
 * network of one policy (`ltc_net`) and its step. Included by the core's extension (_cltc.c)
 * and by the control tick (liquid_control/ros/_ctick.c), so both run the same code.
 * The equations are those of liquid_control/core/ltc.py (see _cltc.c).
 */
#ifndef LIQUID_CONTROL_LTC_H
#define LIQUID_CONTROL_LTC_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && !defined(__clang__)
#define LTC_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LTC_CLONES
#endif

/* ------------------------------------------------------------------------------------------ */
/* exp and sigmoid that vectorise                                                              */
/* ------------------------------------------------------------------------------------------ */
static inline double exp_d(double x) {
    x = x < -708.0 ? -708.0 : (x > 708.0 ? 708.0 : x);
    double n = floor(x * 1.4426950408889634 + 0.5);
    double r = x - n * 0.6931471803691238 - n * 1.9082149292705877e-10;
    double p = 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    /* 2^n from the bits of n + 1.5 * 2^52 (n sits in the low mantissa bits): 64-bit integer
     * add and shift only, which vectorise without AVX-512DQ's double->int64 conversion */
    double t = n + 6755399441055744.0;
    int64_t bits;
    memcpy(&bits, &t, sizeof bits);
    bits = (bits + 1023) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float exp_f(float x) {
    x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
    float n = floorf(x * 1.44269504f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* ------------------------------------------------------------------------------------------ */
/* the network                                                                                  */
/* ------------------------------------------------------------------------------------------ */
typedef struct {
    int n, m, s, k, ks, unfolds;
    double eps;
    int64_t *src, *dst, *ssrc, *sdst;
    double *wn, *wd, *sigma, *mu;       /* K recurrent synapses */
    double *swn, *swd, *ssigma, *smu;   /* Ks sensory synapses */
    double *glvl, *gl, *cm;             /* N: gleak vleak, gleak, cm */
    double *in_w, *in_b;                /* S: input affine map */
    double *out_w, *out_b;              /* M: output affine map */
    double *mean, *inv_std;             /* S: the policy's normaliser */
    double *scale, *offset, *low, *high; /* M: network output -> action, limits */
    int64_t *row, *srow;                /* N+1: synapses of neuron j are row[j] .. row[j+1]-1 */
    /* work buffers for one sample */
    double *xm, *zs, *a, *b, *num, *den, *z, *s_syn;
} ltc_net;

/* One control step of one sample: xm (S, already input-mapped), v (N) in place. The synapse
 * loops are vector loops (gathers of the source potentials); the sums into the destination
 * neurons are scalar. */
LTC_CLONES
static void ltc_step(const ltc_net *net, const double *xm, double *v, double elapsed,
                     double *restrict a, double *restrict b, double *restrict num,
                     double *restrict den, double *restrict z, double *restrict zs) {
    (void)num;
    (void)den;
    const int n = net->n, k = net->k, ks = net->ks, U = net->unfolds;
    const double inv_h = (double)U / elapsed;
    const int64_t *restrict src = net->src, *restrict ssrc = net->ssrc;
    const double *restrict sigma = net->sigma, *restrict mu = net->mu;
    const double *restrict wn = net->wn, *restrict wd = net->wd;
    const double *restrict ssigma = net->ssigma, *restrict smu = net->smu;
    const double *restrict cm = net->cm;
    for (int j = 0; j < n; j++) {
        a[j] = net->glvl[j];
        b[j] = cm[j] * inv_h + net->gl[j] + net->eps;
    }
#pragma omp simd
    for (int q = 0; q < ks; q++)
        zs[q] = 1.0 / (1.0 + exp_d(-ssigma[q] * (xm[ssrc[q]] - smu[q])));
    const int64_t *restrict row = net->row, *restrict srow = net->srow;
    for (int j = 0; j < n; j++) {
        double sa = 0.0, sb = 0.0;
        for (int64_t q = srow[j]; q < srow[j + 1]; q++) {
            sa += zs[q] * net->swn[q];
            sb += zs[q] * net->swd[q];
        }
        a[j] += sa;
        b[j] += sb;
    }
    for (int u = 0; u < U; u++) {
#pragma omp simd
        for (int q = 0; q < k; q++)
            z[q] = 1.0 / (1.0 + exp_d(-sigma[q] * (v[src[q]] - mu[q])));
        for (int j = 0; j < n; j++) {  /* synapses grouped by destination (group_by_destination) */
            double sn = 0.0, sd = 0.0;
            for (int64_t q = row[j]; q < row[j + 1]; q++) {
                sn += z[q] * wn[q];
                sd += z[q] * wd[q];
            }
            v[j] = (a[j] + cm[j] * inv_h * v[j] + sn) / (b[j] + sd);
        }
    }
}

/* The whole robot step: normalise, input map, LTC, output map, scale, clip. */
static void policy_step(const ltc_net *net, const double *obs, double *v, double elapsed,
                        double *action, int clip, double *xm, double *a, double *b, double *num,
                        double *den, double *z, double *zs) {
    for (int i = 0; i < net->s; i++)
        xm[i] = (obs[i] - net->mean[i]) * net->inv_std[i] * net->in_w[i] + net->in_b[i];
    ltc_step(net, xm, v, elapsed, a, b, num, den, z, zs);
    for (int j = 0; j < net->m; j++) {
        double y = net->offset[j] + net->scale[j] * (v[j] * net->out_w[j] + net->out_b[j]);
        if (clip) y = y < net->low[j] ? net->low[j] : (y > net->high[j] ? net->high[j] : y);
        action[j] = y;
    }
}

/* What the Net capsule holds (Net.capsule()): the network and the step compiled in _cltc, so
 * the compiled control tick runs the very same machine code as Policy.step. */
typedef void (*policy_step_fn)(const ltc_net *, const double *, double *, double, double *, int,
                               double *, double *, double *, double *, double *, double *,
                               double *);
typedef struct {
    ltc_net *net;
    policy_step_fn step;
} ltc_handle;
#define LTC_HANDLE_CAPSULE "liquid_control.core._cltc.ltc_handle"

#endif
