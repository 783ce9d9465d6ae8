/*
 * solver.c - exact placement optimizer (the problem is defined in omni_place.h).
 *
 * DP over one order. For an order (d_0 .. d_{m-1}) the homes of layers 0..L-1 read CPU^c, then a
 * range on d_0, a range on d_1, ...; the cost is a sum of per-layer terms, crossing terms between
 * consecutive homes and an output term, and each device's memory is a sum over its own layers.
 * "Level t of position j" means layers 0..t-1 are placed and layer t-1 is on d_j. Of a partial
 * plan there only the pair (memory used on d_j, time so far) matters for the rest, so the DP keeps
 * the Pareto frontier of those pairs (memory strictly up, time strictly down, at most budget+1
 * long): a pair with memory >= and time >= another's can be swapped for it in any completion.
 * Level t+1 is the Pareto merge, over the options of layer t, of the level-t states plus one
 * "d_j starts at layer t" state, each shifted by the option's (memory, cost).
 *
 * Positions only talk through scalars: closing position j at level t costs the frontier's least
 * time M_j[t] (every kept state fits the non-output budget), so d_j's start value at layer t is
 * min(CPU prefix + crossing, min_{j'<j} M_j'[t] + crossing); empty positions in between are free.
 * So one rolling frontier per position runs over all layers, and orders sharing a prefix share
 * those positions (orders are processed sorted). The output head sits on the position holding
 * layer L-1; its budget is checked at the end. Streaming is linear per layer, so
 * rate(order[0]) * stream is folded into the per-layer costs.
 *
 * Bounding (branch and bound on the DP). With UB the value of a complete feasible plan, a state
 * (mem, T) is dropped when T + LB > UB + margin, where LB bounds every completion from below. LB
 * is the larger of two relaxations over the devices that may still follow (in any order that
 * shares the sweep), plus the cheapest output head and the most negative crossings:
 *  - pooled: a fractional multiple-choice knapsack over the remaining layers, each option taking
 *    its least memory and least cost over those devices, all sharing their pooled memory;
 *  - Lagrangian: for prices lam_e >= 0 on each device's memory, the sum over layers of
 *    min_{e,o} (cost + lam_e * mem) minus sum_e lam_e * capacity_e. Prices come from a grid
 *    lam_e = max(0, P - k_e), k_e being device e's cost per memory unit (time ~ bytes/bandwidth
 *    makes that the right shape; any lam >= 0 gives a valid bound whatever the data).
 * Every real completion is feasible for both, so the optimal plan's states are never dropped and
 * the result stays exact; a margin of 1e-9 (|UB| + negative terms) absorbs rounding. UB comes
 * from a first, cheap pass of the same DP that keeps one state per memory bucket (its plans are
 * real and feasible, just not always optimal), then from each complete plan the exact pass finds.
 *
 * Per-layer options dominated by another option of the same layer (memory >= and cost >=) are
 * dropped up front, which collapses dense layers to one option. Parent pointers of every level are
 * kept per position, so the best plan is rebuilt by walking them back.
 */
#include "omni_place.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INF HUGE_VAL
#define BIG ((int64_t)1 << 62)   /* saturation value for sums of memory units */
#define GMAX 24                  /* price vectors of the Lagrangian bound */
#define THIN_BUCKETS 64          /* memory buckets per device in the upper-bound pass */

/* How the best plan of an order ends. */
enum { END_DEVICE = 0, END_ALL_CPU = 1, END_CPU_OUT_DEVICE = 2 };

/* Pareto frontier of one level; slot 0 holds the start state of the next layer, the level's states
 * are slots 1..n (mem strictly increasing, time strictly decreasing). */
typedef struct {
    int64_t *mem;
    double *time;
    size_t n;
    size_t cap;        /* states that fit in slots 1..cap */
} frontier;

/* Parent pointers of one position's sweep: entry of level t, slot s is at off[t] + s - 1. */
typedef struct {
    int32_t *par;      /* parent slot in level t-1 (0 = the layer starts the position) */
    uint8_t *opt;      /* option of layer t-1 (original index) */
    size_t n, cap;
} history;

/* One step of a layer's relaxed (memory, cost) hull, for the pooled bound. */
typedef struct {
    double slope;      /* dc / dm < 0 */
    double dc;
    int64_t dm;
    int32_t layer;
} incr_t;

/* Bound of one level, for a state using mem on the position's device. */
typedef struct {
    int on;
    double limit;      /* UB + margin */
    /* pooled: LB(r) for r = rbase - mem: base + the cheapest steps (by slope) fitting in r */
    int pooled;
    int64_t rbase;
    double base;
    double pslack;      /* rounding allowance subtracted from the pooled value */
    const int64_t *fdm; /* Fenwick trees over the steps in slope order */
    const double *fdc;
    const incr_t *inc;
    size_t n, top;      /* steps, highest power of two <= n */
    int flat;           /* 1: use the prefix arrays below instead (many queries this level) */
    const int64_t *cm;  /* [nf+1] prefix memory of the remaining steps */
    const double *cc;   /* [nf+1] prefix cost */
    const double *sl;   /* [nf] slopes */
    size_t nf;
    /* Lagrangian: max over lines la + lb * mem, slopes increasing (upper envelope) */
    double la[GMAX], lb[GMAX];
    int nl;
} bound_t;

typedef struct {
    const op_problem *p;
    int L, D, K;
    size_t row;        /* L + 1: stride of the per-position rows */
    int64_t limit;     /* max states held (frontiers + histories) */
    int64_t held;
    int64_t thin;      /* buckets per device in the upper-bound pass, 0 in the exact pass */

    /* Cache of the current order's positions, reused by the next order's common prefix. */
    int32_t *cseq;     /* [D] */
    int clen;
    double *M;         /* [D][L+1] least time of position j's frontier at level t (INF if empty) */
    int8_t *pred;      /* [D][L+1] origin of position j's start at layer t: -1 CPU, else position */
    double *fin;       /* [D] best value with layer L-1 and the output on position j */
    size_t *fin_slot;  /* [D] its slot at level L */
    size_t *hoff;      /* [D][L+2] level offsets into hist[j] */
    history *hist;     /* [D] */
    double *cpuc;      /* [L+1] CPU prefix cost incl. streaming at rate(cseq[0]) */
    int64_t *budget;   /* [D] non-output budget per position of the order being solved */

    /* Option table of the sweep in progress: per layer, non-dominated options by memory. */
    int64_t *om;       /* [L][K] */
    double *oc;        /* [L][K] */
    uint8_t *oi;       /* [L][K] original option index */
    uint8_t *no;       /* [L] */

    /* Bound of the sweep in progress over devices bdev[0] (the position's), then later ones. */
    int nb;
    int32_t *bdev;     /* [D] */
    int64_t *bbud;     /* [D] budgets */
    incr_t *inc;       /* [L*K] pooled steps sorted by slope */
    size_t n_inc;
    int64_t *sufm;     /* [L+1] sum of the suffix's least memories (BIG = a layer fits nowhere) */
    double *sufc;      /* [L+1] sum of their costs */
    int64_t *fdm;      /* [L*K+1] Fenwick tree of step memories, removed layers at 0 */
    double *fdc;       /* [L*K+1] Fenwick tree of step costs */
    int32_t *lsoff;    /* [L+1] steps of layer l: lspos[lsoff[l] .. lsoff[l+1]) */
    int32_t *lspos;    /* [L*K] their 1-based positions in slope order */
    int frem;          /* steps of layers < frem are removed */
    size_t nrem;       /* steps removed */
    int64_t *cm;       /* [L*K+1] prefix arrays of the remaining steps (flat mode) */
    double *cc;        /* [L*K+1] */
    double *sl;        /* [L*K] */
    int pooled;        /* 0 if step memories could overflow (the pooled bound is then off) */
    double *lsuf;      /* [L+1][GMAX] suffix sums over bdev of min (cost + price * mem) */
    double lconst[GMAX];  /* sum over bdev of price * budget */
    double lslope[GMAX];  /* price of the position's own memory */

    /* Lagrangian tables of every device, valid for one streaming rate. */
    int lvalid;
    double lrate;
    int ng;            /* price vectors */
    double *lam;       /* [D][GMAX] price of device e's memory in vector g */
    double *lf;        /* [D][L][GMAX] min over e's options of cost + price * mem (INF: none) */
    int64_t *tm;       /* [D][L][K] memory of each option (-1: forbidden or over cap - fixed) */
    double *tc;        /* [D][L][K] its cost incl. streaming */

    double ub;         /* value of the best complete plan found so far */
    double sneg;       /* magnitude of the negative terms a plan can hold */
    double pabs;       /* sum of the magnitudes of the pooled bound's terms (this sweep) */
    int64_t work_limit;   /* max states generated in all (bounds the running time) */
    double tneg;       /* min(0, smallest crossing cost) */

    frontier fa, fb;
    int64_t n_states;
    int64_t peak;
} ws_t;

