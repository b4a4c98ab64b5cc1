/* ONNX Runtime loads and runs in one C call each: see ee_ort_t in edge_eco.h. The OrtApi
 * function types are declared here (from onnxruntime_c_api.h, API version 13) with opaque
 * handles as void*; enums are passed as int, as the C ABI does. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, sched_yield under -std=c11 */
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "edge_eco.h"

typedef void *status_t; /* OrtStatus*: NULL is success */
typedef status_t (*create_options_fn)(void **options);
typedef void (*release_fn)(void *handle);
typedef status_t (*options_int_fn)(void *options, int value);
typedef status_t (*options_fn)(void *options);
typedef status_t (*config_fn)(void *options, const char *key, const char *value);
typedef status_t (*create_session_fn)(const void *env, const char *path, const void *options, void **session);
typedef status_t (*create_tensor_fn)(const void *info, void *data, size_t bytes, const int64_t *shape,
                                     size_t rank, int type, void **value);
typedef status_t (*run_fn)(void *session, const void *run_options, const char *const *input_names,
                           const void *const *inputs, size_t n_inputs, const char *const *output_names,
                           size_t n_outputs, void **outputs);

typedef status_t (*run_options_fn)(void *run_options);
typedef status_t (*create_run_options_fn)(void **run_options);
typedef status_t (*run_options_int_fn)(void *run_options, int value);

enum { MAX_INPUTS = 16 };

static void guard_take(ee_ort_job_t *job)
{
    while (__atomic_exchange_n(&job->guard, 1, __ATOMIC_ACQUIRE))
        sched_yield(); /* held for a few instructions by the other side */
}

static void guard_drop(ee_ort_job_t *job) { __atomic_store_n(&job->guard, 0, __ATOMIC_RELEASE); }

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

ee_status ee_ort_job_stop(ee_ort_job_t *job, long long started_ns)
{
    if (!job || !job->ort)
        return EE_ERR_NULL;
    if (!job->run_options || !started_ns)
        return EE_OK;
    guard_take(job);
    if (__atomic_load_n(&job->started_ns, __ATOMIC_RELAXED) == started_ns && !job->stopped_ns) {
        status_t st = ((run_options_fn)job->ort->run_options_set_terminate)(job->run_options);
        if (st)
            ((release_fn)job->ort->release_status)(st); /* not stopped: the limit is checked again next wake */
        else
            job->stopped_ns = started_ns;
    }
    guard_drop(job);
    return EE_OK;
}

ee_status ee_ort_session_open(const ee_ort_t *o, const char *path, int threads, int optimization_level,
                              const char *const *keys, const char *const *values, unsigned long n_config,
                              void **out_session, void **out_status)
{
    if (!o || !path || !out_session || !out_status || (n_config && (!keys || !values)))
        return EE_ERR_NULL;
    *out_session = NULL;
    *out_status = NULL;
    void *options = NULL;
    status_t st = ((create_options_fn)o->create_session_options)(&options);
    if (!st) st = ((options_int_fn)o->set_session_graph_optimization_level)(options, optimization_level);
    if (!st) st = ((options_int_fn)o->set_intra_op_num_threads)(options, threads);
    if (!st) st = ((options_int_fn)o->set_inter_op_num_threads)(options, 1);
    if (!st) st = ((options_int_fn)o->set_session_execution_mode)(options, 0); /* ORT_SEQUENTIAL */
    if (!st) st = ((options_fn)o->disable_mem_pattern)(options);
    if (!st) st = ((options_fn)o->disable_cpu_mem_arena)(options);
    if (!st) st = ((options_int_fn)o->set_session_log_severity_level)(options, 3); /* ERROR */
    for (unsigned long i = 0; !st && i < n_config; i++)
        st = ((config_fn)o->add_session_config_entry)(options, keys[i], values[i]);
    if (!st) st = ((create_session_fn)o->create_session)(o->env, path, options, out_session);
    if (options) ((release_fn)o->release_session_options)(options);
    if (st) {
        *out_status = st;
        return EE_ERR_RUNTIME;
    }
    return EE_OK;
}

/* Bytes of one element of an ONNX tensor type; 0 for types without a fixed size (strings). */
static size_t element_size(int type)
{
    switch (type) {
    case 2: case 3: case 9: return 1;      /* uint8, int8, bool */
    case 4: case 5: case 10: return 2;     /* uint16, int16, float16 */
    case 1: case 6: case 12: return 4;     /* float, int32, uint32 */
    case 7: case 11: case 13: return 8;    /* int64, double, uint64 */
    default: return 0;
    }
}

