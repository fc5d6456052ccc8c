/*
 * The safety core in C, header-only: the same decisions as liquid_control/core/safety.py
 * (SafetyCore.tick, safe_action, EstopGate.state), for the compiled control tick. The Python
 * module is the reference: test_native_safety.py runs arbitrary sequences through both and
 * requires the same commands, reasons and resets. Read that module for what each rule means.
 *
 * A tick is two calls, so that the caller steps the policy in between (and the core never
 * calls back into anything):
 *     int step = sc_decide(core, input, &dt, &reset);   1: step the policy with dt (reset first)
 *     sc_finish(core, input, raw_action, state_ok, out);   after the step (or with NULL: safe)
 */
#ifndef LIQUID_CONTROL_SAFETY_H
#define LIQUID_CONTROL_SAFETY_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#define SC_MAX_TOPICS 64

enum { SC_ZERO = 0, SC_HOLD = 1, SC_SPEC = 2 };

/* reason bits of a safe tick (Python's reasons, as flags) */
enum {
    SC_WAITING = 1 << 0,       /* waiting for inputs (nothing published) */
    SC_STALE = 1 << 1,         /* an input is stale or recovering */
    SC_ESTOP_UNKNOWN = 1 << 2, /* estop state not known yet */
    SC_ESTOP = 1 << 3,
    SC_DISABLED = 1 << 4,
    SC_JUMP_BACK = 1 << 5,     /* clock jumped back */
    SC_GAP = 1 << 6,           /* node-clock gap > max_dt_s */
    SC_WALL_GAP = 1 << 7,      /* no tick for watchdog_timeout_s of wall time */
    SC_LATCHED = 1 << 8,
    SC_NON_FINITE = 1 << 9,
};
/* latch kinds */
enum { SC_LATCH_NONE = 0, SC_LATCH_OBS = 1, SC_LATCH_STATE = 2, SC_LATCH_ACTION = 3 };
/* event bits */
enum { SC_EV_LATCH_CLEARED = 1 << 0, SC_EV_JUMP = 1 << 1 };

typedef struct {
    double sensor_timeout_s;
    int64_t resume_after_fresh_samples;
    int safe_action; /* SC_ZERO, SC_HOLD, SC_SPEC */
    int reset_on_resume;
    double max_action_rate;
    double blend_s;
    double max_dt_s;
    int use_measured_dt;
    double watchdog_timeout_s;
} sc_config;

/* What the core needs of a policy's spec (ActionSpace). Arrays owned by the caller. */
typedef struct {
    int m, s;
    const double *low, *high, *zero, *spec_safe; /* spec_safe may be NULL */
    const uint8_t *position;                      /* m */
    const int64_t *feedback;                      /* m: observation index, -1 = none */
    const double *act_lo, *act_hi;                /* m */
    const double *obs_lo, *obs_hi;                /* s */
} sc_space;

typedef struct {
    double now_s, wall_s;
    int topics;
    const double *received_s; /* per topic, NaN = nothing yet */
    const int64_t *count;     /* per topic */
    const double *raw;        /* s values, or NULL while waiting for inputs */
    int estop;                /* -1 unknown, 0 released, 1 engaged */
    int enabled;
    int reset_requested;
} sc_input;

typedef struct {
    sc_config cfg;
    sc_space space;
    double period_s;
    uint8_t topic_stale[SC_MAX_TOPICS];
    int64_t topic_count_at_stale[SC_MAX_TOPICS];
    int has_last;
    double last_now, last_wall;
    int has_prev;
    double *prev; /* m */
    int commanding, force_reset, resumed, policy_changed;
    int fade_active;
    double *fade_start; /* m */
    double fade_t0;
    int latch; /* SC_LATCH_* */
    int latch_index;
    double latch_value;
    int64_t steps;
    /* carried between decide and finish */
    double period, wall_gap;
    int has_period, has_wall_gap;
    int reasons, events;
    double dt;
} sc_core;

typedef struct {
    int publish;    /* 0: nothing (waiting for inputs) */
    int commanding; /* the policy's output */
    int reasons, events;
    double dt;      /* NaN: not stepped */
    int64_t steps;  /* of the hidden state, 0 on a safe tick */
} sc_result;