const char *op_status_str(int status)
{
    switch (status) {
    case OP_OK: return "OK";
    case OP_INFEASIBLE: return "INFEASIBLE";
    case OP_EINVAL: return "EINVAL";
    case OP_ENOMEM: return "ENOMEM";
    default: return "UNKNOWN";
    }
}

static int fail(op_result *r, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->detail, sizeof r->detail, fmt, ap);
    va_end(ap);
    r->status = status;
    return status;
}

static int64_t sat_add(int64_t a, int64_t b)
{
    return a >= BIG - b ? BIG : a + b;  /* a, b in [0, BIG] */
}

/* ---------------------------------------------------------------------------------------------
 * Validation
 * ------------------------------------------------------------------------------------------ */

static int check_finite(op_result *r, const double *a, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(a[i]))
            return fail(r, OP_EINVAL, "%s[%zu] is not finite", name, i);
    return OP_OK;
}

static int check_units(op_result *r, const int64_t *a, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (a[i] < 0 || a[i] > OP_MAX_UNITS)
            return fail(r, OP_EINVAL, "%s[%zu] = %lld is outside 0..2^60", name, i,
                        (long long)a[i]);
    return OP_OK;
}

static int validate(const op_problem *p, op_result *r)
{
    int L = p->n_layers, D = p->n_devices, K = p->n_options;
    if (L < 1 || L > OP_MAX_LAYERS)
        return fail(r, OP_EINVAL, "n_layers = %d not in 1..%d", L, OP_MAX_LAYERS);
    if (D < 0 || D > OP_MAX_DEVICES)
        return fail(r, OP_EINVAL, "n_devices = %d not in 0..%d", D, OP_MAX_DEVICES);
    if (K < 1 || K > OP_MAX_OPTIONS)
        return fail(r, OP_EINVAL, "n_options = %d not in 1..%d", K, OP_MAX_OPTIONS);
    if (p->n_orders < 1)
        return fail(r, OP_EINVAL, "n_orders = %d, need >= 1", p->n_orders);
    if (p->max_states < 0)
        return fail(r, OP_EINVAL, "max_states = %lld is negative", (long long)p->max_states);
    if (r->home == NULL || r->option == NULL || (D > 0 && r->mem_used == NULL))
        return fail(r, OP_EINVAL, "a result buffer is NULL");
    if (p->time_cpu == NULL || (D > 0 && p->orders == NULL))
        return fail(r, OP_EINVAL, "a required array is NULL");
    if (D > 0 && (p->time == NULL || p->mem_dense == NULL || p->mem_exp == NULL ||
                  p->trans == NULL || p->out_time == NULL || p->out_mem == NULL ||
                  p->fixed_mem == NULL || p->first_mem == NULL || p->cap == NULL))
        return fail(r, OP_EINVAL, "a required array is NULL");

    size_t dlk = (size_t)D * L * K, dl = (size_t)D * L;
    int rc;
    if ((rc = check_finite(r, p->time_cpu, L, "time_cpu")) != OP_OK)
        return rc;
    if (!isfinite(p->out_time_cpu))
        return fail(r, OP_EINVAL, "out_time_cpu is not finite");
    if (p->stream && (rc = check_finite(r, p->stream, (size_t)L * K, "stream")) != OP_OK)
        return rc;
    if (p->stream_cpu && (rc = check_finite(r, p->stream_cpu, L, "stream_cpu")) != OP_OK)
        return rc;
    if (D > 0) {
        if ((rc = check_finite(r, p->time, dlk, "time")) != OP_OK ||
            (rc = check_finite(r, p->trans, (size_t)(D + 1) * (D + 1), "trans")) != OP_OK ||
            (rc = check_finite(r, p->out_time, D, "out_time")) != OP_OK ||
            (p->stream_rate &&
             (rc = check_finite(r, p->stream_rate, D, "stream_rate")) != OP_OK) ||
            (rc = check_units(r, p->mem_dense, dl, "mem_dense")) != OP_OK ||
            (rc = check_units(r, p->mem_exp, dlk, "mem_exp")) != OP_OK ||
            (rc = check_units(r, p->out_mem, D, "out_mem")) != OP_OK ||
            (rc = check_units(r, p->fixed_mem, D, "fixed_mem")) != OP_OK ||
            (rc = check_units(r, p->first_mem, D, "first_mem")) != OP_OK ||
            (rc = check_units(r, p->cap, D, "cap")) != OP_OK)
            return rc;
    }
    for (int i = 0; i < p->n_orders; i++) {
        const int32_t *row = p->orders + (size_t)i * D;
        uint64_t seen = 0;
        int ended = 0;
        for (int j = 0; j < D; j++) {
            int32_t d = row[j];
            if (d == -1) {
                ended = 1;
                continue;
            }
            if (ended || d < 0 || d >= D || (seen >> d) & 1u)
                return fail(r, OP_EINVAL, "orders[%d][%d] = %d: rows must hold distinct devices "
                            "in 0..%d, then -1 padding", i, j, (int)d, D - 1);
            seen |= (uint64_t)1 << d;
        }
    }
    return OP_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Memory (every state array counts against ws->limit)
 * ------------------------------------------------------------------------------------------ */

/* Room for `need` states in f, or for as many as the limit allows (the merge then reports
 * OP_ENOMEM only if the states really do not fit). */
static int fr_reserve(ws_t *w, frontier *f, size_t need)
{
    if (need <= f->cap)
        return OP_OK;
    int64_t avail = w->limit - w->held + (int64_t)f->cap;
    size_t nc = f->cap ? 2 * f->cap : 256;
    if (nc < need)
        nc = need;
    if ((int64_t)nc > avail)
        nc = avail > 0 ? (size_t)avail : 0;
    if (nc <= f->cap)
        return OP_OK;
    int64_t *m = realloc(f->mem, (nc + 1) * sizeof *m);
    if (!m)
        return OP_ENOMEM;
    f->mem = m;
    double *t = realloc(f->time, (nc + 1) * sizeof *t);
    if (!t)
        return OP_ENOMEM;
    f->time = t;
    w->held += (int64_t)(nc - f->cap);
    f->cap = nc;
    return OP_OK;
}

/* Room for `need` more entries in h, same policy; *room = entries available. */
static int hist_reserve(ws_t *w, history *h, size_t need, size_t *room)
{
    if (h->n + need > h->cap) {
        int64_t avail = w->limit - w->held + (int64_t)h->cap;
        size_t nc = h->cap ? 2 * h->cap : 4096;
        if (nc < h->n + need)
            nc = h->n + need;
        if ((int64_t)nc > avail)
            nc = avail > 0 ? (size_t)avail : 0;
        if (nc > h->cap) {
            int32_t *pa = realloc(h->par, nc * sizeof *pa);
            if (!pa)
                return OP_ENOMEM;
            h->par = pa;
            uint8_t *o = realloc(h->opt, nc * sizeof *o);
            if (!o)
                return OP_ENOMEM;
            h->opt = o;
            w->held += (int64_t)(nc - h->cap);
            h->cap = nc;
        }
    }
    *room = h->cap - h->n;
    return OP_OK;
}

static void ws_free(ws_t *w)
{
    if (w->hist)
        for (int j = 0; j < w->D; j++) {
            free(w->hist[j].par);
            free(w->hist[j].opt);
        }
    free(w->hist); free(w->hoff);
    free(w->cseq); free(w->M); free(w->pred); free(w->fin); free(w->fin_slot); free(w->cpuc);
    free(w->budget); free(w->bdev); free(w->bbud);
    free(w->om); free(w->oc); free(w->oi); free(w->no);
    free(w->inc); free(w->sufm); free(w->sufc); free(w->fdm); free(w->fdc);
    free(w->lsoff); free(w->lspos);
    free(w->cm); free(w->cc); free(w->sl);
    free(w->lsuf); free(w->lam); free(w->lf); free(w->tm); free(w->tc);
    free(w->fa.mem); free(w->fa.time); free(w->fb.mem); free(w->fb.time);
}

/* Fixed-size workspace: O(D*L*(K + GMAX)) numbers (at most ~20 MB at the dimension limits). */
static int ws_alloc(ws_t *w)
{
    size_t D = w->D > 0 ? (size_t)w->D : 1, L = (size_t)w->L, LK = L * w->K, row = w->row;
    w->hist = calloc(D, sizeof *w->hist);
    w->hoff = malloc(D * (row + 1) * sizeof *w->hoff);
    w->cseq = malloc(D * sizeof *w->cseq);
    w->M = malloc(D * row * sizeof *w->M);
    w->pred = malloc(D * row * sizeof *w->pred);
    w->fin = malloc(D * sizeof *w->fin);
    w->fin_slot = malloc(D * sizeof *w->fin_slot);
    w->cpuc = malloc(row * sizeof *w->cpuc);
    w->budget = malloc(D * sizeof *w->budget);
    w->bdev = malloc(D * sizeof *w->bdev);
    w->bbud = malloc(D * sizeof *w->bbud);
    w->om = malloc(LK * sizeof *w->om);
    w->oc = malloc(LK * sizeof *w->oc);
    w->oi = malloc(LK * sizeof *w->oi);
    w->no = malloc(L * sizeof *w->no);
    w->inc = malloc(LK * sizeof *w->inc);
    w->sufm = malloc(row * sizeof *w->sufm);
    w->sufc = malloc(row * sizeof *w->sufc);
    w->fdm = malloc((LK + 1) * sizeof *w->fdm);
    w->fdc = malloc((LK + 1) * sizeof *w->fdc);
    w->lsoff = malloc(row * sizeof *w->lsoff);
    w->lspos = malloc(LK * sizeof *w->lspos);
    w->cm = malloc((LK + 1) * sizeof *w->cm);
    w->cc = malloc((LK + 1) * sizeof *w->cc);
    w->sl = malloc(LK * sizeof *w->sl);
    w->lsuf = malloc(row * GMAX * sizeof *w->lsuf);
    w->lam = malloc(D * GMAX * sizeof *w->lam);
    w->lf = malloc(D * L * GMAX * sizeof *w->lf);
    w->tm = malloc(D * LK * sizeof *w->tm);
    w->tc = malloc(D * LK * sizeof *w->tc);
    if (!w->hist || !w->hoff || !w->cseq || !w->M || !w->pred || !w->fin || !w->fin_slot ||
        !w->cpuc || !w->budget || !w->bdev || !w->bbud || !w->om || !w->oc || !w->oi ||
        !w->no || !w->inc || !w->sufm || !w->sufc || !w->fdm || !w->fdc || !w->lsoff ||
        !w->lspos || !w->cm || !w->cc || !w->sl || !w->lsuf || !w->lam || !w->lf || !w->tm ||
        !w->tc)
        return OP_ENOMEM;
    return OP_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Per-sweep tables
 * ------------------------------------------------------------------------------------------ */

static double opt_cost(const op_problem *p, int L, int K, int d, int l, int o, double rate)
{
    size_t ix = ((size_t)d * L + l) * K + o;
    double c = p->time[ix];
    if (p->stream && rate != 0.0)
        c += rate * p->stream[(size_t)l * K + o];
    return c;
}

/* Memory of option o of layer l on d if allowed and within B, else -1. */
static int64_t opt_mem(const op_problem *p, int L, int K, int d, int l, int o, int64_t B)
{
    size_t ix = ((size_t)d * L + l) * K + o;
    if (p->allow && !p->allow[ix])
        return -1;
    int64_t m = p->mem_dense[(size_t)d * L + l] + p->mem_exp[ix];  /* <= 2^61 */
    return m <= B ? m : -1;
}

/* Sort n points by (mem, cost, index) and keep the Pareto ones (mem up, cost strictly down). */
static int pareto_points(int64_t *m, double *c, uint8_t *ix, int n)
{
    for (int i = 1; i < n; i++) {
        int64_t mm = m[i];
        double cv = c[i];
        uint8_t iv = ix[i];
        int k = i;
        while (k > 0 && (m[k - 1] > mm || (m[k - 1] == mm && c[k - 1] > cv))) {
            m[k] = m[k - 1];
            c[k] = c[k - 1];
            ix[k] = ix[k - 1];
            k--;
        }
        m[k] = mm;
        c[k] = cv;
        ix[k] = iv;
    }
    int kept = 0;
    for (int k = 0; k < n; k++) {
        if (kept > 0 && c[k] >= c[kept - 1])
            continue;
        m[kept] = m[k];
        c[kept] = c[k];
        ix[kept] = ix[k];
        kept++;
    }
    return kept;
}

/* Lower convex hull of Pareto points (mem up, cost down), in place: the only minimizers of
 * cost + lam * mem for lam >= 0. Returns the number of hull points. */
static int lower_hull(int64_t *m, double *c, int n)
{
    int h = n > 0 ? 1 : 0;
    for (int k = 1; k < n; k++) {
        while (h >= 2 && (c[h - 1] - c[h - 2]) * (double)(m[k] - m[h - 1]) >=
                             (c[k] - c[h - 1]) * (double)(m[h - 1] - m[h - 2]))
            h--;
        m[h] = m[k];
        c[h] = c[k];
        h++;
    }
    return h;
}

/* Allowed options of layer l on device d within B, as Pareto points; returns their number.
 * Reads the option tables, which must be valid for the rate (prepare_lagrange). */
static int layer_points(const ws_t *w, int d, int l, int64_t B, int64_t *m, double *c,
                        uint8_t *ix)
{
    int n = 0;
    size_t base = ((size_t)d * w->L + l) * w->K;
    for (int o = 0; o < w->K; o++) {
        int64_t mm = w->tm[base + o];
        if (mm < 0 || mm > B)
            continue;
        m[n] = mm;
        c[n] = w->tc[base + o];
        ix[n] = (uint8_t)o;
        n++;
    }
    return pareto_points(m, c, ix, n);
}

/* Option table of every layer on device d within budget B. */
static void build_options(ws_t *w, int d, int64_t B)
{
    for (int l = 0; l < w->L; l++) {
        size_t base = (size_t)l * w->K;
        w->no[l] = (uint8_t)layer_points(w, d, l, B, w->om + base, w->oc + base, w->oi + base);
    }
}

static int incr_cmp(const void *a, const void *b)
{
    const incr_t *x = a, *y = b;
    if (x->slope != y->slope)
        return x->slope < y->slope ? -1 : 1;
    return (x->layer > y->layer) - (x->layer < y->layer);
}

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Lagrangian tables of every device for one streaming rate. Price vectors: lam_e = max(0, P - k_e)
 * with k_e device e's cost per memory unit (every option at its largest), P on a grid: 0, the k_e,
 * and above the largest k_e by halving fractions of the steepest option step. */
static void prepare_lagrange(ws_t *w, double rate)
{
    const op_problem *p = w->p;
    int L = w->L, D = w->D;
    int64_t pm[OP_MAX_OPTIONS];
    double pc[OP_MAX_OPTIONS], kappa[OP_MAX_DEVICES], ks[OP_MAX_DEVICES], grid[GMAX];
    uint8_t px[OP_MAX_OPTIONS];
    double kmax = 0.0, smax = 0.0;
    for (int e = 0; e < D; e++) {
        int64_t Be = p->cap[e] - p->fixed_mem[e];
        for (int l = 0; l < L; l++)
            for (int o = 0; o < w->K; o++) {
                size_t ix = ((size_t)e * L + l) * w->K + o;
                w->tm[ix] = opt_mem(p, L, w->K, e, l, o, Be);
                w->tc[ix] = opt_cost(p, L, w->K, e, l, o, rate);
            }
    }
    w->lvalid = 1;
    w->lrate = rate;
    for (int e = 0; e < D; e++) {
        int64_t Be = p->cap[e] - p->fixed_mem[e];
        double sm = 0.0, sc = 0.0;
        for (int l = 0; l < L && Be >= 0; l++) {
            int n = layer_points(w, e, l, Be, pm, pc, px);
            if (n == 0)
                continue;
            sm += (double)pm[n - 1];
            sc += pc[n - 1];
            n = lower_hull(pm, pc, n);
            if (n >= 2 && (pc[0] - pc[1]) / (double)(pm[1] - pm[0]) > smax)
                smax = (pc[0] - pc[1]) / (double)(pm[1] - pm[0]);
        }
        kappa[e] = sm > 0.0 && sc > 0.0 ? sc / sm : 0.0;
        ks[e] = kappa[e];
        if (kappa[e] > kmax)
            kmax = kappa[e];
    }
    qsort(ks, (size_t)D, sizeof *ks, dbl_cmp);
    int ng = 0;
    grid[ng++] = 0.0;
    int keep = D < GMAX / 2 ? D : GMAX / 2;  /* spread over the sorted k_e */
    for (int q = 0; q < keep; q++)
        grid[ng++] = ks[keep > 1 ? (size_t)q * (D - 1) / (keep - 1) : 0];
    for (int q = 0; ng < GMAX && smax > 0.0; q++)
        grid[ng++] = kmax + smax * ldexp(1.0, -q);
    qsort(grid, (size_t)ng, sizeof *grid, dbl_cmp);
    int u = 0;
    for (int g = 0; g < ng; g++)
        if (u == 0 || grid[g] > grid[u - 1])
            grid[u++] = grid[g];
    w->ng = ng = u;

    for (int e = 0; e < D; e++) {
        int64_t Be = p->cap[e] - p->fixed_mem[e];
        double *lam = w->lam + (size_t)e * GMAX;
        for (int g = 0; g < GMAX; g++)
            lam[g] = g < ng && grid[g] > kappa[e] ? grid[g] - kappa[e] : 0.0;
        for (int l = 0; l < L; l++) {
            double *f = w->lf + ((size_t)e * L + l) * GMAX;
            int n = Be >= 0 ? layer_points(w, e, l, Be, pm, pc, px) : 0;
            n = lower_hull(pm, pc, n);
            for (int g = 0; g < GMAX; g++) {
                double best = g < ng ? INF : 0.0;  /* unused vectors stay 0 */
                for (int k = 0; k < n && g < ng; k++) {
                    double v = pc[k] + lam[g] * (double)pm[k];
                    if (v < best)
                        best = v;
                }
                f[g] = best;
            }
        }
    }
}

/* Bound tables for the devices bdev[0..nb) (budgets bbud): the pooled relaxation (per option the
 * least memory and cost over those devices, lower convex hull, steps sorted by slope) and the
 * Lagrangian suffix sums. */
static void build_bound(ws_t *w, int nb, double rate)
{
    int L = w->L, K = w->K;
    if (!w->lvalid || w->lrate != rate)
        prepare_lagrange(w, rate);
    w->nb = nb;
    w->n_inc = 0;
    w->pabs = 0.0;
    w->sufm[L] = 0;
    w->sufc[L] = 0.0;
    for (int l = L - 1; l >= 0; l--) {
        int64_t pm[OP_MAX_OPTIONS];
        double pc[OP_MAX_OPTIONS];
        uint8_t px[OP_MAX_OPTIONS];
        int n = 0;
        for (int o = 0; o < K; o++) {
            int64_t bm = -1;
            double bc = INF;
            for (int i = 0; i < nb; i++) {
                size_t ix = ((size_t)w->bdev[i] * L + l) * K + o;
                int64_t mm = w->tm[ix];
                if (mm < 0 || mm > w->bbud[i])
                    continue;
                double c = w->tc[ix];
                if (bm < 0 || mm < bm)
                    bm = mm;
                if (c < bc)
                    bc = c;
            }
            if (bm >= 0) {
                pm[n] = bm;
                pc[n] = bc;
                px[n] = (uint8_t)o;
                n++;
            }
        }
        if (n == 0) {
            w->sufm[l] = BIG;  /* layer l fits on none of these devices */
            w->sufc[l] = w->sufc[l + 1];
            continue;
        }
        n = lower_hull(pm, pc, pareto_points(pm, pc, px, n));
        for (int k = 1; k < n; k++) {
            incr_t *s = &w->inc[w->n_inc++];
            s->dm = pm[k] - pm[k - 1];
            s->dc = pc[k] - pc[k - 1];
            s->slope = s->dc / (double)s->dm;
            s->layer = l;
            w->pabs += fabs(s->dc);
        }
        w->sufm[l] = sat_add(w->sufm[l + 1], pm[0]);
        w->sufc[l] = w->sufc[l + 1] + pc[0];
        w->pabs += fabs(pc[0]);
    }
    size_t n = w->n_inc;
    if (n > 1)
        qsort(w->inc, n, sizeof *w->inc, incr_cmp);
    /* Fenwick trees over the steps in slope order, and where each layer's steps sit */
    int64_t total = 0;
    for (int l = 0; l <= L; l++)
        w->lsoff[l] = 0;
    for (size_t i = 0; i < n; i++) {
        w->fdm[i + 1] = w->inc[i].dm;
        w->fdc[i + 1] = w->inc[i].dc;
        total = sat_add(total, w->inc[i].dm);
        w->lsoff[w->inc[i].layer + 1]++;
    }
    for (int l = 0; l < L; l++)
        w->lsoff[l + 1] += w->lsoff[l];
    for (size_t i = 0; i < n; i++) {
        int l = w->inc[i].layer;
        w->lspos[w->lsoff[l]++] = (int32_t)(i + 1);
    }
    for (int l = L; l > 0; l--)  /* the fill advanced each start to the next one's */
        w->lsoff[l] = w->lsoff[l - 1];
    w->lsoff[0] = 0;
    for (size_t i = 1; i <= n; i++) {
        size_t j = i + (i & (~i + 1));
        if (j <= n) {
            w->fdm[j] += w->fdm[i];
            w->fdc[j] += w->fdc[i];
        }
    }
    w->frem = 0;
    w->nrem = 0;
    w->pooled = total < BIG;

    int ng = w->ng;
    for (int g = 0; g < ng; g++) {
        double lc = 0.0;
        for (int i = 0; i < nb; i++)
            lc += w->lam[(size_t)w->bdev[i] * GMAX + g] * (double)w->bbud[i];
        w->lconst[g] = lc;
        w->lslope[g] = w->lam[(size_t)w->bdev[0] * GMAX + g];
    }
    for (int g = 0; g < GMAX; g++)
        w->lsuf[(size_t)L * GMAX + g] = 0.0;
    for (int l = L - 1; l >= 0; l--) {  /* whole GMAX rows: fixed trip counts vectorize */
        double *dst = w->lsuf + (size_t)l * GMAX;
        const double *src = dst + GMAX;
        const double *f0 = w->lf + ((size_t)w->bdev[0] * L + l) * GMAX;
        for (int g = 0; g < GMAX; g++)
            dst[g] = f0[g];
        for (int i = 1; i < nb; i++) {
            const double *f = w->lf + ((size_t)w->bdev[i] * L + l) * GMAX;
            for (int g = 0; g < GMAX; g++)
                dst[g] = f[g] < dst[g] ? f[g] : dst[g];
        }
        for (int g = 0; g < GMAX; g++)
            dst[g] += src[g];
    }
}

/* Bound for the states of level t (layers t..L-1 to place) of the sweep's position; about
 * `queries` states will ask for it. */
static void level_bound(ws_t *w, bound_t *b, int t, int64_t pool, double extra, size_t queries)
{
    b->on = 0;
    b->limit = INF;
    b->pooled = 0;
    b->rbase = 0;
    b->base = 0.0;
    b->pslack = 0.0;
    b->fdm = w->fdm;
    b->fdc = w->fdc;
    b->inc = w->inc;
    b->n = w->n_inc;
    b->top = 1;
    while (b->top * 2 <= b->n)
        b->top *= 2;
    b->nl = 0;
    b->flat = 0;
    b->cm = w->cm;
    b->cc = w->cc;
    b->sl = w->sl;
    b->nf = 0;
    if (!(w->ub < INF))
        return;
    b->on = 1;
    /* Rounding: every sum compared here has <= L + 4 terms of magnitude <= X (or, for the
     * pooled bound, <= pabs in all), so its error is < 1e-13 X; the margin is 1e-9 X. */
    double X = fabs(w->ub) + w->sneg;
    b->limit = w->ub + 1e-9 * X + 1e-300;
    b->pslack = 1e-12 * w->pabs;
    b->rbase = w->sufm[t] >= BIG ? -1 : pool - w->sufm[t];
    if (b->rbase < 0)
        return;  /* nothing fits: every state of the level is dropped */
    for (; w->frem < t; w->frem++) {  /* drop the steps of placed layers */
        for (int32_t k = w->lsoff[w->frem]; k < w->lsoff[w->frem + 1]; k++) {
            const incr_t *s = &w->inc[w->lspos[k] - 1];
            for (size_t i = (size_t)w->lspos[k]; i <= b->n; i += i & (~i + 1)) {
                w->fdm[i] -= s->dm;
                w->fdc[i] -= s->dc;
            }
            w->nrem++;
        }
    }
    b->pooled = w->pooled;
    b->base = w->sufc[t] + extra;
    b->flat = 0;
    size_t left = b->n - w->nrem;
    if (b->pooled && queries * 4 >= left) {  /* prefix arrays: O(steps) once, O(1) per query */
        size_t nf = 0;
        w->cm[0] = 0;
        w->cc[0] = 0.0;
        for (size_t i = 0; i < b->n; i++) {
            const incr_t *s = &w->inc[i];
            if (s->layer < t)
                continue;
            w->sl[nf] = s->slope;
            w->cm[nf + 1] = w->cm[nf] + s->dm;
            w->cc[nf + 1] = w->cc[nf] + s->dc;
            nf++;
        }
        b->flat = 1;
        b->cm = w->cm;
        b->cc = w->cc;
        b->sl = w->sl;
        b->nf = nf;
    }
    /* Lagrangian lines LB = la + lb * mem (lb = price of the position's own memory), reduced to
     * their upper envelope; a wrong envelope would only weaken the bound, never break it. */
    const double *suf = w->lsuf + (size_t)t * GMAX;
    int nl = 0;
    for (int g = 0; g < w->ng; g++) {  /* prices, hence slopes, increase with g */
        if (w->lconst[g] > 1e3 * X)
            continue;  /* prices too high: rounding could exceed the margin */
        double a = suf[g] - w->lconst[g] + extra;
        double s = w->lslope[g];
        if (nl > 0 && s == b->lb[nl - 1]) {
            if (a <= b->la[nl - 1])
                continue;
            nl--;
        }
        while (nl >= 2) {
            /* drop the middle line if it never beats the outer two */
            double x12 = (b->la[nl - 2] - b->la[nl - 1]) / (b->lb[nl - 1] - b->lb[nl - 2]);
            double x13 = (b->la[nl - 2] - a) / (s - b->lb[nl - 2]);
            if (x13 <= x12)
                nl--;
            else
                break;
        }
        b->la[nl] = a;
        b->lb[nl] = s;
        nl++;
    }
    b->nl = nl;
}

/* ---------------------------------------------------------------------------------------------
 * The merge of one level
 * ------------------------------------------------------------------------------------------ */

/* Number of slots in [lo, hi) with mem <= lim (mem sorted increasing). */
static size_t count_le(const int64_t *mem, size_t lo, size_t hi, int64_t lim)
{
    size_t a = lo, b = hi;
    while (a < b) {
        size_t mid = a + (b - a) / 2;
        if (mem[mid] <= lim)
            a = mid + 1;
        else
            b = mid;
    }
    return a;
}

/* First slot j in (i, end) with stime[j] + oc < best, or end (stime decreasing from i, where the
 * test fails): galloping, then bisection. */
static size_t skip_dominated(const double *stime, size_t i, size_t end, double oc, double best)
{
    size_t lo = i, hi, step = 1;
    for (;;) {
        hi = lo + step;
        if (hi >= end) {
            hi = end;
            break;
        }
        if (stime[hi] + oc < best)
            break;
        lo = hi;
        step *= 2;
    }
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (stime[mid] + oc < best)
            hi = mid;
        else
            lo = mid;
    }
    return hi;
}

/* dst = Pareto front of the union over options k of src slots [base, src->n] shifted by
 * (om[k], oc[k]), with mem <= B and, when b->on, T + LB <= limit. Each shifted list is sorted by
 * (mem, time), so a k-way merge in (mem, time) order that keeps a state iff its time beats all
 * earlier ones is exact; a head that fails the test skips, by galloping, all its successors that
 * would fail too (times fall along a list). A dropped state still raises the bar: what it
 * dominates has a bound at least as high. Parents and options go to h (exact pass). With q > 0
 * (upper-bound pass) only the fastest state of each memory bucket [k*q, (k+1)*q) is kept. */
static int merge_level(ws_t *w, const frontier *src, size_t base, frontier *dst, history *h,
                       const int64_t *om, const double *oc, const uint8_t *oi, int nk,
                       int64_t B, const bound_t *b, int64_t q)
{
    size_t cur[OP_MAX_OPTIONS], end[OP_MAX_OPTIONS];
    int64_t hm[OP_MAX_OPTIONS];
    double ht[OP_MAX_OPTIONS];
    const int64_t *smem = src->mem;
    const double *stime = src->time;
    size_t top = src->n + 1, upper = 0;
    dst->n = 0;
    if (nk == 0)
        return OP_OK;  /* the layer fits nowhere on this device */
    for (int k = 0; k < nk; k++) {
        cur[k] = base;
        end[k] = count_le(smem, base, top, B - om[k]);
        upper += end[k] - base;
        hm[k] = cur[k] < end[k] ? smem[cur[k]] + om[k] : INT64_MAX;
        ht[k] = cur[k] < end[k] ? stime[cur[k]] + oc[k] : 0.0;
    }
    if ((uint64_t)upper > (uint64_t)B + 1)
        upper = (size_t)B + 1;  /* at most one state per memory value */
    if (q > 0 && (uint64_t)upper > (uint64_t)(B / q) + 1)
        upper = (size_t)(B / q) + 1;
    int rc = fr_reserve(w, dst, upper);
    if (rc != OP_OK)
        return rc;
    size_t room = dst->cap;
    int32_t *hpar = NULL;
    uint8_t *hopt = NULL;
    if (h) {
        size_t hroom;
        rc = hist_reserve(w, h, upper, &hroom);
        if (rc != OP_OK)
            return rc;
        if (hroom < room)
            room = hroom;
        hpar = h->par + h->n;
        hopt = h->opt + h->n;
    }

    int64_t *dmem = dst->mem;
    double *dtime = dst->time;
    size_t n = 0, kp = b->flat ? b->nf : 0;
    int lp = 0;
    double best = INF;
    for (;;) {
        int kb = 0;
        for (int k = 1; k < nk; k++)
            if (hm[k] < hm[kb] || (hm[k] == hm[kb] && ht[k] < ht[kb]))
                kb = k;
        int64_t bm = hm[kb];
        if (bm == INT64_MAX)
            break;
        double bt = ht[kb];
        size_t c = cur[kb] + 1;
        if (bt < best) {
            best = bt;
            int keep = 1;
            if (b->on) {
                int64_t r = b->rbase - bm;
                if (r < 0)
                    break;  /* later states use even more memory */
                double lbv = b->base - b->pslack;
                if (b->flat) {  /* r only shrinks during the merge: walk back */
                    while (kp > 0 && b->cm[kp] > r)
                        kp--;
                    lbv += b->cc[kp];
                    if (kp < b->nf)
                        lbv += (double)(r - b->cm[kp]) * b->sl[kp];
                } else if (b->pooled) {  /* Fenwick descent: longest slope-order prefix in r */
                    size_t idx = 0;
                    int64_t sm = 0;
                    for (size_t step = b->top; step > 0 && b->n > 0; step >>= 1) {
                        size_t nx = idx + step;
                        if (nx <= b->n && sm + b->fdm[nx] <= r) {
                            idx = nx;
                            sm += b->fdm[nx];
                            lbv += b->fdc[nx];
                        }
                    }
                    if (idx < b->n)  /* step idx+1 is present and does not fit: a fraction */
                        lbv += (double)(r - sm) * b->inc[idx].slope;
                }
                if (b->nl > 0) {
                    double x = (double)bm;
                    while (lp + 1 < b->nl &&
                           b->la[lp + 1] + b->lb[lp + 1] * x >= b->la[lp] + b->lb[lp] * x)
                        lp++;
                    double v = b->la[lp] + b->lb[lp] * x;
                    if (v > lbv)
                        lbv = v;
                }
                keep = bt + lbv <= b->limit;
            }
            if (keep) {
                if (q == 0 || n == 0 || bm / q != dmem[n] / q) {
                    if (n == room)
                        return OP_ENOMEM;
                    n++;
                }
                dmem[n] = bm;
                dtime[n] = bt;
                if (hpar) {
                    hpar[n - 1] = (int32_t)cur[kb];
                    hopt[n - 1] = oi[kb];
                }
            }
        } else if (c > 1 && c < end[kb]) {  /* slot 0 (the start) may precede slower states */
            c = skip_dominated(stime, cur[kb], end[kb], oc[kb], best);
        }
        cur[kb] = c;
        if (c < end[kb]) {
            hm[kb] = smem[c] + om[kb];
            ht[kb] = stime[c] + oc[kb];
        } else {
            hm[kb] = INT64_MAX;
        }
    }
    dst->n = n;
    if (h)
        h->n += n;
    w->n_states += (int64_t)n;
    if (w->n_states > w->work_limit)
        return OP_ENOMEM;
    if ((int64_t)n > w->peak)
        w->peak = (int64_t)n;
    return OP_OK;
}

/* ---------------------------------------------------------------------------------------------
 * The sweep of one position
 * ------------------------------------------------------------------------------------------ */

/* Run position pos of order seq over all layers: start values from the CPU prefix and the M rows
 * of earlier positions, then M[pos][*], pred[pos][*], fin[pos] and (exact pass) the history.
 * The sweep is reused by every order sharing seq[0..pos], so its bound relaxes over all devices
 * that follow pos in any of them (`later`, a device mask) and up to max_m positions. */
static int sweep(ws_t *w, const int32_t *seq, int pos, uint64_t later, int max_m)
{
    const op_problem *p = w->p;
    int L = w->L, K = w->K, D = w->D;
    int d = seq[pos];
    int64_t B = w->budget[pos];
    int64_t q = 0;
    if (w->thin) {
        q = B / w->thin;
        if (q < 1)
            q = 1;
    }
    double rate = p->stream_rate ? p->stream_rate[seq[0]] : 0.0;
    const double *tr = p->trans;
    size_t row = w->row, ts = (size_t)D + 1;
    double *Mrow = w->M + pos * row;
    int8_t *Prow = w->pred + pos * row;
    size_t *off = w->hoff + pos * (row + 1);
    history *h = w->thin ? NULL : &w->hist[pos];

    if (!w->lvalid || w->lrate != rate)
        prepare_lagrange(w, rate);
    build_options(w, d, B);
    /* devices the rest may use, their pooled memory (less the smallest output memory) and the
     * cheapest output head */
    int nb = 0;
    w->bdev[nb] = d;
    w->bbud[nb++] = B;
    for (int e = 0; e < D; e++) {
        int64_t Be = p->cap[e] - p->fixed_mem[e];
        if (e != d && ((later >> e) & 1u) && Be >= 0) {
            w->bdev[nb] = e;
            w->bbud[nb++] = Be;
        }
    }
    build_bound(w, nb, rate);
    int64_t pool = 0, out_min = BIG;
    double out_t = INF;
    for (int i = 0; i < nb; i++) {
        pool = sat_add(pool, w->bbud[i]);
        if (p->out_mem[w->bdev[i]] < out_min)
            out_min = p->out_mem[w->bdev[i]];
        if (p->out_time[w->bdev[i]] < out_t)
            out_t = p->out_time[w->bdev[i]];
    }
    pool = pool >= BIG ? BIG : pool - out_min;
    double extra = out_t + w->tneg * (double)(max_m - pos);

    frontier *cur = &w->fa, *nxt = &w->fb;
    int rc = fr_reserve(w, cur, 1);
    if (rc == OP_OK)
        rc = fr_reserve(w, nxt, 1);
    if (rc != OP_OK || cur->cap < 1 || nxt->cap < 1)
        return OP_ENOMEM;
    cur->n = 0;
    if (h)
        h->n = 0;
    off[0] = off[1] = 0;
    Mrow[0] = INF;

    for (int t = 0; t < L; t++) {
        int8_t pr = -1;
        double S = t == 0 ? 0.0 : w->cpuc[t] + tr[(size_t)D * ts + d];
        for (int j = 0; j < pos; j++) {
            double v = w->M[j * row + t] + tr[(size_t)seq[j] * ts + d];
            if (v < S) {
                S = v;
                pr = (int8_t)j;
            }
        }
        Prow[t] = pr;
        cur->mem[0] = 0;
        cur->time[0] = S;
        size_t base = (cur->n >= 1 && cur->mem[1] == 0 && cur->time[1] <= S) ? 1 : 0;
        bound_t b;
        level_bound(w, &b, t + 1, pool, extra, (cur->n + 1) * w->no[t]);
        size_t ob = (size_t)t * K;
        rc = merge_level(w, cur, base, nxt, h, w->om + ob, w->oc + ob, w->oi + ob, w->no[t],
                         B, &b, q);
        if (rc != OP_OK)
            return rc;
        off[t + 2] = h ? h->n : 0;
        Mrow[t + 1] = nxt->n ? nxt->time[nxt->n] : INF;
        frontier *tmp = cur;
        cur = nxt;
        nxt = tmp;
    }
    int64_t bout = B - p->out_mem[d];
    size_t k = bout < 0 ? 1 : count_le(cur->mem, 1, cur->n + 1, bout);
    w->fin[pos] = k > 1 ? cur->time[k - 1] + p->out_time[d] : INF;
    w->fin_slot[pos] = k - 1;
    if (w->fin[pos] < w->ub)
        w->ub = w->fin[pos];
    return OP_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Orders and plans
 * ------------------------------------------------------------------------------------------ */

static int seq_len(const int32_t *row, int D)
{
    int m = 0;
    while (m < D && row[m] >= 0)
        m++;
    return m;
}

/* Lexicographic comparison of two order rows (shorter prefix first), then by index. */
static int order_cmp(const op_problem *p, int32_t a, int32_t b)
{
    int D = p->n_devices;
    for (int j = 0; j < D; j++) {
        int32_t x = p->orders[(size_t)a * D + j], y = p->orders[(size_t)b * D + j];
        if (x != y)
            return x < y ? -1 : 1;
        if (x < 0)
            break;
    }
    return a < b ? -1 : (a > b);
}

/* Bottom-up merge sort of idx[0..n) (C11 has no qsort with a context). */
static void sort_orders(const op_problem *p, int32_t *idx, int32_t *tmp, int n)
{
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = lo + width < n ? lo + width : n;
            int hi = lo + 2 * width < n ? lo + 2 * width : n;
            int i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                tmp[k++] = order_cmp(p, idx[i], idx[j]) <= 0 ? idx[i++] : idx[j++];
            while (i < mid)
                tmp[k++] = idx[i++];
            while (j < hi)
                tmp[k++] = idx[j++];
        }
        memcpy(idx, tmp, (size_t)n * sizeof *idx);
    }
}

