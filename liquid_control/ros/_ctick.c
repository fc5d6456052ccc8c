/*
 * The compiled control tick: the control process's loop in one C thread that never takes the
 * Python interpreter lock, so Python (diagnostics, IPC, the garbage collector, any other thread)
 * cannot delay a tick. Built by setuptools where the ROS 2 C headers are (a ROS install's
 * include/, or the pip wheels' <venv>/include/); liquid_control/ros/native_tick.py prepares it
 * and the control loop falls back to its Python tick where it is missing.
 *
 * Each period, on the node clock (system time, or /clock with use_sim_time), on a fixed grid:
 *   estop messages  -> the estop gate                          (csrc/safety.h sc_estop_*)
 *   input messages  -> rcl_take_serialized_message, decode and validate (csrc/cdr.h), keep the
 *                      newest valid sample per topic, count rejections, drops and quarantine
 *   the safety core -> sc_decide, the LTC step (csrc/ltc.h), sc_finish   (csrc/safety.h)
 *   the command     -> patched into the pre-serialized messages, rcl_publish_serialized_message
 *   timing figures, heartbeat and last command into the shared memory the node's watchdog
 *   reads; events (is_safe, estop, swaps, rejections) into a queue Python forwards.
 * Between ticks the thread keeps taking input messages (a few per topic per wake-up), so a
 * flood cannot push the valid samples out of the middleware's queue.
 *
 * The Python tick (control_loop.py) is the reference: test_native_tick.py runs both on the same
 * input streams and compares the published bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <rcl/publisher.h>
#include <rcl/subscription.h>
#include <rcutils/allocator.h>
#include <rcutils/error_handling.h>
#include <rmw/serialized_message.h>
#include <rmw/types.h>

#include "../core/csrc/pybuf.h"
#include "../core/csrc/ltc.h"
#include "../core/csrc/safety_py.h"
#include "../core/csrc/cdr_py.h"

#ifndef CTICK_MODULE
#define CTICK_MODULE _ctick
#endif
#ifndef CTICK_PREFIX
#define CTICK_PREFIX ""
#endif
#define STR2(x) #x
#define STR(x) STR2(x)
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)

#define MAX_INPUTS 16
#define MAX_OUTPUTS 8
#define MAX_SENDERS 64
#define EVENTS 512
#define READER_BATCH 8
#define QUARANTINE_AFTER 50
#define QUARANTINE_S 1.0

enum { EV_IS_SAFE = 1, EV_COMMANDING, EV_ESTOP, EV_SWAPPED, EV_REJECTED, EV_SAFETY, EV_NON_FINITE,
       EV_ERROR, EV_SCHEDULING, EV_WAITING, EV_ESTOP_RELEASED, EV_STALE };

typedef struct {
    int kind, topic;
    double a;
    int64_t tick;
    char text[240];
} event_t;

typedef struct {
    uint8_t gid[RMW_GID_STORAGE_SIZE];
    int64_t last_seq;
    int64_t rejected_in_a_row;
    double quarantined_until;
} sender_t;

typedef struct {
    const rcl_subscription_t *sub;
    cdr_reader reader;
    int k;
    int64_t slots[CDR_REGS];
    double values[CDR_REGS], scratch[CDR_REGS];
    double received_s; /* NaN: nothing yet */
    int64_t taken, valid, dropped, rejected[CDR_REASONS];
    sender_t senders[MAX_SENDERS];
    int n_senders;
    double interval_s, last_valid_mono; /* NaN: none */
    int was_stale;
    char last_detail[CDR_REASONS][200];
} input_t;

typedef struct {
    const rcl_publisher_t *pub;
    uint8_t *buf;
    size_t len;
    int n;
    int64_t *offsets, *slots;
} output_t;

/* the active policy and its safety space (two of each: active and staged for a swap) */
typedef struct {
    PyObject *owner; /* the _cltc.Net (a reference is held) */
    ltc_net *net;
    policy_step_fn step; /* _cltc's own compiled step: the same code as Policy.step */
    double *state, *low, *high; /* n */
    double time_unit_s;
    double *space; /* low high zero spec position alo ahi (m each), olo ohi (s each) */
    uint8_t pos[256];
    int64_t fb[256];
    int has_spec;
} policy_t;

typedef struct {
    PyObject_HEAD
    /* fixed at construction */
    int n_inputs, n_outputs, s, m, sim, debug;
    input_t *in;
    output_t out[MAX_OUTPUTS];
    output_t dbg;
    const rcl_subscription_t *estop_sub[2], *clock_sub;
    int64_t period_ns, poll_ns;
    double period_s, take_budget_s, input_wait_s;
    int64_t max_per_tick;
    int priority, affinity[64], n_affinity;
    Py_buffer shared_view;
    double *stats, *heartbeat, *last_command;
    int64_t window, bins, per_decade;
    double hist_lo;
    rcl_serialized_message_t msg;
    /* state of the loop (the thread's; figures() copies it under the lock) */
    sc_core core;
    sc_estop gate;
    policy_t pol[2];
    int active;
    double *prev, *fade;
    double *raw, *action, *raw_action, *dbg_values;
    int64_t clock_ns;
    int has_last_tick;
    int64_t last_tick_ns;
    int waiting, safe_now; /* safe_now -1: not said yet */
    int reasons, enabled, reset_requested, swapping, estop_released_logged;
    double last_waiting_event; /* activation, then each "never heard" report */
    int64_t non_finite, swaps, ticks;
    int64_t safe_ticks[16]; /* published safe ticks by reason bit (SC_*), for diagnostics */
    char last_error[240];
    /* requests from Python (under the lock), applied at the next tick */
    int pending_swap, pending_config, pending_reset, pending_enabled, pending_estop;
    sc_config next_config;
    int next_enabled, next_required, next_estop;
    /* events */
    event_t events[EVENTS];
    int64_t ev_head, ev_tail, ev_lost;
    /* the thread */
    pthread_t thread;
    int running;
    atomic_int stop;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    PyObject *retired[4];
    char sched_status[240];
} Tick;