static inline double sc_clip(double x, double lo, double hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* safe_action(mode, space, last) */
static void sc_safe_action(const sc_core *c, double *out) {
    const sc_space *sp = &c->space;
    if (c->cfg.safe_action == SC_SPEC && sp->spec_safe) {
        memcpy(out, sp->spec_safe, (size_t)sp->m * sizeof(double));
        return;
    }
    if (c->cfg.safe_action == SC_HOLD && c->has_prev) {
        for (int j = 0; j < sp->m; j++) {
            double held = isfinite(c->prev[j]) ? c->prev[j] : sp->zero[j];
            out[j] = sp->position[j] ? sc_clip(held, sp->low[j], sp->high[j]) : sp->zero[j];
        }
        return;
    }
    memcpy(out, sp->zero, (size_t)sp->m * sizeof(double));
}

/* restart(): activation */
static void sc_restart(sc_core *c) {
    memset(c->topic_stale, 0, sizeof c->topic_stale);
    memset(c->topic_count_at_stale, 0, sizeof c->topic_count_at_stale);
    c->has_last = 0;
    c->has_prev = 0;
    c->commanding = 0;
    c->force_reset = 1;
    c->resumed = 0;
    c->fade_active = 0;
}

/* set_policy(): a swap (the new space must have the same m) */
static void sc_set_policy(sc_core *c, const sc_space *space) {
    c->space = *space;
    c->force_reset = 1;
    c->policy_changed = 1;
    if (c->has_prev)
        for (int j = 0; j < space->m; j++) c->prev[j] = sc_clip(c->prev[j], space->low[j], space->high[j]);
}

static void sc_make_safe(sc_core *c, double *action) {
    sc_safe_action(c, action);
    memcpy(c->prev, action, (size_t)c->space.m * sizeof(double));
    c->has_prev = 1;
    c->commanding = 0;
    c->resumed = 1;
}

/* Phase 1. Returns 1 when the policy must be stepped with *dt (after a reset if *reset), else 0
 * and the result is final (safe or waiting): call sc_finish(c, in, NULL, 0, action, res). */
static int sc_decide(sc_core *c, const sc_input *in, double *dt, int *reset) {
    const sc_config *cfg = &c->cfg;
    c->reasons = 0;
    c->events = 0;
    c->has_period = c->has_last;
    c->period = c->has_last ? in->now_s - c->last_now : 0.0;
    c->has_wall_gap = c->has_last;
    c->wall_gap = c->has_last ? in->wall_s - c->last_wall : 0.0;
    c->last_now = in->now_s;
    c->last_wall = in->wall_s;
    c->has_last = 1;
    if (in->reset_requested) {
        c->force_reset = 1;
        if (c->latch) {
            c->events |= SC_EV_LATCH_CLEARED;
            c->latch = SC_LATCH_NONE;
        }
    }
    /* inputs, with hysteresis */
    for (int t = 0; t < in->topics && t < SC_MAX_TOPICS; t++) {
        double r = in->received_s[t];
        if (isnan(r)) {
            c->reasons |= SC_STALE;
        } else if (in->now_s - r > cfg->sensor_timeout_s) {
            c->topic_stale[t] = 1;
            c->topic_count_at_stale[t] = in->count[t];
            c->reasons |= SC_STALE;
        } else if (c->topic_stale[t]) {
            if (in->count[t] - c->topic_count_at_stale[t] >= cfg->resume_after_fresh_samples)
                c->topic_stale[t] = 0;
            else
                c->reasons |= SC_STALE;
        }
    }
    if (!in->raw) {
        c->reasons = SC_WAITING; /* Python: only "waiting for inputs" */
        return 0;
    }
    if (in->estop < 0) c->reasons |= SC_ESTOP_UNKNOWN;
    else if (in->estop) c->reasons |= SC_ESTOP;
    if (!in->enabled) c->reasons |= SC_DISABLED;
    int jump = 0;
    if (c->has_period && c->period < 0) jump = SC_JUMP_BACK;
    else if (c->has_period && c->period > cfg->max_dt_s) jump = SC_GAP;
    else if (c->has_wall_gap && c->wall_gap > cfg->watchdog_timeout_s) jump = SC_WALL_GAP;
    if (jump) {
        c->reasons |= jump;
        c->events |= SC_EV_JUMP;
        c->force_reset = 1;
    }
    if (!c->latch && !c->reasons) {
        const sc_space *sp = &c->space;
        for (int i = 0; i < sp->s; i++)
            if (in->raw[i] < sp->obs_lo[i] || in->raw[i] > sp->obs_hi[i]) {
                c->latch = SC_LATCH_OBS;
                c->latch_index = i;
                c->latch_value = in->raw[i];
                break;
            }
    }
    if (c->latch) c->reasons |= SC_LATCHED;
    if (c->reasons) return 0;
    /* the policy may command */
    if (cfg->use_measured_dt && c->has_period && c->period > 0)
        *dt = c->period < cfg->max_dt_s ? c->period : cfg->max_dt_s;
    else
        *dt = c->period_s;
    c->dt = *dt;
    *reset = c->force_reset || (c->resumed && cfg->reset_on_resume);
    if (*reset) c->steps = 0;
    c->force_reset = c->resumed = 0;
    return 1;
}

/* Phase 2. raw_action: the policy's unclipped output (m), or NULL when sc_decide returned 0.
 * state_ok: the policy's hidden state lies inside its bounds. Writes the command into action
 * (unless nothing is published) and the result; returns 1 if the policy must be reset (a bad
 * output). */
static int sc_finish(sc_core *c, const sc_input *in, const double *raw_action, int state_ok,
                     double *action, sc_result *res) {
    const sc_config *cfg = &c->cfg;
    const sc_space *sp = &c->space;
    const int m = sp->m;
    int reset_policy = 0;
    res->events = c->events;
    res->dt = NAN;
    res->steps = 0;
    if (!raw_action) {
        res->reasons = c->reasons;
        res->commanding = 0;
        if (c->reasons & SC_WAITING) {
            res->publish = 0;
            return 0;
        }
        res->publish = 1;
        sc_make_safe(c, action);
        return 0;
    }
    c->steps += 1;
    res->dt = c->dt;
    int problem = 0;
    for (int j = 0; j < m; j++)
        if (!isfinite(raw_action[j])) problem = SC_NON_FINITE;
    if (!problem && !state_ok) {
        c->latch = SC_LATCH_STATE;
        c->latch_index = -1;
        problem = SC_LATCHED;
    }
    if (!problem)
        for (int j = 0; j < m; j++)
            if (raw_action[j] < sp->act_lo[j] || raw_action[j] > sp->act_hi[j]) {
                c->latch = SC_LATCH_ACTION;
                c->latch_index = j;
                c->latch_value = raw_action[j];
                problem = SC_LATCHED;
                break;
            }
    if (problem) {
        c->steps = 0;
        c->force_reset = 1;
        reset_policy = 1;
        res->reasons = problem;
        res->commanding = 0;
        res->publish = 1;
        sc_make_safe(c, action);
        return reset_policy;
    }
    for (int j = 0; j < m; j++) action[j] = sc_clip(raw_action[j], sp->low[j], sp->high[j]);
    /* fade */
    if (!c->commanding || c->policy_changed) {
        if (c->has_prev)
            memcpy(c->fade_start, c->prev, (size_t)m * sizeof(double));
        else
            sc_safe_action(c, c->fade_start);
        if (!c->commanding)
            for (int j = 0; j < m; j++)
                if (sp->feedback[j] >= 0) c->fade_start[j] = in->raw[sp->feedback[j]];
        for (int j = 0; j < m; j++) c->fade_start[j] = sc_clip(c->fade_start[j], sp->low[j], sp->high[j]);
        c->fade_active = 1;
        c->fade_t0 = in->now_s - c->period_s;
    }
    if (c->fade_active && cfg->blend_s > 0) {
        double alpha = (in->now_s - c->fade_t0) / cfg->blend_s;
        if (!(alpha < 1.0)) {
            c->fade_active = 0;
        } else {
            if (alpha < 0) alpha = 0;
            for (int j = 0; j < m; j++) action[j] = (1.0 - alpha) * c->fade_start[j] + alpha * action[j];
        }
    }
    if (cfg->max_action_rate > 0 && c->has_prev) {
        double step_s = (c->has_period && c->period > 0 && c->period <= cfg->max_dt_s) ? c->period : c->dt;
        double limit = cfg->max_action_rate * step_s;
        for (int j = 0; j < m; j++) action[j] = sc_clip(action[j], c->prev[j] - limit, c->prev[j] + limit);
    }
    for (int j = 0; j < m; j++) action[j] = sc_clip(action[j], sp->low[j], sp->high[j]);
    memcpy(c->prev, action, (size_t)m * sizeof(double));
    c->has_prev = 1;
    c->commanding = 1;
    c->policy_changed = 0;
    res->reasons = 0;
    res->commanding = 1;
    res->publish = 1;
    res->steps = c->steps;
    return 0;
}

/* The estop gate (EstopGate.state): -1 unknown, 0 released, 1 engaged. */
typedef struct {
    int required;
    double discovery_s, started_s;
    int remembered; /* -1 none, 0, 1 */
    int heard;
} sc_estop;

static int sc_estop_update(sc_estop *g, int engaged) {
    int changed = !g->heard || g->remembered != engaged;
    g->remembered = engaged ? 1 : 0;
    g->heard = 1;
    return changed;
}

/* detail: 0 none, 1 required and not heard, 2 a latched publisher's sample awaited, 3 looking */
static int sc_estop_state(const sc_estop *g, double now_s, int latched_publishers, int *detail) {
    *detail = 0;
    if (g->heard || g->remembered >= 0) return g->remembered > 0;
    if (g->required) { *detail = 1; return -1; }
    if (latched_publishers > 0) { *detail = 2; return -1; }
    if (now_s - g->started_s < g->discovery_s) { *detail = 3; return -1; }
    return 0;
}

#endif