/* Non-output budget of each position; 0 if a device cannot even hold its fixed part. */
static int order_budgets(const op_problem *p, const int32_t *seq, int m, int64_t *budget)
{
    for (int j = 0; j < m; j++) {
        int d = seq[j];
        int64_t B = p->cap[d] - p->fixed_mem[d] - (j == 0 ? p->first_mem[d] : 0);
        if (B < 0)
            return 0;
        if (budget)
            budget[j] = B;
    }
    return 1;
}

/* Write the plan that ends as `kind` (on position fpos) into r, walking the histories back. */
static int write_plan(ws_t *w, const int32_t *seq, int m, int kind, int fpos, op_result *r)
{
    int L = w->L;
    for (int l = 0; l < L; l++) {
        r->home[l] = -1;
        r->option[l] = -1;
    }
    if (kind != END_DEVICE) {
        r->n_cpu = L;
        r->out_device = kind == END_CPU_OUT_DEVICE ? seq[m - 1] : -1;
        return OP_OK;
    }
    r->out_device = seq[fpos];
    int pos = fpos, t = L;
    size_t s = w->fin_slot[fpos];
    for (;;) {
        const size_t *off = w->hoff + pos * (w->row + 1);
        const history *h = &w->hist[pos];
        int start = -1;
        while (t >= 1) {
            if (s < 1 || s > off[t + 1] - off[t])
                return OP_EINVAL;
            size_t e = off[t] + s - 1;
            r->home[t - 1] = seq[pos];
            r->option[t - 1] = h->opt[e];
            if (h->par[e] == 0) {
                start = t - 1;
                break;
            }
            s = (size_t)h->par[e];
            t--;
        }
        if (start < 0)
            return OP_EINVAL;
        int8_t pr = w->pred[pos * w->row + start];
        if (pr < 0) {
            r->n_cpu = start;
            return OP_OK;
        }
        pos = pr;
        t = start;
        const size_t *poff = w->hoff + pos * (w->row + 1);
        s = poff[t + 1] - poff[t];  /* the level's last state has the least time */
    }
}

