/*
 * membw.c - sustained multi-threaded memory read bandwidth (see membw.h).
 *
 * Threads meet at a gate (a barrier that can be aborted, as pthread_barrier_t cannot and macOS
 * lacks it) before and after every read, so a timed read spans all threads reading at once; the
 * calling thread takes the time stamps. Each thread sums its slice with eight independent
 * accumulators: the adds never wait on each other, so one core issues loads far faster than
 * DRAM answers them and the loop is memory-bound, as a quantized matmul over mmap'd weights is.
 */
#define _POSIX_C_SOURCE 200809L

#include "membw.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t parties;    /* threads that must arrive to open the gate */
    int32_t arrived;
    uint64_t generation;
    int aborted;        /* set once: every waiter (now or later) returns -1 */
} gate;

/* Wait until all parties have arrived; 0 when the gate opened, -1 when it was aborted. */
static int gate_wait(gate *g) {
    pthread_mutex_lock(&g->mu);
    int rc = -1;
    if (!g->aborted) {
        uint64_t gen = g->generation;
        if (++g->arrived == g->parties) {
            g->arrived = 0;
            g->generation++;
            pthread_cond_broadcast(&g->cv);
        } else {
            while (gen == g->generation && !g->aborted)
                pthread_cond_wait(&g->cv, &g->mu);
        }
        rc = g->aborted ? -1 : 0;
    }
    pthread_mutex_unlock(&g->mu);
    return rc;
}

static void gate_abort(gate *g) {
    pthread_mutex_lock(&g->mu);
    g->aborted = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

typedef struct shared {
    gate gate;
    uint64_t *words;
    size_t n_words;
    int32_t threads;
    int32_t reps;
    double best;        /* written by thread 0 only */
} shared;

typedef struct worker {
    shared *sh;
    int32_t index;
    uint64_t sum;       /* this thread's sum in the last read */
    char pad[64];       /* keeps neighbours' sums off this cache line */
} worker;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t sum_words(const uint64_t *p, size_t n) {
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        a0 += p[i];
        a1 += p[i + 1];
        a2 += p[i + 2];
        a3 += p[i + 3];
        a4 += p[i + 4];
        a5 += p[i + 5];
        a6 += p[i + 6];
        a7 += p[i + 7];
    }
    for (; i < n; i++)
        a0 += p[i];
    return a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

static void *run_worker(void *arg) {
    worker *w = (worker *)arg;
    shared *sh = w->sh;
    /* n = q T + r words: the first r slices get q + 1 words, the others q */
    size_t k = (size_t)w->index, q = sh->n_words / (size_t)sh->threads, r = sh->n_words % (size_t)sh->threads;
    size_t lo = q * k + (k < r ? k : r);
    size_t hi = lo + q + (k < r ? 1 : 0);
    for (size_t i = lo; i < hi; i++)   /* first touch: the pages are this thread's */
        sh->words[i] = (uint64_t)i;
    for (int32_t rep = 0; rep <= sh->reps; rep++) {   /* rep 0: the warm-up */
        if (gate_wait(&sh->gate) != 0)
            return NULL;
        double start = w->index == 0 ? now_seconds() : 0.0;
        w->sum = sum_words(sh->words + lo, hi - lo);
        if (gate_wait(&sh->gate) != 0)
            return NULL;
        if (w->index == 0 && rep > 0) {
            double elapsed = now_seconds() - start;
            if (elapsed < sh->best)
                sh->best = elapsed;
        }
    }
    return NULL;
}

int op_membw_read(size_t bytes, int32_t threads, int32_t reps, double *best_seconds,
                  uint64_t *checksum) {
    if (!best_seconds || !checksum || threads < 1 || threads > OP_MEMBW_MAX_THREADS || reps < 1
        || reps > OP_MEMBW_MAX_REPS || bytes > OP_MEMBW_MAX_BYTES || bytes / 8 < (size_t)threads)
        return OP_EINVAL;
    shared sh;
    sh.n_words = bytes / 8;
    sh.threads = threads;
    sh.reps = reps;
    sh.best = 1e300;
    /* malloc maps a buffer this large lazily: no page is touched until a thread writes it */
    sh.words = malloc(sh.n_words * sizeof(uint64_t));
    worker *workers = calloc((size_t)threads, sizeof(worker));
    pthread_t *ids = calloc((size_t)threads, sizeof(pthread_t));
    if (!sh.words || !workers || !ids) {
        free(sh.words);
        free(workers);
        free(ids);
        return OP_ENOMEM;
    }
    pthread_mutex_init(&sh.gate.mu, NULL);
    pthread_cond_init(&sh.gate.cv, NULL);
    sh.gate.parties = threads;
    sh.gate.arrived = 0;
    sh.gate.generation = 0;
    sh.gate.aborted = 0;

    int rc = OP_OK;
    int32_t started = 1;   /* worker 0 is this thread */
    for (int32_t k = 0; k < threads; k++) {
        workers[k].sh = &sh;
        workers[k].index = k;
    }
    for (; started < threads; started++) {
        if (pthread_create(&ids[started], NULL, run_worker, &workers[started]) != 0) {
            gate_abort(&sh.gate);   /* releases the threads already waiting at the gate */
            rc = OP_ENOMEM;
            break;
        }
    }
    if (rc == OP_OK)
        run_worker(&workers[0]);
    for (int32_t k = 1; k < started; k++)
        pthread_join(ids[k], NULL);
    if (rc == OP_OK) {
        uint64_t total = 0;
        for (int32_t k = 0; k < threads; k++)
            total += workers[k].sum;
        *best_seconds = sh.best;
        *checksum = total;
    }
    pthread_cond_destroy(&sh.gate.cv);
    pthread_mutex_destroy(&sh.gate.mu);
    free(sh.words);
    free(workers);
    free(ids);
    return rc;
}