/* ------------------------------------------------------------------------------------------ */
/* clocks                                                                                       */
/* ------------------------------------------------------------------------------------------ */
static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_until_real(int64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void sleep_for_ns(int64_t ns) {
    struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* ------------------------------------------------------------------------------------------ */
/* events (under the lock)                                                                      */
/* ------------------------------------------------------------------------------------------ */
static void push_event(Tick *t, int kind, int topic, double a, const char *text) {
    if (t->ev_head - t->ev_tail >= EVENTS) {
        t->ev_lost++;
        return;
    }
    event_t *e = &t->events[t->ev_head % EVENTS];
    e->kind = kind;
    e->topic = topic;
    e->a = a;
    e->tick = t->ticks;
    snprintf(e->text, sizeof e->text, "%s", text ? text : "");
    t->ev_head++;
    pthread_cond_signal(&t->cond);
}

/* ------------------------------------------------------------------------------------------ */
/* shared figures: LoopStats and Heartbeat (liquid_control/ros/stats.py, same layout)          */
/* ------------------------------------------------------------------------------------------ */
static void window_add(double *store, int64_t cap, double x) {
    int64_t n = (int64_t)store[cap];
    store[n % cap] = x;
    store[cap] = (double)(n + 1);
}

static void hist_add(Tick *t, double *store, double x) {
    int64_t bins = t->bins;
    if (x > store[bins + 1]) store[bins + 1] = x;
    store[bins + 2] += 1;
    int64_t k = 0;
    if (!(x < t->hist_lo)) {
        k = (int64_t)(log10(x / t->hist_lo) * (double)t->per_decade) + 1;
        if (k > bins) k = bins;
    }
    store[k] += 1;
}

static void stats_record(Tick *t, int has_period, double period, double compute, int swapping) {
    double *c = t->stats;
    int64_t w = t->window + 1, h = t->bins + 3;
    double *periods = c + 4, *comp = periods + w, *pe = comp + w, *ct = pe + h;
    c[0] += 1;
    window_add(comp, t->window, compute);
    hist_add(t, ct, compute);
    if (!has_period) return;
    c[3] += period;
    window_add(periods, t->window, period);
    hist_add(t, pe, fabs(period - t->period_s));
    if (period > 1.5 * t->period_s) {
        double missed = nearbyint(period / t->period_s) - 1;
        c[1] += missed;
        if (swapping) c[2] += missed;
    }
}

static void stats_clear(Tick *t) {
    int64_t size = 4 + 2 * (t->window + 1) + 2 * (t->bins + 3);
    memset(t->stats, 0, (size_t)size * sizeof(double));
    memset(t->heartbeat, 0, 4 * sizeof(double));
}

/* ------------------------------------------------------------------------------------------ */
/* inputs                                                                                       */
/* ------------------------------------------------------------------------------------------ */
static sender_t *sender_of(input_t *in, const rmw_message_info_t *info) {
    const uint8_t *gid = info->publisher_gid.data;
    int any = 0;
    for (int i = 0; i < (int)RMW_GID_STORAGE_SIZE; i++) any |= gid[i];
    if (!any) return NULL; /* not reported */
    sender_t *s = NULL;
    for (int i = 0; i < in->n_senders; i++)
        if (memcmp(in->senders[i].gid, gid, RMW_GID_STORAGE_SIZE) == 0) { s = &in->senders[i]; break; }
    if (!s) {
        if (in->n_senders >= MAX_SENDERS) in->n_senders = 0; /* (as Python: forget them all) */
        s = &in->senders[in->n_senders++];
        memset(s, 0, sizeof *s);
        memcpy(s->gid, gid, RMW_GID_STORAGE_SIZE);
        s->last_seq = -1;
    }
    int64_t seq = (int64_t)info->publication_sequence_number;
    if (seq > 0) {
        if (s->last_seq >= 0 && seq > s->last_seq + 1) in->dropped += seq - s->last_seq - 1;
        s->last_seq = seq;
    }
    return s;
}

/* Take one message of input i; 0 when its queue is empty. */
static int take_input(Tick *t, int i) {
    input_t *in = &t->in[i];
    rmw_message_info_t info = rmw_get_zero_initialized_message_info();
    rcl_ret_t rc = rcl_take_serialized_message(in->sub, &t->msg, &info, NULL);
    if (rc == RCL_RET_SUBSCRIPTION_TAKE_FAILED) return 0;
    if (rc != RCL_RET_OK) {
        snprintf(t->last_error, sizeof t->last_error, "taking an input message failed: %.180s",
                 rcutils_get_error_string().str);
        rcutils_reset_error();
        return 0;
    }
    in->taken++;
    sender_t *s = sender_of(in, &info);
    double now = mono_s();
    if (s && s->quarantined_until > now) {
        in->rejected[CDR_QUARANTINED]++;
        return 1;
    }
    int64_t received = t->sim ? 0 : (int64_t)info.received_timestamp;
    double stamp = (double)(received ? received : (t->sim ? t->clock_ns : real_ns())) * 1e-9;
    int code = cdr_read(&in->reader, t->msg.buffer, (int64_t)t->msg.buffer_length, in->scratch);
    if (code == CDR_OK) {
        memcpy(in->values, in->scratch, (size_t)in->k * sizeof(double));
        in->received_s = stamp;
        in->valid++;
        if (!isnan(in->last_valid_mono) && now > in->last_valid_mono) {
            double gap = now - in->last_valid_mono;
            in->interval_s = isnan(in->interval_s) ? gap : 0.8 * in->interval_s + 0.2 * gap;
        }
        in->last_valid_mono = now;
        if (s) s->rejected_in_a_row = 0;
        return 1;
    }
    in->rejected[code]++;
    snprintf(in->last_detail[code], sizeof in->last_detail[code], "%s", in->reader.ctx.detail);
    if (s && ++s->rejected_in_a_row >= QUARANTINE_AFTER) {
        s->quarantined_until = now + QUARANTINE_S;
        s->rejected_in_a_row = 0;
    }
    char text[240];
    snprintf(text, sizeof text, "%s: %s", CDR_REASON[code], in->reader.ctx.detail);
    if (t->ev_head - t->ev_tail < EVENTS / 2) push_event(t, EV_REJECTED, i, code, text);
    return 1;
}

static void take_estop(Tick *t) {
    for (int q = 0; q < 2; q++) {
        if (!t->estop_sub[q]) continue;
        for (int guard = 0; guard < 64; guard++) {
            rmw_message_info_t info = rmw_get_zero_initialized_message_info();
            rcl_ret_t rc = rcl_take_serialized_message(t->estop_sub[q], &t->msg, &info, NULL);
            if (rc != RCL_RET_OK) {
                if (rc != RCL_RET_SUBSCRIPTION_TAKE_FAILED) rcutils_reset_error();
                break;
            }
            const uint8_t *b = t->msg.buffer;
            if (t->msg.buffer_length < 5 || b[0] != 0 || b[1] != 1) continue; /* not a Bool */
            int engaged = b[4] != 0;
            if (sc_estop_update(&t->gate, engaged))
                push_event(t, EV_ESTOP, -1, engaged, engaged ? "engaged" : "released");
        }
    }
}

static void take_clock(Tick *t) {
    if (!t->clock_sub) return;
    for (int guard = 0; guard < 1024; guard++) {
        rmw_message_info_t info = rmw_get_zero_initialized_message_info();
        rcl_ret_t rc = rcl_take_serialized_message(t->clock_sub, &t->msg, &info, NULL);
        if (rc != RCL_RET_OK) {
            if (rc != RCL_RET_SUBSCRIPTION_TAKE_FAILED) rcutils_reset_error();
            return;
        }
        const uint8_t *b = t->msg.buffer;
        if (t->msg.buffer_length < 12 || b[0] != 0 || b[1] != 1) continue;
        int32_t sec;
        uint32_t nsec;
        memcpy(&sec, b + 4, 4);
        memcpy(&nsec, b + 8, 4);
        t->clock_ns = (int64_t)sec * 1000000000LL + nsec;
    }
}

static int64_t clock_now(Tick *t) {
    if (t->sim) {
        take_clock(t);
        return t->clock_ns;
    }
    return real_ns();
}

/* Between ticks: a few messages per topic, none at or after `until_ns` on the node clock. */
static void drain(Tick *t, int64_t until_ns) {
    take_estop(t);
    for (int i = 0; i < t->n_inputs; i++)
        for (int q = 0; q < READER_BATCH; q++) {
            if (!t->sim && real_ns() >= until_ns) return;
            if (!take_input(t, i)) break;
        }
}

/* ------------------------------------------------------------------------------------------ */
/* the tick                                                                                     */
/* ------------------------------------------------------------------------------------------ */
static void use_policy(Tick *t, int which, int swap) {
    policy_t *p = &t->pol[which];
    int m = t->m, s = t->s;
    double *d = p->space;
    sc_space sp = {m, s, d, d + m, d + 2 * m, p->has_spec ? d + 3 * m : NULL, p->pos, p->fb,
                   d + 5 * m, d + 6 * m, d + 7 * m, d + 7 * m + s};
    if (swap) {
        sc_set_policy(&t->core, &sp);
    } else {
        t->core.space = sp;
    }
    t->active = which;
}

static void publish_action(Tick *t, const double *action) {
    for (int o = 0; o < t->n_outputs; o++) {
        output_t *out = &t->out[o];
        for (int j = 0; j < out->n; j++) memcpy(out->buf + out->offsets[j], &action[out->slots[j]], 8);
        rcl_serialized_message_t msg = rmw_get_zero_initialized_serialized_message();
        msg.buffer = out->buf;
        msg.buffer_length = out->len;
        msg.buffer_capacity = out->len;
        msg.allocator = rcutils_get_default_allocator();
        if (rcl_publish_serialized_message(out->pub, &msg, NULL) != RCL_RET_OK) {
            snprintf(t->last_error, sizeof t->last_error, "publishing a command failed: %.180s",
                     rcutils_get_error_string().str);
            rcutils_reset_error();
        }
    }
    memcpy(t->last_command, action, (size_t)t->m * sizeof(double));
}

static void publish_debug(Tick *t, double dt, int64_t steps) {
    double *v = t->dbg_values;
    v[0] = (double)(int64_t)t->stats[0];
    v[1] = isnan(dt) ? t->period_s : dt;
    v[2] = (double)steps;
    memcpy(v + 3, t->raw, (size_t)t->s * sizeof(double));
    memcpy(v + 3 + t->s, t->action, (size_t)t->m * sizeof(double));
    output_t *out = &t->dbg;
    for (int j = 0; j < out->n; j++) memcpy(out->buf + out->offsets[j], &v[j], 8);
    rcl_serialized_message_t msg = rmw_get_zero_initialized_serialized_message();
    msg.buffer = out->buf;
    msg.buffer_length = out->len;
    msg.buffer_capacity = out->len;
    msg.allocator = rcutils_get_default_allocator();
    if (rcl_publish_serialized_message(out->pub, &msg, NULL) != RCL_RET_OK) rcutils_reset_error();
}

static int state_ok(const policy_t *p) {
    for (int j = 0; j < p->net->n; j++) {
        double lo = p->low[j], hi = p->high[j];
        double tol = 1e-6 * (1.0 + fmax(fabs(lo), fabs(hi)));
        double v = p->state[j];
        if (!(v >= lo - tol) || !(v <= hi + tol)) return 0;
    }
    return 1;
}

static void apply_requests(Tick *t) {
    if (t->pending_swap) {
        int next = 1 - t->active;
        use_policy(t, next, 1);
        t->pending_swap = 0;
        t->swaps++;
        t->swapping = 0;
        push_event(t, EV_SWAPPED, -1, 0, "");
    }
    if (t->pending_config) {
        t->core.cfg = t->next_config;
        t->gate.required = t->next_required;
        t->pending_config = 0;
    }
    if (t->pending_enabled) {
        t->enabled = t->next_enabled;
        t->pending_enabled = 0;
    }
    if (t->pending_reset) {
        t->reset_requested = 1;
        t->pending_reset = 0;
    }
}

static const char *estop_detail_text(int detail) {
    switch (detail) {
    case 1: return "waiting for an estop message (estop_required_at_start)";
    case 2: return "waiting for the latched sample of the estop publisher";
    case 3: return "looking for a latched estop publisher";
    default: return "";
    }
}

/* One tick (with the lock held). */
static void tick_once(Tick *t, int64_t now_ns) {
    double t0 = mono_s();
    int has_period = t->has_last_tick;
    double period = has_period ? (double)(now_ns - t->last_tick_ns) * 1e-9 : 0.0;
    t->has_last_tick = 1;
    t->last_tick_ns = now_ns;
    apply_requests(t);
    /* inputs: the estop first, then up to max_messages_per_tick per topic within the budget */
    take_estop(t);
    double until = t0 + t->take_budget_s;
    for (int i = 0; i < t->n_inputs; i++)
        for (int64_t q = 0; q < t->max_per_tick; q++) {
            if (mono_s() > until) break;
            if (!take_input(t, i)) break;
        }
    int ready = 1;
    double received[MAX_INPUTS];
    int64_t counts[MAX_INPUTS];
    for (int i = 0; i < t->n_inputs; i++) {
        input_t *in = &t->in[i];
        received[i] = in->received_s;
        counts[i] = in->valid;
        if (isnan(in->received_s)) ready = 0;
        else
            for (int q = 0; q < in->k; q++) t->raw[in->slots[q]] = in->values[q];
    }
    double wall = mono_s();
    if (ready && t->waiting && t->gate.started_s < wall) t->gate.started_s = wall;
    int latched = 0;
    if (!t->gate.heard && t->gate.remembered < 0 && !t->gate.required && t->estop_sub[0]) {
        size_t count = 0;
        if (rcl_subscription_get_publisher_count(t->estop_sub[0], &count) == RCL_RET_OK)
            latched = (int)count;
        else
            rcutils_reset_error();
    }
    int detail = 0;
    int estop = sc_estop_state(&t->gate, wall, latched, &detail);
    if (estop == 0 && !t->estop_released_logged) {
        t->estop_released_logged = 1;
        push_event(t, EV_ESTOP_RELEASED, -1, t->gate.heard ? 0 : (t->gate.remembered >= 0 ? 1 : 2), "");
    }
    double now_s = (double)now_ns * 1e-9;
    sc_input inp = {now_s, wall, t->n_inputs, received, counts, ready ? t->raw : NULL, estop,
                    t->enabled, t->reset_requested};
    t->reset_requested = 0;
    double dt = 0;
    int reset = 0;
    policy_t *p = &t->pol[t->active];
    const double *raw_action = NULL;
    int ok = 1;
    if (sc_decide(&t->core, &inp, &dt, &reset)) {
        if (reset) memset(p->state, 0, (size_t)p->net->n * sizeof(double));
        int finite = 1;
        for (int j = 0; j < t->s; j++) finite &= isfinite(t->raw[j]) != 0;
        if (finite) {
            ltc_net *net = p->net;
            p->step(net, t->raw, p->state, dt / p->time_unit_s, t->raw_action, 0, net->xm, net->a,
                    net->b, net->num, net->den, net->z, net->zs);
        } else {
            for (int j = 0; j < t->m; j++) t->raw_action[j] = NAN;
            snprintf(t->last_error, sizeof t->last_error, "control step failed: a non-finite observation");
        }
        raw_action = t->raw_action;
        int all_finite = 1;
        for (int j = 0; j < t->m; j++) all_finite &= isfinite(t->raw_action[j]) != 0;
        if (all_finite) ok = state_ok(p);
    }
    sc_result res;
    if (sc_finish(&t->core, &inp, raw_action, ok, t->action, &res))
        memset(p->state, 0, (size_t)p->net->n * sizeof(double));
    if (res.events & SC_EV_LATCH_CLEARED) push_event(t, EV_SAFETY, -1, 0, "latch cleared by a reset request");
    if (res.events & SC_EV_JUMP) {
        char text[200];
        if (t->core.has_period && t->core.period < 0)
            snprintf(text, sizeof text, "clock jumped back by %.3f s: hidden state reset", -t->core.period);
        else if (t->core.has_period && t->core.period > t->core.cfg.max_dt_s)
            snprintf(text, sizeof text, "clock gap of %.3f s (max_dt_s %g): hidden state reset",
                     t->core.period, t->core.cfg.max_dt_s);
        else
            snprintf(text, sizeof text, "no tick for %.3f s of wall time: hidden state reset", t->core.wall_gap);
        push_event(t, EV_SAFETY, -1, 0, text);
    }
    /* an input that goes stale is named in the log, with what arrived on it (diagnosis) */
    for (int i = 0; i < t->n_inputs; i++) {
        input_t *in = &t->in[i];
        int stale = !isnan(in->received_s) && now_s - in->received_s > t->core.cfg.sensor_timeout_s;
        if (stale && !in->was_stale) {
            char text[240];
            int64_t rejected = 0;
            for (int r = 1; r < CDR_REASONS; r++) rejected += in->rejected[r];
            snprintf(text, sizeof text,
                     "stale: its newest valid sample is %.3f s old (sensor_timeout_s %g); %lld "
                     "messages taken, %lld valid, %lld rejected, %lld dropped so far",
                     now_s - in->received_s, t->core.cfg.sensor_timeout_s, (long long)in->taken,
                     (long long)in->valid, (long long)rejected, (long long)in->dropped);
            push_event(t, EV_STALE, i, 0, text);
        }
        in->was_stale = stale;
    }
    t->reasons = res.reasons;
    if (!res.publish) { /* waiting for the first sample of every input */
        if (wall - t->last_waiting_event >= t->input_wait_s) {
            t->last_waiting_event = wall;
            push_event(t, EV_WAITING, -1, 0, "");
        }
    } else {
        if (res.reasons & SC_NON_FINITE) {
            t->non_finite++;
            snprintf(t->last_error, sizeof t->last_error, "non-finite policy output; hidden state reset");
            push_event(t, EV_NON_FINITE, -1, 0, t->last_error);
        }
        if (!res.commanding)
            for (int b = 0; b < 16; b++)
                if (res.reasons & (1 << b)) t->safe_ticks[b]++;
        publish_action(t, t->action);
        if (t->waiting) {
            t->waiting = 0;
            push_event(t, EV_COMMANDING, -1, 0, "");
        }
        if (res.commanding && strncmp(t->last_error, "control step failed", 19) == 0) t->last_error[0] = 0;
        int safe = !res.commanding;
        if (t->safe_now != safe) {
            t->safe_now = safe;
            push_event(t, EV_IS_SAFE, -1, safe, "");
        }
        if (t->debug) publish_debug(t, res.dt, res.steps);
    }
    (void)detail;
    stats_record(t, has_period, period, mono_s() - t0, t->swapping);
    double after = mono_s();
    t->heartbeat[0] = after;
    t->heartbeat[1] = after;
    t->heartbeat[3] = t->safe_now == 0 ? 1.0 : 0.0;
    t->ticks++;
}

static void apply_scheduling(Tick *t) {
    char text[240] = "";
    size_t used = 0;
    if (t->priority > 0) {
        struct sched_param sp = {.sched_priority = t->priority};
        int rc = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
        if (rc == 0)
            used += snprintf(text + used, sizeof text - used, "SCHED_FIFO priority %d", t->priority);
        else
            used += snprintf(text + used, sizeof text - used,
                             "normal scheduling: SCHED_FIFO priority %d refused (%s); grant "
                             "CAP_SYS_NICE or an rtprio limit", t->priority, strerror(rc));
    }
    if (t->n_affinity > 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        for (int i = 0; i < t->n_affinity; i++) CPU_SET(t->affinity[i], &set);
        int rc = sched_setaffinity(0, sizeof set, &set);
        used += snprintf(text + used, sizeof text - used, "%s", used ? ", " : "");
        if (rc == 0) {
            used += snprintf(text + used, sizeof text - used, "cores [");
            for (int i = 0; i < t->n_affinity && used < sizeof text - 8; i++)
                used += snprintf(text + used, sizeof text - used, "%s%d", i ? ", " : "", t->affinity[i]);
            used += snprintf(text + used, sizeof text - used, "]");
        } else {
            used += snprintf(text + used, sizeof text - used, "cpu_affinity refused (%s)", strerror(errno));
        }
    }
    if (!used) snprintf(text, sizeof text, "normal scheduling");
    pthread_mutex_lock(&t->lock);
    snprintf(t->sched_status, sizeof t->sched_status, "%s", text);
    push_event(t, EV_SCHEDULING, -1, 0, t->sched_status);
    pthread_mutex_unlock(&t->lock);
}

static void *run(void *arg) {
    Tick *t = arg;
    apply_scheduling(t);
    pthread_mutex_lock(&t->lock);
    int64_t deadline = clock_now(t) + t->period_ns;
    pthread_mutex_unlock(&t->lock);
    while (!atomic_load(&t->stop)) {
        /* wait for the deadline on the node clock, taking inputs meanwhile */
        int go = 0;
        while (!atomic_load(&t->stop)) {
            pthread_mutex_lock(&t->lock);
            int64_t now = clock_now(t);
            double m = mono_s();
            t->heartbeat[1] = m;
            t->heartbeat[2] = (double)now * 1e-9;
            if (now >= deadline || (t->sim && now < deadline - 3 * t->period_ns)) {
                pthread_mutex_unlock(&t->lock);
                go = 1;
                break;
            }
            drain(t, deadline - 30000);
            pthread_mutex_unlock(&t->lock);
            if (t->sim) {
                sleep_for_ns(t->poll_ns);
            } else {
                int64_t wake = real_ns() + t->poll_ns;
                sleep_until_real(wake < deadline ? wake : deadline);
            }
        }
        if (!go) break;
        pthread_mutex_lock(&t->lock);
        int64_t now_ns = clock_now(t);
        tick_once(t, now_ns);
        int64_t now = clock_now(t);
        pthread_mutex_unlock(&t->lock);
        deadline += t->period_ns;
        if (now >= deadline)
            deadline += ((now - deadline) / t->period_ns) * t->period_ns;
        else if (deadline - now > 2 * t->period_ns)
            deadline = now + t->period_ns;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* construction                                                                                 */
/* ------------------------------------------------------------------------------------------ */
static void *pointer_of(PyObject *o) {
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (PyErr_Occurred()) return NULL;
    return (void *)(uintptr_t)v;
}

static int load_output(output_t *out, PyObject *t) {
    PyObject *o_ptr, *o_bytes, *o_off, *o_slots;
    if (!PyArg_ParseTuple(t, "OOOO", &o_ptr, &o_bytes, &o_off, &o_slots)) return -1;
    out->pub = pointer_of(o_ptr);
    if (!out->pub) return -1;
    char *b;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(o_bytes, &b, &n) < 0) return -1;
    out->buf = malloc((size_t)n);
    if (!out->buf) { PyErr_NoMemory(); return -1; }
    memcpy(out->buf, b, (size_t)n);
    out->len = (size_t)n;
    buf_t bb;
    if (get_buf(o_off, &bb, "offsets", 'q', -1, 0) < 0) { release(&bb, 1); return -1; }
    out->n = (int)(bb.view.len / 8);
    release(&bb, 1);
    out->offsets = calloc((size_t)out->n + 1, sizeof(int64_t));
    out->slots = calloc((size_t)out->n + 1, sizeof(int64_t));
    if (!out->offsets || !out->slots) { PyErr_NoMemory(); return -1; }
    if (copy_items(out->offsets, o_off, "offsets", 'q', out->n) < 0) return -1;
    if (o_slots != Py_None && copy_items(out->slots, o_slots, "slots", 'q', out->n) < 0) return -1;
    for (int j = 0; j < out->n; j++)
        if (out->offsets[j] < 4 || (size_t)out->offsets[j] + 8 > out->len) {
            PyErr_SetString(PyExc_ValueError, "Tick: an output offset lies outside its template");
            return -1;
        }
    return 0;
}

/* policy: (net, state_low, state_high, time_unit_s, space tuple) into slot `which` */
static int load_policy(Tick *t, int which, PyObject *tuple) {
    PyObject *o_net, *o_low, *o_high, *o_space;
    double unit;
    if (!PyArg_ParseTuple(tuple, "OOOdO!", &o_net, &o_low, &o_high, &unit, &PyTuple_Type, &o_space))
        return -1;
    PyObject *cap = PyObject_CallMethod(o_net, "capsule", NULL);
    if (!cap) return -1;
    ltc_handle *handle = PyCapsule_GetPointer(cap, LTC_HANDLE_CAPSULE);
    Py_DECREF(cap);
    if (!handle) return -1;
    ltc_net *net = handle->net;
    if (net->s != t->s || net->m != t->m || !(unit > 0)) {
        PyErr_SetString(PyExc_ValueError, "Tick: the policy's sizes differ from the interface");
        return -1;
    }
    policy_t *p = &t->pol[which];
    double *state = calloc((size_t)net->n, sizeof(double));
    double *low = calloc((size_t)net->n, sizeof(double));
    double *high = calloc((size_t)net->n, sizeof(double));
    if (!state || !low || !high) { free(state); free(low); free(high); PyErr_NoMemory(); return -1; }
    if (copy_items(low, o_low, "state_low", 'd', net->n) < 0 ||
        copy_items(high, o_high, "state_high", 'd', net->n) < 0) {
        free(state); free(low); free(high);
        return -1;
    }
    /* the space: as safety_py.h reads it */
    PyObject *o[10];
    if (!PyArg_ParseTuple(o_space, "OOOOOOOOOO", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6],
                          &o[7], &o[8], &o[9])) {
        free(state); free(low); free(high);
        return -1;
    }
    int m = t->m, s = t->s;
    double *d = p->space;
    double posd[256];
    if (copy_items(d, o[0], "low", 'd', m) < 0 || copy_items(d + m, o[1], "high", 'd', m) < 0 ||
        copy_items(d + 2 * m, o[2], "zero", 'd', m) < 0 ||
        (o[3] != Py_None && copy_items(d + 3 * m, o[3], "spec_safe", 'd', m) < 0) ||
        copy_items(posd, o[4], "position", 'd', m) < 0 || copy_items(p->fb, o[5], "feedback", 'q', m) < 0 ||
        copy_items(d + 5 * m, o[6], "action_lo", 'd', m) < 0 ||
        copy_items(d + 6 * m, o[7], "action_hi", 'd', m) < 0 ||
        copy_items(d + 7 * m, o[8], "observation_lo", 'd', s) < 0 ||
        copy_items(d + 7 * m + s, o[9], "observation_hi", 'd', s) < 0) {
        free(state); free(low); free(high);
        return -1;
    }
    for (int j = 0; j < m; j++) {
        p->pos[j] = posd[j] != 0.0;
        if (p->fb[j] >= s) {
            free(state); free(low); free(high);
            PyErr_SetString(PyExc_ValueError, "Tick: a feedback index is out of range");
            return -1;
        }
    }
    p->has_spec = o[3] != Py_None;
    free(p->state); free(p->low); free(p->high);
    Py_XINCREF(o_net);
    PyObject *old = p->owner;
    p->owner = o_net;
    p->net = net;
    p->step = handle->step;
    p->state = state;
    p->low = low;
    p->high = high;
    p->time_unit_s = unit;
    if (old) { /* retired: released by Python later (we may not hold the lock here) */
        int placed = 0;
        for (int r = 0; r < 4 && !placed; r++)
            if (!t->retired[r]) { t->retired[r] = old; placed = 1; }
        if (!placed) Py_DECREF(old); /* (only reached with the GIL held: construction and swap) */
    }
    return 0;
}

static int Tick_init(Tick *t, PyObject *args, PyObject *kwds) {
    PyObject *cfg;
    if (!PyArg_ParseTuple(args, "O!", &PyDict_Type, &cfg)) return -1;
    if (t->in) {
        PyErr_SetString(PyExc_RuntimeError, "Tick: already initialised");
        return -1;
    }
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setprotocol(&ma, PTHREAD_PRIO_INHERIT);
    pthread_mutex_init(&t->lock, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_cond_init(&t->cond, NULL);
    PyObject *v;
#define GET(name) (v = PyDict_GetItemString(cfg, name)) ? v : (PyErr_Format(PyExc_KeyError, "Tick: %s", name), (PyObject *)NULL)
    PyObject *o_inputs = GET("inputs");
    PyObject *o_outputs = o_inputs ? GET("outputs") : NULL;
    PyObject *o_debug = o_outputs ? GET("debug") : NULL;
    PyObject *o_estop = o_debug ? GET("estop") : NULL;
    PyObject *o_clock = o_estop ? GET("clock") : NULL;
    PyObject *o_safety = o_clock ? GET("safety") : NULL;
    PyObject *o_policy = o_safety ? GET("policy") : NULL;
    PyObject *o_shared = o_policy ? GET("shared") : NULL;
    PyObject *o_timing = o_shared ? GET("timing") : NULL;
#undef GET
    if (!o_timing) return -1;
    /* timing: (period_s, poll_s, take_budget_s, max_per_tick, input_wait_s, priority, [cores], s, m, debug, enabled) */
    PyObject *o_cores;
    double poll;
    if (!PyArg_ParseTuple(o_timing, "dddLdiO!iipp", &t->period_s, &poll, &t->take_budget_s,
                          &t->max_per_tick, &t->input_wait_s, &t->priority, &PyList_Type, &o_cores,
                          &t->s, &t->m, &t->debug, &t->enabled))
        return -1;
    if (!(t->period_s > 0) || t->m < 1 || t->m > 256 || t->s < 1 || t->max_per_tick < 1) {
        PyErr_SetString(PyExc_ValueError, "Tick: bad timing or sizes");
        return -1;
    }
    t->period_ns = (int64_t)llround(t->period_s * 1e9);
    t->poll_ns = (int64_t)llround(poll * 1e9);
    if (t->poll_ns < 20000) t->poll_ns = 20000;
    t->n_affinity = (int)PyList_GET_SIZE(o_cores);
    if (t->n_affinity > 64) t->n_affinity = 64;
    for (int i = 0; i < t->n_affinity; i++) t->affinity[i] = (int)PyLong_AsLong(PyList_GET_ITEM(o_cores, i));
    if (PyErr_Occurred()) return -1;
    /* inputs: [(sub pointer, reader tuple, slots int64[k])] */
    if (!PyList_Check(o_inputs) || PyList_GET_SIZE(o_inputs) < 1 || PyList_GET_SIZE(o_inputs) > MAX_INPUTS) {
        PyErr_Format(PyExc_ValueError, "Tick: 1 to %d inputs", MAX_INPUTS);
        return -1;
    }
    t->n_inputs = (int)PyList_GET_SIZE(o_inputs);
    t->in = calloc((size_t)t->n_inputs, sizeof(input_t));
    if (!t->in) { PyErr_NoMemory(); return -1; }
    for (int i = 0; i < t->n_inputs; i++) {
        input_t *in = &t->in[i];
        in->received_s = NAN;
        in->interval_s = NAN;
        in->last_valid_mono = NAN;
        PyObject *o_ptr, *o_reader, *o_slots;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(o_inputs, i), "OO!O", &o_ptr, &PyTuple_Type, &o_reader, &o_slots))
            return -1;
        in->sub = pointer_of(o_ptr);
        if (!in->sub || cdr_reader_from_py(&in->reader, o_reader) < 0) return -1;
        in->k = in->reader.k;
        if (copy_items(in->slots, o_slots, "slots", 'q', in->k) < 0) return -1;
        for (int q = 0; q < in->k; q++)
            if (in->slots[q] < 0 || in->slots[q] >= t->s) {
                PyErr_SetString(PyExc_ValueError, "Tick: an observation slot is out of range");
                return -1;
            }
    }
    if (!PyList_Check(o_outputs) || PyList_GET_SIZE(o_outputs) < 1 || PyList_GET_SIZE(o_outputs) > MAX_OUTPUTS) {
        PyErr_Format(PyExc_ValueError, "Tick: 1 to %d outputs", MAX_OUTPUTS);
        return -1;
    }
    t->n_outputs = (int)PyList_GET_SIZE(o_outputs);
    for (int o = 0; o < t->n_outputs; o++) {
        if (load_output(&t->out[o], PyList_GET_ITEM(o_outputs, o)) < 0) return -1;
        for (int j = 0; j < t->out[o].n; j++)
            if (t->out[o].slots[j] < 0 || t->out[o].slots[j] >= t->m) {
                PyErr_SetString(PyExc_ValueError, "Tick: an action slot is out of range");
                return -1;
            }
    }
    if (load_output(&t->dbg, o_debug) < 0) return -1;
    if (t->dbg.n != 3 + t->s + t->m) {
        PyErr_SetString(PyExc_ValueError, "Tick: the debug template has the wrong size");
        return -1;
    }
    /* estop: (latched ptr, reliable ptr, required, discovery_s, remembered -1/0/1) */
    PyObject *o_e0, *o_e1;
    int remembered;
    if (!PyArg_ParseTuple(o_estop, "OOpdi", &o_e0, &o_e1, &t->gate.required, &t->gate.discovery_s,
                          &remembered))
        return -1;
    t->estop_sub[0] = pointer_of(o_e0);
    t->estop_sub[1] = pointer_of(o_e1);
    if (!t->estop_sub[0] || !t->estop_sub[1]) return -1;
    t->gate.remembered = remembered < 0 ? -1 : remembered > 0;
    t->gate.started_s = mono_s();
    if (o_clock != Py_None) {
        t->clock_sub = pointer_of(o_clock);
        if (!t->clock_sub) return -1;
        t->sim = 1;
    }
    /* shared: (buffer float64[], stats offset, stats size, heartbeat offset, last command offset, window, bins, lo, per_decade) */
    PyObject *o_buf;
    Py_ssize_t st_off, st_size, hb_off, lc_off;
    if (!PyArg_ParseTuple(o_shared, "OnnnnLLdL", &o_buf, &st_off, &st_size, &hb_off, &lc_off,
                          &t->window, &t->bins, &t->hist_lo, &t->per_decade))
        return -1;
    if (PyObject_GetBuffer(o_buf, &t->shared_view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return -1;
    Py_ssize_t doubles = t->shared_view.len / 8;
    if (st_size != 4 + 2 * (t->window + 1) + 2 * (t->bins + 3) || st_off + st_size > doubles ||
        hb_off + 4 > doubles || lc_off + t->m > doubles) {
        PyErr_SetString(PyExc_ValueError, "Tick: the shared memory layout does not fit");
        return -1;
    }
    double *base = t->shared_view.buf;
    t->stats = base + st_off;
    t->heartbeat = base + hb_off;
    t->last_command = base + lc_off;
    /* safety: (config tuple, space tuple, period_s) is built per policy; config here */
    PyObject *o_cfg;
    double core_period;
    if (!PyArg_ParseTuple(o_safety, "O!d", &PyTuple_Type, &o_cfg, &core_period)) return -1;
    memset(&t->core, 0, sizeof t->core);
    if (safety_config(o_cfg, &t->core.cfg) < 0) return -1;
    t->core.period_s = core_period;
    for (int w = 0; w < 2; w++) {
        t->pol[w].space = calloc((size_t)(7 * t->m + 2 * t->s), sizeof(double));
        if (!t->pol[w].space) { PyErr_NoMemory(); return -1; }
    }
    t->prev = calloc((size_t)t->m, sizeof(double));
    t->fade = calloc((size_t)t->m, sizeof(double));
    t->raw = calloc((size_t)t->s, sizeof(double));
    t->action = calloc((size_t)t->m, sizeof(double));
    t->raw_action = calloc((size_t)t->m, sizeof(double));
    t->dbg_values = calloc((size_t)(3 + t->s + t->m), sizeof(double));
    if (!t->prev || !t->fade || !t->raw || !t->action || !t->raw_action || !t->dbg_values) {
        PyErr_NoMemory();
        return -1;
    }
    t->core.prev = t->prev;
    t->core.fade_start = t->fade;
    if (load_policy(t, 0, o_policy) < 0) return -1;
    use_policy(t, 0, 0);
    sc_restart(&t->core);
    rcutils_allocator_t alloc = rcutils_get_default_allocator();
    t->msg = rmw_get_zero_initialized_serialized_message();
    if (rmw_serialized_message_init(&t->msg, 4096, &alloc) != RMW_RET_OK) {
        rcutils_reset_error();
        PyErr_NoMemory();
        return -1;
    }
    t->waiting = 1;
    t->safe_now = -1;
    snprintf(t->sched_status, sizeof t->sched_status, "normal scheduling");
    return 0;
}

static void release_retired(Tick *t) {
    for (int r = 0; r < 4; r++)
        if (t->retired[r]) {
            Py_DECREF(t->retired[r]);
            t->retired[r] = NULL;
        }
}

static void stop_thread(Tick *t) {
    if (!t->running) return;
    atomic_store(&t->stop, 1);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(t->thread, NULL);
    Py_END_ALLOW_THREADS
    t->running = 0;
}

static void Tick_dealloc(Tick *t) {
    stop_thread(t);
    if (t->in) {
        for (int i = 0; i < t->n_inputs; i++) cdr_reader_free(&t->in[i].reader);
        free(t->in);
        if (rmw_serialized_message_fini(&t->msg) != RMW_RET_OK) rcutils_reset_error();
    }
    for (int o = 0; o < MAX_OUTPUTS; o++) { free(t->out[o].buf); free(t->out[o].offsets); free(t->out[o].slots); }
    free(t->dbg.buf); free(t->dbg.offsets); free(t->dbg.slots);
    for (int w = 0; w < 2; w++) {
        free(t->pol[w].space); free(t->pol[w].state); free(t->pol[w].low); free(t->pol[w].high);
        Py_XDECREF(t->pol[w].owner);
    }
    release_retired(t);
    free(t->prev); free(t->fade); free(t->raw); free(t->action); free(t->raw_action); free(t->dbg_values);
    if (t->shared_view.obj) PyBuffer_Release(&t->shared_view);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->cond);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

/* ------------------------------------------------------------------------------------------ */
/* methods                                                                                      */
/* ------------------------------------------------------------------------------------------ */
static PyObject *Tick_start(Tick *t, PyObject *unused) {
    if (t->running) Py_RETURN_NONE;
    pthread_mutex_lock(&t->lock);
    sc_restart(&t->core);
    t->has_last_tick = 0;
    t->waiting = 1;
    t->safe_now = -1;
    t->reasons = 0;
    t->last_waiting_event = mono_s();
    stats_clear(t);
    pthread_mutex_unlock(&t->lock);
    atomic_store(&t->stop, 0);
    int rc = pthread_create(&t->thread, NULL, run, t);
    if (rc) return PyErr_Format(PyExc_OSError, "Tick: the control thread did not start (%s)", strerror(rc));
    t->running = 1;
    Py_RETURN_NONE;
}

/* stop(): stop the thread; then, if it was commanding, publish the safe action once. Returns
 * whether it published. */
static PyObject *Tick_stop(Tick *t, PyObject *unused) {
    stop_thread(t);
    pthread_mutex_lock(&t->lock);
    int published = 0;
    if (!t->waiting) {
        sc_safe_action(&t->core, t->action); /* (as the Python loop: the last command stays) */
        publish_action(t, t->action);
        published = 1;
    }
    t->waiting = 1;
    t->safe_now = 1;
    pthread_mutex_unlock(&t->lock);
    return PyBool_FromLong(published);
}

static PyObject *Tick_swap(Tick *t, PyObject *args) {
    PyObject *o_policy;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &o_policy)) return NULL;
    pthread_mutex_lock(&t->lock);
    if (t->pending_swap) { /* a staged policy not yet in use is replaced */
        t->pending_swap = 0;
    }
    int next = 1 - t->active;
    pthread_mutex_unlock(&t->lock);
    /* the staged slot is not read by the thread until pending_swap is set */
    if (load_policy(t, next, o_policy) < 0) return NULL;
    pthread_mutex_lock(&t->lock);
    if (t->running) {
        t->pending_swap = 1;
    } else {
        use_policy(t, next, 1);
        t->swaps++;
        t->swapping = 0;
        push_event(t, EV_SWAPPED, -1, 0, "");
    }
    pthread_mutex_unlock(&t->lock);
    release_retired(t);
    Py_RETURN_NONE;
}

/* set(config tuple or None, enabled or None, estop_required or None, swapping or None,
 *     debug or None) */
static PyObject *Tick_set(Tick *t, PyObject *args) {
    PyObject *o_cfg, *o_en, *o_req, *o_sw, *o_dbg;
    if (!PyArg_ParseTuple(args, "OOOOO", &o_cfg, &o_en, &o_req, &o_sw, &o_dbg)) return NULL;
    sc_config c;
    if (o_cfg != Py_None && safety_config(o_cfg, &c) < 0) return NULL;
    pthread_mutex_lock(&t->lock);
    if (o_cfg != Py_None) {
        t->next_config = c;
        t->next_required = o_req != Py_None ? PyObject_IsTrue(o_req) : t->gate.required;
        t->pending_config = 1;
        if (!t->running) {
            t->core.cfg = c;
            t->gate.required = t->next_required;
            t->pending_config = 0;
        }
    }
    if (o_en != Py_None) {
        t->next_enabled = PyObject_IsTrue(o_en);
        t->pending_enabled = 1;
        if (!t->running) { t->enabled = t->next_enabled; t->pending_enabled = 0; }
    }
    if (o_sw != Py_None) t->swapping = PyObject_IsTrue(o_sw);
    if (o_dbg != Py_None) t->debug = PyObject_IsTrue(o_dbg);
    pthread_mutex_unlock(&t->lock);
    Py_RETURN_NONE;
}

static PyObject *Tick_reset(Tick *t, PyObject *unused) {
    pthread_mutex_lock(&t->lock);
    t->pending_reset = 1;
    pthread_mutex_unlock(&t->lock);
    Py_RETURN_NONE;
}

/* estop(engaged): a message the node's process heard; remember(engaged): at activation */
static PyObject *Tick_estop(Tick *t, PyObject *args) {
    int engaged;
    if (!PyArg_ParseTuple(args, "p", &engaged)) return NULL;
    pthread_mutex_lock(&t->lock);
    if (sc_estop_update(&t->gate, engaged)) push_event(t, EV_ESTOP, -1, engaged, engaged ? "engaged" : "released");
    pthread_mutex_unlock(&t->lock);
    Py_RETURN_NONE;
}

static PyObject *Tick_remember_estop(Tick *t, PyObject *args) {
    int engaged;
    if (!PyArg_ParseTuple(args, "p", &engaged)) return NULL;
    pthread_mutex_lock(&t->lock);
    if (!t->gate.heard) t->gate.remembered = engaged;
    pthread_mutex_unlock(&t->lock);
    Py_RETURN_NONE;
}

/* events(timeout_s) -> [(kind, topic, a, tick, text)], waiting up to timeout for the first */
static PyObject *Tick_events(Tick *t, PyObject *args) {
    double timeout;
    if (!PyArg_ParseTuple(args, "d", &timeout)) return NULL;
    event_t local[64];
    int n = 0;
    int64_t lost = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&t->lock);
    if (t->ev_head == t->ev_tail && timeout > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t ns = (int64_t)ts.tv_nsec + (int64_t)(timeout * 1e9);
        ts.tv_sec += (time_t)(ns / 1000000000LL);
        ts.tv_nsec = (long)(ns % 1000000000LL);
        pthread_cond_timedwait(&t->cond, &t->lock, &ts);
    }
    while (t->ev_tail < t->ev_head && n < 64) local[n++] = t->events[t->ev_tail++ % EVENTS];
    lost = t->ev_lost;
    t->ev_lost = 0;
    pthread_mutex_unlock(&t->lock);
    Py_END_ALLOW_THREADS
    release_retired(t);
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *e = Py_BuildValue("(iidLs)", local[i].kind, local[i].topic, local[i].a,
                                    (long long)local[i].tick, local[i].text);
        if (!e || PyList_Append(list, e) < 0) { Py_XDECREF(e); Py_DECREF(list); return NULL; }
        Py_DECREF(e);
    }
    if (lost) {
        PyObject *e = Py_BuildValue("(iidLs)", EV_ERROR, -1, (double)lost, (long long)t->ticks, "events lost");
        if (e) { PyList_Append(list, e); Py_DECREF(e); }
    }
    return list;
}