/* One pass over all orders (sorted by idx). Upper-bound pass (w->thin > 0): only lowers w->ub.
 * Exact pass: also keeps the best order and writes its plan into r. */
static int run_orders(ws_t *w, op_result *r, const int32_t *idx, double cpu_plain,
                      double *best, int *best_order)
{
    const op_problem *p = w->p;
    int L = w->L, D = w->D;
    size_t ts = (size_t)D + 1;
    w->clen = 0;
    for (int oi = 0; oi < p->n_orders; oi++) {
        int32_t o = idx[oi];
        const int32_t *seq = D > 0 ? p->orders + (size_t)o * D : NULL;
        int m = D > 0 ? seq_len(seq, D) : 0;
        double v;
        int kind = END_ALL_CPU, fpos = -1;
        if (m == 0) {
            v = cpu_plain + p->out_time_cpu;
        } else {
            if (!order_budgets(p, seq, m, w->budget))
                continue;
            int pre = 0;
            while (pre < w->clen && pre < m && w->cseq[pre] == seq[pre])
                pre++;
            if (pre == 0) {
                double rate = p->stream_rate ? p->stream_rate[seq[0]] : 0.0;
                w->cpuc[0] = 0.0;
                for (int l = 0; l < L; l++) {
                    double c = p->time_cpu[l];
                    if (p->stream_cpu && rate != 0.0)
                        c += rate * p->stream_cpu[l];
                    w->cpuc[l + 1] = w->cpuc[l] + c;
                }
            }
            w->clen = pre;
            for (int j = pre; j < m; j++) {
                /* orders that will reuse this position: the sorted run sharing seq[0..j] */
                uint64_t later = 0;
                int max_m = m;
                for (int q = oi; q < p->n_orders; q++) {
                    const int32_t *sq = p->orders + (size_t)idx[q] * D;
                    if (memcmp(sq, seq, (size_t)(j + 1) * sizeof *seq) != 0)
                        break;
                    int mq = seq_len(sq, D);
                    for (int k = j + 1; k < mq; k++)
                        later |= (uint64_t)1 << sq[k];
                    if (mq > max_m)
                        max_m = mq;
                }
                w->cseq[j] = seq[j];
                int rc = sweep(w, seq, j, later, max_m);
                if (rc != OP_OK) {
                    w->clen = 0;
                    return fail(r, rc, "order %d: DP state limit reached (max_states = %lld held "
                                "at once, %lld generated) or out of memory", (int)o,
                                (long long)w->limit, (long long)w->work_limit);
                }
                w->clen = j + 1;
            }
            /* Candidates in a fixed order; strict < keeps the first of equals. */
            v = w->cpuc[L] + p->out_time_cpu;
            int dl = seq[m - 1];
            if (w->budget[m - 1] - p->out_mem[dl] >= 0) {
                double vd = w->cpuc[L] + p->trans[(size_t)D * ts + dl] + p->out_time[dl];
                if (vd < v) {
                    v = vd;
                    kind = END_CPU_OUT_DEVICE;
                }
            }
            for (int j = 0; j < m; j++) {
                if (w->fin[j] < v) {
                    v = w->fin[j];
                    kind = END_DEVICE;
                    fpos = j;
                }
            }
        }
        if (v < w->ub)
            w->ub = v;
        if (!w->thin && (v < *best || (v == *best && o < *best_order))) {
            *best = v;
            *best_order = o;
            if (write_plan(w, seq, m, kind, fpos, r) != OP_OK)
                return fail(r, OP_EINVAL, "internal error: broken parent chain (order %d)", (int)o);
        }
    }
    return OP_OK;
}

