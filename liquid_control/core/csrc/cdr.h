/*
 * Input messages in C: serialized (CDR) bytes -> the observation values of one input topic,
 * validated as liquid_control/core/message_types.py validates them, for the compiled control
 * tick. Header-only, no ROS headers (plain bytes in, doubles out).
 *
 * Two parts, both prepared in Python at configure (liquid_control/ros/native_tick.py):
 *
 * 1. A decode program walks the whole message as liquid_control/ros/wire.py does (every field,
 *    every length, string terminators, UTF-8, bounds), so a message that the Python decoder calls
 *    malformed is malformed here too. Ops (6 int32 each):
 *      SCALAR  size dtype reg                 a number (into register reg, -1: skipped)
 *      STRING  bound                          a string, checked
 *      NUMSEQ  size dtype fixed bound seq     numbers: an array (fixed >= 0) or a sequence
 *                                             (fixed -1, bound -1 = unbounded), noted in seq
 *      STRSEQ  fixed bound string_bound keep  strings (keep 1: their positions are noted)
 *      REPEAT  fixed bound body min_size      the next `body` ops once per element
 * 2. A reader (the message table's reader for the type) takes the registers and noted sequences
 *    to the topic's raw values: FIELDS (numbers at paths), MULTIARRAY (data[index]), JOINTS
 *    (JointState by joint name, with the duplicate/missing/length checks and a plan cached per
 *    name list), LASER (sector minima, +inf = range_max). Then the sin/cos transforms.
 *    FIELDS reads value q from register index[q].
 *
 * Reasons (as MessageRejected.reason): see CDR_* below. Test: test_native_tick.py runs random and
 * corrupted messages of every input type through this and through the Python path.
 */
#ifndef LIQUID_CONTROL_CDR_H
#define LIQUID_CONTROL_CDR_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { CDR_OK = 0, CDR_MALFORMED, CDR_NON_FINITE, CDR_WRONG_LENGTH, CDR_MISSING_JOINT,
       CDR_DUPLICATE_JOINT, CDR_TOO_LARGE, CDR_QUARANTINED, CDR_REASONS };
static const char *const CDR_REASON[CDR_REASONS] = {
    "ok", "malformed", "non_finite", "wrong_length", "missing_joint", "duplicate_joint",
    "too_large", "quarantined"};

enum { OP_SCALAR = 1, OP_STRING, OP_NUMSEQ, OP_STRSEQ, OP_REPEAT };
/* dtypes */
enum { DT_BOOL = 0, DT_U8, DT_I8, DT_U16, DT_I16, DT_U32, DT_I32, DT_U64, DT_I64, DT_F32, DT_F64 };
enum { RD_FIELDS = 1, RD_MULTIARRAY, RD_JOINTS, RD_LASER };
enum { TF_IDENTITY = 0, TF_SIN, TF_COS };

#define CDR_REGS 64
#define CDR_SEQS 4
#define CDR_ORIGIN 4 /* alignment counts from the end of the encapsulation header */

typedef struct { int32_t op, a, b, c, d, e; } cdr_op;

typedef struct {
    int64_t off, n;
    int dtype;
} cdr_seq;

typedef struct {
    double reg[CDR_REGS];
    cdr_seq seq[CDR_SEQS];
    int64_t str_n, str_cap;   /* the kept strings */
    int64_t *str_off;         /* first byte of each */
    int64_t *str_len;         /* without the NUL */
    int64_t names_start, names_end; /* bytes of the kept string sequence (count included) */
    char detail[192];
} cdr_ctx;

static inline int64_t cdr_align(int64_t off, int64_t size) {
    int64_t r = (off - CDR_ORIGIN) % size;
    return r ? off + (size - r) : off;
}

/* Strict UTF-8 (what Python's bytes.decode('utf-8') accepts). */
static int cdr_utf8_ok(const uint8_t *s, int64_t n) {
    int64_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        int need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) { need = 2; lo = 0xA0; }
        else if (c >= 0xE1 && c <= 0xEC) need = 2;
        else if (c == 0xED) { need = 2; hi = 0x9F; }
        else if (c >= 0xEE && c <= 0xEF) need = 2;
        else if (c == 0xF0) { need = 3; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else if (c == 0xF4) { need = 3; hi = 0x8F; }
        else return 0;
        if (i + need >= n) return 0; /* truncated sequence */
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (int k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
        i += need + 1;
    }
    return 1;
}

static int cdr_fail(cdr_ctx *x, const char *fmt, int64_t a, int64_t b) {
    snprintf(x->detail, sizeof x->detail, fmt, (long long)a, (long long)b);
    return CDR_MALFORMED;
}