static PyObject *opt_float(double x) {
    if (isnan(x)) Py_RETURN_NONE;
    return PyFloat_FromDouble(x);
}

static PyObject *Tick_figures(Tick *t, PyObject *unused) {
    /* a consistent copy under the lock, the Python objects after */
    int ni = t->n_inputs;
    input_t *copy = malloc((size_t)ni * sizeof(input_t));
    double *raw = malloc((size_t)t->s * sizeof(double));
    if (!copy || !raw) { free(copy); free(raw); return PyErr_NoMemory(); }
    pthread_mutex_lock(&t->lock);
    memcpy(copy, t->in, (size_t)ni * sizeof(input_t));
    int ready = 1;
    for (int i = 0; i < ni; i++) {
        if (isnan(t->in[i].received_s)) ready = 0;
        else for (int q = 0; q < t->in[i].k; q++) raw[t->in[i].slots[q]] = t->in[i].values[q];
    }
    int waiting = t->waiting, safe_now = t->safe_now, reasons = t->reasons, enabled = t->enabled;
    int latch = t->core.latch, latch_index = t->core.latch_index;
    double latch_value = t->core.latch_value;
    int64_t non_finite = t->non_finite, swaps = t->swaps, ticks = t->ticks;
    int64_t safe_ticks[16];
    memcpy(safe_ticks, t->safe_ticks, sizeof safe_ticks);
    char last_error[240], sched[240];
    memcpy(last_error, t->last_error, sizeof last_error);
    memcpy(sched, t->sched_status, sizeof sched);
    int detail = 0;
    int estop = sc_estop_state(&t->gate, mono_s(), 0, &detail);
    int64_t clock_ns = t->sim ? t->clock_ns : real_ns();
    pthread_mutex_unlock(&t->lock);
    PyObject *inputs = PyList_New(0);
    for (int i = 0; inputs && i < ni; i++) {
        input_t *in = &copy[i];
        PyObject *rej = PyDict_New(), *det = PyDict_New();
        for (int r = 1; rej && det && r < CDR_REASONS; r++) {
            if (!in->rejected[r]) continue;
            PyObject *nv = PyLong_FromLongLong(in->rejected[r]);
            PyDict_SetItemString(rej, CDR_REASON[r], nv);
            Py_XDECREF(nv);
            if (in->last_detail[r][0]) {
                PyObject *dv = PyUnicode_DecodeUTF8(in->last_detail[r], (Py_ssize_t)strlen(in->last_detail[r]), "replace");
                PyDict_SetItemString(det, CDR_REASON[r], dv);
                Py_XDECREF(dv);
            }
        }
        PyObject *item = Py_BuildValue(
            "{s:N,s:L,s:L,s:L,s:N,s:N,s:N,s:i}", "received_s", opt_float(in->received_s), "taken",
            (long long)in->taken, "valid", (long long)in->valid, "dropped", (long long)in->dropped,
            "rejected", rej, "details", det, "interval_s", opt_float(in->interval_s), "senders",
            in->n_senders);
        if (!item || PyList_Append(inputs, item) < 0) { Py_XDECREF(item); Py_CLEAR(inputs); break; }
        Py_DECREF(item);
    }
    free(copy);
    if (!inputs) { free(raw); return NULL; }
    PyObject *o_raw = Py_None;
    Py_INCREF(Py_None);
    if (ready) {
        Py_DECREF(Py_None);
        o_raw = PyList_New(t->s);
        for (int j = 0; o_raw && j < t->s; j++) PyList_SET_ITEM(o_raw, j, PyFloat_FromDouble(raw[j]));
    }
    free(raw);
    if (!o_raw) { Py_DECREF(inputs); return NULL; }
    PyObject *o_safe = PyList_New(16);
    for (int b = 0; o_safe && b < 16; b++) PyList_SET_ITEM(o_safe, b, PyLong_FromLongLong(safe_ticks[b]));
    if (!o_safe) { Py_DECREF(inputs); Py_DECREF(o_raw); return NULL; }
    return Py_BuildValue(
        "{s:N,s:N,s:N,s:O,s:O,s:i,s:O,s:(iid),s:L,s:L,s:L,s:s,s:s,s:O,s:i,s:L}", "inputs", inputs,
        "safe_ticks", o_safe,
        "raw", o_raw, "waiting", waiting ? Py_True : Py_False, "safe_now",
        safe_now < 0 ? Py_None : (safe_now ? Py_True : Py_False), "reasons", reasons, "enabled",
        enabled ? Py_True : Py_False, "latch", latch, latch_index, latch_value, "non_finite",
        (long long)non_finite, "swaps", (long long)swaps, "ticks", (long long)ticks, "last_error",
        last_error, "control_thread", sched, "estop",
        estop < 0 ? Py_None : (estop ? Py_True : Py_False), "estop_detail", detail, "clock_ns",
        (long long)clock_ns);
}