static ee_status tensor_bytes(int type, const long long *dims, unsigned long rank, size_t *out)
{
    size_t n = element_size(type);
    if (!n) return EE_ERR_CONFIG;
    for (unsigned long i = 0; i < rank; i++) {
        if (dims[i] < 0) return EE_ERR_CONFIG;
        n *= (size_t)dims[i];
    }
    *out = n;
    return EE_OK;
}

ee_status ee_ort_job_run(ee_ort_job_t *job)
{
    if (!job || !job->ort || !job->session || !job->out_name || !job->out_data || (job->out_rank && !job->out_dims)
        || (job->n_in && (!job->names || !job->types || !job->ranks || !job->data || !job->dims)))
        return EE_ERR_NULL;
    if (job->n_in > MAX_INPUTS)
        return EE_ERR_CAPACITY;
    const ee_ort_t *o = job->ort;
    job->status = NULL;
    void *inputs[MAX_INPUTS] = {0};
    void *output = NULL;
    status_t st = NULL;
    ee_status rc = EE_OK;
    const long long *shape = job->dims;
    size_t bytes = 0;
    for (unsigned long i = 0; !st && rc == EE_OK && i < job->n_in; i++) {
        rc = tensor_bytes(job->types[i], shape, job->ranks[i], &bytes);
        if (rc == EE_OK)
            st = ((create_tensor_fn)o->create_tensor_with_data_as_ort_value)(
                o->cpu, job->data[i], bytes, (const int64_t *)shape, job->ranks[i], job->types[i], &inputs[i]);
        shape += job->ranks[i];
    }
    if (!st && rc == EE_OK) rc = tensor_bytes(job->out_type, job->out_dims, job->out_rank, &bytes);
    if (!st && rc == EE_OK)
        st = ((create_tensor_fn)o->create_tensor_with_data_as_ort_value)(
            o->cpu, job->out_data, bytes, (const int64_t *)job->out_dims, job->out_rank, job->out_type, &output);
    job->stopped = 0;
    if (!st && rc == EE_OK && job->stoppable && !job->run_options) {
        /* made here, not by the caller: through cffi each OrtApi call is one more interpreter
         * lock crossing on the load path (a load's probe run is a job's first run) */
        void *options = NULL;
        status_t made = ((create_run_options_fn)o->create_run_options)(&options);
        if (!made) made = ((run_options_int_fn)o->run_options_set_run_log_severity_level)(options, 4); /* FATAL */
        if (made) {
            ((release_fn)o->release_status)(made);
            if (options) ((release_fn)o->release_run_options)(options);
            job->stoppable = 0; /* runs without a way to stop them rather than not at all */
        } else {
            job->run_options = options;
        }
    }
    if (!st && rc == EE_OK) {
        long long start = now_ns();
        guard_take(job);
        __atomic_store_n(&job->started_ns, start, __ATOMIC_RELAXED);
        guard_drop(job);
        st = ((run_fn)o->run)(job->session, job->run_options, job->names, (const void *const *)inputs, job->n_in,
                              &job->out_name, 1, &output);
        guard_take(job);
        __atomic_store_n(&job->started_ns, 0, __ATOMIC_RELAXED);
        if (job->stopped_ns) { /* stopped, or flagged just as it ended: clear the flag for the next run */
            status_t cleared = ((run_options_fn)o->run_options_unset_terminate)(job->run_options);
            job->stopped = st != NULL;
            job->stopped_ns = 0;
            guard_drop(job);
            if (cleared) { /* the flag stays set: never run with these options again (new ones next run) */
                ((release_fn)o->release_status)(cleared);
                ((release_fn)o->release_run_options)(job->run_options);
                job->run_options = NULL;
            }
        } else {
            guard_drop(job);
        }
    }
    for (unsigned long i = 0; i < job->n_in; i++)
        if (inputs[i]) ((release_fn)o->release_value)(inputs[i]);
    if (output) ((release_fn)o->release_value)(output);
    if (st) {
        job->status = st;
        return EE_ERR_RUNTIME;
    }
    return rc;
}

ee_status ee_ort_session_release(const ee_ort_t *o, void *session, ee_ort_job_t *const *jobs, unsigned long n_jobs)
{
    if (!o || (n_jobs && !jobs))
        return EE_ERR_NULL;
    for (unsigned long i = 0; i < n_jobs; i++) {
        if (jobs[i] && jobs[i]->run_options) {
            ((release_fn)o->release_run_options)(jobs[i]->run_options);
            jobs[i]->run_options = NULL;
        }
    }
    if (session) ((release_fn)o->release_session)(session);
    return EE_OK;
}