static int cdr_u32(const uint8_t *buf, int64_t len, int64_t *off, int64_t *out, cdr_ctx *x) {
    int64_t o = cdr_align(*off, 4);
    if (o + 4 > len) return cdr_fail(x, "a length field at byte %lld lies past the end (%lld bytes)", o, len);
    uint32_t v;
    memcpy(&v, buf + o, 4);
    *out = v;
    *off = o + 4;
    return CDR_OK;
}

static int cdr_count(const uint8_t *buf, int64_t len, int64_t *off, int64_t elem, int64_t bound,
                     int64_t *n, cdr_ctx *x) {
    int r = cdr_u32(buf, len, off, n, x);
    if (r) return r;
    if (bound >= 0 && *n > bound) return cdr_fail(x, "a sequence holds %lld elements, its bound is %lld", *n, bound);
    if (*n * elem > len - *off) return cdr_fail(x, "a sequence of %lld elements does not fit in the remaining bytes%.0lld", *n, 0);
    return CDR_OK;
}

static double cdr_number(const uint8_t *p, int dtype) {
    switch (dtype) {
    case DT_BOOL: return p[0] ? 1.0 : 0.0;
    case DT_U8: return (double)p[0];
    case DT_I8: return (double)(int8_t)p[0];
    case DT_U16: { uint16_t v; memcpy(&v, p, 2); return (double)v; }
    case DT_I16: { int16_t v; memcpy(&v, p, 2); return (double)v; }
    case DT_U32: { uint32_t v; memcpy(&v, p, 4); return (double)v; }
    case DT_I32: { int32_t v; memcpy(&v, p, 4); return (double)v; }
    case DT_U64: { uint64_t v; memcpy(&v, p, 8); return (double)v; }
    case DT_I64: { int64_t v; memcpy(&v, p, 8); return (double)v; }
    case DT_F32: { float v; memcpy(&v, p, 4); return (double)v; }
    default: { double v; memcpy(&v, p, 8); return v; }
    }
}

static int cdr_string(const uint8_t *buf, int64_t len, int64_t *off, int64_t bound, int64_t *start,
                      int64_t *slen, cdr_ctx *x) {
    int64_t n;
    int r = cdr_u32(buf, len, off, &n, x);
    if (r) return r;
    int64_t o = *off;
    if (n == 0 || o + n > len || buf[o + n - 1] != 0)
        return cdr_fail(x, "a string at byte %lld is not NUL-terminated within the message%.0lld", o, 0);
    if (bound >= 0 && n - 1 > bound)
        return cdr_fail(x, "a string of %lld characters exceeds its bound %lld", n - 1, bound);
    if (!cdr_utf8_ok(buf + o, n - 1)) return cdr_fail(x, "a string at byte %lld is not UTF-8%.0lld", o, 0);
    *start = o;
    *slen = n - 1;
    *off = o + n;
    return CDR_OK;
}