static PyMethodDef Tick_methods[] = {
    {"start", (PyCFunction)Tick_start, METH_NOARGS, "activation: start the control thread"},
    {"stop", (PyCFunction)Tick_stop, METH_NOARGS,
     "stop the thread; publish the safe action once if it was commanding (returns whether)"},
    {"swap", (PyCFunction)Tick_swap, METH_VARARGS, "swap((net, state_low, state_high, time_unit_s, space)) at the next tick"},
    {"set", (PyCFunction)Tick_set, METH_VARARGS,
     "set(safety config | None, enabled | None, estop_required | None, swapping | None, debug | None)"},
    {"reset", (PyCFunction)Tick_reset, METH_NOARGS, "a ~/reset request, for the next tick"},
    {"estop", (PyCFunction)Tick_estop, METH_VARARGS, "estop(engaged): a message the node heard"},
    {"remember_estop", (PyCFunction)Tick_remember_estop, METH_VARARGS, "the state the node remembers"},
    {"events", (PyCFunction)Tick_events, METH_VARARGS, "events(timeout_s) -> [(kind, topic, a, tick, text)]"},
    {"figures", (PyCFunction)Tick_figures, METH_NOARGS, "the loop's state, for diagnostics"},
    {NULL, NULL, 0, NULL}};