static int solve(ws_t *w, const op_problem *p, op_result *r, const int32_t *idx)
{
    int L = w->L, D = w->D, K = w->K;
    size_t ts = (size_t)D + 1;

    double cpu_plain = 0.0, scpu = 0.0;
    for (int l = 0; l < L; l++) {
        cpu_plain += p->time_cpu[l];
        if (p->stream_cpu)
            scpu += p->stream_cpu[l];
    }
    /* Magnitude of the negative terms a plan can hold: with |UB| it bounds the terms of every sum
     * near UB, which sets the rounding margin of the pruning test (see level_bound). */
    double sneg = 0.0, rmax = 0.0, ssum = 0.0, lo;
    int neg = 0;
    for (int d = 0; d < D && p->stream_rate; d++) {
        rmax = fmax(rmax, fabs(p->stream_rate[d]));
        neg |= p->stream_rate[d] < 0.0;
    }
    for (int l = 0; l < L; l++) {
        double sl = p->stream_cpu ? fabs(p->stream_cpu[l]) : 0.0;
        neg |= p->stream_cpu && p->stream_cpu[l] < 0.0;
        lo = p->time_cpu[l];
        for (int o = 0; o < K; o++) {
            for (int d = 0; d < D; d++)
                lo = fmin(lo, p->time[((size_t)d * L + l) * K + o]);
            if (p->stream) {
                sl = fmax(sl, fabs(p->stream[(size_t)l * K + o]));
                neg |= p->stream[(size_t)l * K + o] < 0.0;
            }
        }
        sneg += fmax(0.0, -lo);
        ssum += sl;
    }
    if (neg)
        sneg += rmax * ssum;
    w->tneg = 0.0;
    lo = p->out_time_cpu;
    for (int d = 0; d < D; d++)
        lo = fmin(lo, p->out_time[d]);
    sneg += fmax(0.0, -lo);
    for (size_t i = 0; D > 0 && i < ts * ts; i++)
        w->tneg = fmin(w->tneg, p->trans[i]);
    sneg -= w->tneg * (D + 1);
    w->sneg = sneg;

    /* Every feasible order has an all-CPU plan: a first upper bound. */
    w->ub = INF;
    int any_device = 0;
    for (int i = 0; i < p->n_orders; i++) {
        const int32_t *seq = D > 0 ? p->orders + (size_t)i * D : NULL;
        int m = D > 0 ? seq_len(seq, D) : 0;
        double v = cpu_plain + p->out_time_cpu;
        if (m > 0) {
            if (!order_budgets(p, seq, m, NULL))
                continue;
            any_device = 1;
            if (p->stream_rate && p->stream_cpu)
                v += p->stream_rate[seq[0]] * scpu;
        }
        if (v < w->ub)
            w->ub = v;
    }

    double best = INF;
    int best_order = -1, rc;
    if (any_device) {  /* cheap thinned pass: a near-optimal UB */
        w->thin = THIN_BUCKETS;
        rc = run_orders(w, r, idx, cpu_plain, &best, &best_order);
        w->thin = 0;
        if (rc != OP_OK)
            return rc;
    }
    rc = run_orders(w, r, idx, cpu_plain, &best, &best_order);
    if (rc != OP_OK)
        return rc;
    if (best_order < 0)
        return fail(r, OP_INFEASIBLE, "no order fits: some device's fixed memory exceeds its cap "
                    "in every order");

    const int32_t *seq = D > 0 ? p->orders + (size_t)best_order * D : NULL;
    int m = D > 0 ? seq_len(seq, D) : 0;
    for (int d = 0; d < D; d++)
        r->mem_used[d] = 0;
    for (int j = 0; j < m; j++)
        r->mem_used[seq[j]] = p->fixed_mem[seq[j]] + (j == 0 ? p->first_mem[seq[j]] : 0);
    if (r->out_device >= 0)
        r->mem_used[r->out_device] += p->out_mem[r->out_device];
    for (int l = 0; l < L; l++) {
        int d = r->home[l];
        if (d >= 0)
            r->mem_used[d] += p->mem_dense[(size_t)d * L + l] +
                              p->mem_exp[((size_t)d * L + l) * K + r->option[l]];
    }
    r->order = best_order;
    r->time = best;
    return OP_OK;
}