/* Run ops[0 .. nops) once. */
static int cdr_run(const cdr_op *ops, int nops, const uint8_t *buf, int64_t len, int64_t *off,
                   cdr_ctx *x) {
    for (int i = 0; i < nops; i++) {
        const cdr_op *op = &ops[i];
        int r = CDR_OK;
        switch (op->op) {
        case OP_SCALAR: {
            int64_t o = cdr_align(*off, op->a);
            if (o + op->a > len) return cdr_fail(x, "a field at byte %lld lies past the end (%lld bytes)", o, len);
            if (op->c >= 0) x->reg[op->c] = cdr_number(buf + o, op->b);
            *off = o + op->a;
            break;
        }
        case OP_STRING: {
            int64_t s, n;
            r = cdr_string(buf, len, off, op->a, &s, &n, x);
            break;
        }
        case OP_NUMSEQ: {
            int64_t n = op->c;
            if (n < 0) r = cdr_count(buf, len, off, op->a, op->d, &n, x);
            if (r) return r;
            int64_t o = n ? cdr_align(*off, op->a) : *off;
            if (o + n * op->a > len) return cdr_fail(x, "%lld values at byte %lld run past the end", n, o);
            if (op->e >= 0) {
                x->seq[op->e].off = o;
                x->seq[op->e].n = n;
                x->seq[op->e].dtype = op->b;
            }
            *off = o + n * op->a;
            break;
        }
        case OP_STRSEQ: {
            int64_t n = op->a;
            int64_t start = *off;
            if (n < 0) r = cdr_count(buf, len, off, 5, op->b, &n, x);
            if (r) return r;
            if (op->d && n > x->str_cap) return cdr_fail(x, "%lld strings: more than fit in max_input_bytes%.0lld", n, 0);
            for (int64_t k = 0; k < n; k++) {
                int64_t s, sl;
                r = cdr_string(buf, len, off, op->c, &s, &sl, x);
                if (r) return r;
                if (op->d) { x->str_off[k] = s; x->str_len[k] = sl; }
            }
            if (op->d) { x->str_n = n; x->names_start = start; x->names_end = *off; }
            break;
        }
        case OP_REPEAT: {
            int64_t n = op->a;
            if (n < 0) r = cdr_count(buf, len, off, op->d, op->b, &n, x);
            if (r) return r;
            for (int64_t k = 0; k < n; k++) {
                r = cdr_run(ops + i + 1, op->c, buf, len, off, x);
                if (r) return r;
            }
            i += op->c;
            break;
        }
        default:
            return cdr_fail(x, "bad decode op %lld%.0lld", op->op, 0);
        }
        if (r) return r;
    }
    return CDR_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* readers                                                                                      */
/* ------------------------------------------------------------------------------------------ */
typedef struct {
    int kind, k;                 /* RD_*, number of values */
    const cdr_op *ops;
    int nops;
    int64_t *index;              /* MULTIARRAY: data index; LASER: sector index */
    int64_t *sectors;            /* LASER */
    int need;                    /* MULTIARRAY: values needed */
    int *field;                  /* JOINTS: 0 position, 1 velocity, 2 effort (= seq register) */
    const char **key;            /* JOINTS: joint names (UTF-8) */
    int64_t *key_len;
    int *transform;              /* TF_* per value */
    /* JOINTS: the plan of the last name list (bytes, then joint index per value) */
    uint8_t *plan_names;
    int64_t plan_len, plan_cap;
    int64_t *plan;
    int plan_ok;
    int32_t *table;              /* open addressing over the names: index or -1 */
    int64_t table_cap;
    int64_t *used;               /* slots used, to clear */
    cdr_ctx ctx;
} cdr_reader;

static uint64_t cdr_hash(const uint8_t *s, int64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (int64_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h;
}

static const char *const JOINT_FIELD[3] = {"position", "velocity", "effort"};

static int cdr_joint_plan(cdr_reader *r, const uint8_t *buf) {
    cdr_ctx *x = &r->ctx;
    int64_t n = x->str_n, used = 0;
    int64_t mask = r->table_cap - 1;
    int rc = CDR_OK;
    for (int64_t i = 0; i < n && rc == CDR_OK; i++) {
        const uint8_t *s = buf + x->str_off[i];
        int64_t sl = x->str_len[i];
        int64_t h = (int64_t)(cdr_hash(s, sl) & (uint64_t)mask);
        while (r->table[h] >= 0) {
            int64_t j = r->table[h];
            if (x->str_len[j] == sl && memcmp(buf + x->str_off[j], s, (size_t)sl) == 0) {
                snprintf(x->detail, sizeof x->detail, "joint '%.*s' appears twice in JointState.name",
                         (int)(sl < 80 ? sl : 80), (const char *)s);
                rc = CDR_DUPLICATE_JOINT;
                break;
            }
            h = (h + 1) & mask;
        }
        if (rc) break;
        r->table[h] = (int32_t)i;
        r->used[used++] = h;
    }
    for (int q = 0; q < r->k && rc == CDR_OK; q++) {
        const uint8_t *key = (const uint8_t *)r->key[q];
        int64_t kl = r->key_len[q];
        int64_t h = (int64_t)(cdr_hash(key, kl) & (uint64_t)mask);
        r->plan[q] = -1;
        while (r->table[h] >= 0) {
            int64_t j = r->table[h];
            if (x->str_len[j] == kl && memcmp(buf + x->str_off[j], key, (size_t)kl) == 0) {
                r->plan[q] = j;
                break;
            }
            h = (h + 1) & mask;
        }
        if (r->plan[q] < 0) {
            snprintf(x->detail, sizeof x->detail, "joint '%.*s' not in JointState.name (%lld names)",
                     (int)(kl < 80 ? kl : 80), (const char *)key, (long long)n);
            rc = CDR_MISSING_JOINT;
        }
    }
    for (int64_t u = 0; u < used; u++) r->table[r->used[u]] = -1;
    int64_t bytes = x->names_end - x->names_start;
    if (rc == CDR_OK && bytes <= r->plan_cap) {
        memcpy(r->plan_names, buf + x->names_start, (size_t)bytes);
        r->plan_len = bytes;
        r->plan_ok = 1;
    } else {
        r->plan_ok = 0;
    }
    return rc;
}

static double cdr_seq_value(const uint8_t *buf, const cdr_seq *q, int64_t i) {
    int size = q->dtype == DT_F32 ? 4 : 8;
    return cdr_number(buf + q->off + i * size, q->dtype);
}

/* bytes (with the 4-byte header) -> out[k]. Returns CDR_OK or a reason (detail in r->ctx). */
static int cdr_read(cdr_reader *r, const uint8_t *buf, int64_t len, double *out) {
    cdr_ctx *x = &r->ctx;
    x->detail[0] = 0;
    if (len > r->plan_cap) { /* max_input_bytes: rejected undecoded */
        snprintf(x->detail, sizeof x->detail, "%lld bytes, max_input_bytes is %lld", (long long)len,
                 (long long)r->plan_cap);
        return CDR_TOO_LARGE;
    }
    if (len < 4) return cdr_fail(x, "%lld bytes: shorter than the CDR header%.0lld", len, 0);
    if (buf[0] != 0 || buf[1] != 1)
        return cdr_fail(x, "encapsulation %lld %lld: only little-endian CDR (00 01) is decoded here", buf[0], buf[1]);
    for (int s = 0; s < CDR_SEQS; s++) { x->seq[s].n = -1; x->seq[s].off = 0; }
    x->str_n = 0;
    int64_t off = CDR_ORIGIN;
    int rc = cdr_run(r->ops, r->nops, buf, len, &off, x);
    if (rc) return rc;
    switch (r->kind) {
    case RD_FIELDS:
        for (int q = 0; q < r->k; q++) out[q] = x->reg[r->index[q]];
        break;
    case RD_MULTIARRAY: {
        const cdr_seq *d = &x->seq[0];
        if (d->n < r->need) {
            snprintf(x->detail, sizeof x->detail, "Float64MultiArray.data has %lld values, need %d",
                     (long long)d->n, r->need);
            return CDR_WRONG_LENGTH;
        }
        for (int q = 0; q < r->k; q++) out[q] = cdr_seq_value(buf, d, r->index[q]);
        break;
    }
    case RD_JOINTS: {
        int64_t bytes = x->names_end - x->names_start;
        if (!(r->plan_ok && bytes == r->plan_len &&
              memcmp(r->plan_names, buf + x->names_start, (size_t)bytes) == 0)) {
            rc = cdr_joint_plan(r, buf);
            if (rc) return rc;
        }
        for (int f = 2; f >= 0; f--) { /* sorted field names: effort, position, velocity */
            int g = f == 2 ? 2 : (f == 1 ? 0 : 1);
            int wanted = 0;
            for (int q = 0; q < r->k; q++) wanted |= r->field[q] == g;
            if (wanted && x->seq[g].n != x->str_n) {
                snprintf(x->detail, sizeof x->detail, "JointState.%s has %lld values for %lld names",
                         JOINT_FIELD[g], (long long)x->seq[g].n, (long long)x->str_n);
                return CDR_WRONG_LENGTH;
            }
        }
        for (int q = 0; q < r->k; q++) out[q] = cdr_seq_value(buf, &x->seq[r->field[q]], r->plan[q]);
        break;
    }
    case RD_LASER: {
        const cdr_seq *d = &x->seq[0];
        double rmax = x->reg[0];
        if (d->n == 0) { snprintf(x->detail, sizeof x->detail, "LaserScan has no ranges"); return CDR_WRONG_LENGTH; }
        if (!isfinite(rmax) || rmax <= 0) {
            snprintf(x->detail, sizeof x->detail, "LaserScan.range_max is %g", rmax);
            return CDR_NON_FINITE;
        }
        for (int64_t i = 0; i < d->n; i++) {
            double v = cdr_seq_value(buf, d, i);
            if (isnan(v) || (isinf(v) && v < 0)) {
                snprintf(x->detail, sizeof x->detail, "LaserScan.ranges has NaN or -inf");
                return CDR_NON_FINITE;
            }
        }
        for (int q = 0; q < r->k; q++) {
            int64_t n = d->n, i = r->index[q], s = r->sectors[q];
            int64_t lo = (i * n) / s, hi = ((i + 1) * n) / s;
            if (hi < lo + 1) hi = lo + 1;
            double m = INFINITY;
            for (int64_t b = lo; b < hi; b++) {
                double v = cdr_seq_value(buf, d, b);
                v = v < rmax ? v : rmax;
                if (v < m) m = v;
            }
            out[q] = m;
        }
        for (int q = 0; q < r->k; q++) /* transforms, then done (no finite check: as Python) */
            if (r->transform[q]) out[q] = r->transform[q] == TF_SIN ? sin(out[q]) : cos(out[q]);
        return CDR_OK;
    }
    default:
        return cdr_fail(x, "bad reader kind %lld%.0lld", r->kind, 0);
    }
    for (int q = 0; q < r->k; q++)
        if (!isfinite(out[q])) {
            snprintf(x->detail, sizeof x->detail, "values read: NaN or Inf at [%d]", q);
            return CDR_NON_FINITE;
        }
    for (int q = 0; q < r->k; q++)
        if (r->transform[q]) out[q] = r->transform[q] == TF_SIN ? sin(out[q]) : cos(out[q]);
    return CDR_OK;
}

#endif