/* bare_loop(period_s, ticks, priority) -> [periods]: the machine's floor for a periodic thread
 * (clock_nanosleep to absolute deadlines at SCHED_FIFO `priority`, nothing else), the anchor
 * benchmarks/ros_loop.py measures in the same run as the ticks. */
static PyObject *bare_loop(PyObject *mod, PyObject *args) {
    double period_s;
    int n, priority;
    if (!PyArg_ParseTuple(args, "dii", &period_s, &n, &priority)) return NULL;
    if (n < 2 || n > 10000000 || !(period_s > 0)) {
        PyErr_SetString(PyExc_ValueError, "bare_loop: expected period_s > 0 and 2 <= ticks <= 1e7");
        return NULL;
    }
    double *periods = malloc((size_t)n * sizeof(double));
    if (!periods) return PyErr_NoMemory();
    int64_t period = (int64_t)llround(period_s * 1e9);
    int refused = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_t self = pthread_self();
    int policy;
    struct sched_param old;
    pthread_getschedparam(self, &policy, &old);
    if (priority > 0) {
        struct sched_param sp = {.sched_priority = priority};
        refused = pthread_setschedparam(self, SCHED_FIFO, &sp) != 0;
    }
    int64_t deadline = real_ns() + period, prev = 0;
    for (int i = 0; i < n; i++) {
        sleep_until_real(deadline);
        int64_t now = real_ns();
        periods[i] = prev ? (double)(now - prev) * 1e-9 : NAN;
        prev = now;
        deadline += period;
        if (now >= deadline) deadline += ((now - deadline) / period) * period;
    }
    pthread_setschedparam(self, policy, &old);
    Py_END_ALLOW_THREADS
    PyObject *out = PyList_New(0);
    for (int i = 1; out && i < n; i++) {
        PyObject *v = PyFloat_FromDouble(periods[i]);
        if (!v || PyList_Append(out, v) < 0) { Py_XDECREF(v); Py_CLEAR(out); }
        else Py_DECREF(v);
    }
    free(periods);
    if (out && refused) {
        Py_DECREF(out);
        PyErr_Format(PyExc_PermissionError, "bare_loop: SCHED_FIFO priority %d refused", priority);
        return NULL;
    }
    return out;
}

static PyMethodDef module_methods[] = {
    {"bare_loop", bare_loop, METH_VARARGS,
     "bare_loop(period_s, ticks, priority) -> periods of a bare periodic thread (the floor)"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject TickType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "liquid_control.ros." STR(CTICK_MODULE) ".Tick",
    .tp_basicsize = sizeof(Tick),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled control tick (see _ctick.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tick_init,
    .tp_dealloc = (destructor)Tick_dealloc,
    .tp_methods = Tick_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, STR(CTICK_MODULE),
                                    "The compiled control tick (see _ctick.c).", -1,
                                    module_methods};

PyMODINIT_FUNC CAT(PyInit_, CTICK_MODULE)(void) {
    if (PyType_Ready(&TickType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&TickType);
    if (PyModule_AddObject(m, "Tick", (PyObject *)&TickType) < 0 ||
        PyModule_AddStringConstant(m, "ROS_PREFIX", CTICK_PREFIX) < 0 ||
        PyModule_AddIntConstant(m, "GID_SIZE", RMW_GID_STORAGE_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