int op_solve(const op_problem *p, op_result *r)
{
    if (r == NULL)
        return OP_EINVAL;
    r->status = OP_OK;
    r->order = -1;
    r->n_cpu = -1;
    r->out_device = -1;
    r->time = INF;
    r->n_states = 0;
    r->peak_states = 0;
    r->detail[0] = '\0';
    if (p == NULL)
        return fail(r, OP_EINVAL, "problem is NULL");
    int rc = validate(p, r);
    if (rc != OP_OK)
        return rc;

    ws_t w;
    memset(&w, 0, sizeof w);
    w.p = p;
    w.L = p->n_layers;
    w.D = p->n_devices;
    w.K = p->n_options;
    w.row = (size_t)w.L + 1;
    w.limit = p->max_states > 0 ? p->max_states : OP_DEFAULT_MAX_STATES;
    if (w.limit > OP_MAX_STATES)
        w.limit = OP_MAX_STATES;  /* parent slots are int32 */
    w.work_limit = w.limit > INT64_MAX / OP_WORK_FACTOR ? INT64_MAX : w.limit * OP_WORK_FACTOR;

    int32_t *idx = malloc((size_t)p->n_orders * sizeof *idx);
    int32_t *tmp = malloc((size_t)p->n_orders * sizeof *tmp);
    rc = ws_alloc(&w);
    if (rc != OP_OK || !idx || !tmp) {
        rc = fail(r, OP_ENOMEM, "out of memory allocating the workspace");
    } else {
        for (int i = 0; i < p->n_orders; i++)
            idx[i] = i;
        sort_orders(p, idx, tmp, p->n_orders);
        rc = solve(&w, p, r, idx);
    }
    r->n_states = w.n_states;
    r->peak_states = w.peak;
    r->status = rc;
    free(idx);
    free(tmp);
    ws_free(&w);
    return rc;
}
