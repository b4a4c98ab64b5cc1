/* ONNX Runtime loads and runs in one C call each: see ee_ort_t in edge_eco.h. The OrtApi
 * function types are declared here (from onnxruntime_c_api.h, API version 13) with opaque
 * handles as void*; enums are passed as int, as the C ABI does. */
#include <stddef.h>
#include <stdint.h>

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

enum { MAX_INPUTS = 16 };

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

ee_status ee_ort_run(const ee_ort_t *o, void *session, unsigned long n_in, const char *const *names,
                     void *const *data, const unsigned long *bytes, const int *types,
                     const unsigned long *ranks, const long long *dims, const char *out_name,
                     void *out_data, unsigned long out_bytes, int out_type, unsigned long out_rank,
                     const long long *out_dims, void **out_status)
{
    if (!o || !session || !out_name || !out_status || (n_in && (!names || !data || !bytes || !types || !ranks)))
        return EE_ERR_NULL;
    if (n_in > MAX_INPUTS)
        return EE_ERR_CAPACITY;
    *out_status = NULL;
    void *inputs[MAX_INPUTS] = {0};
    void *output = NULL;
    status_t st = NULL;
    const long long *shape = dims;
    for (unsigned long i = 0; !st && i < n_in; i++) {
        st = ((create_tensor_fn)o->create_tensor_with_data_as_ort_value)(
            o->cpu, data[i], bytes[i], (const int64_t *)shape, ranks[i], types[i], &inputs[i]);
        shape += ranks[i];
    }
    if (!st)
        st = ((create_tensor_fn)o->create_tensor_with_data_as_ort_value)(
            o->cpu, out_data, out_bytes, (const int64_t *)out_dims, out_rank, out_type, &output);
    if (!st)
        st = ((run_fn)o->run)(session, NULL, names, (const void *const *)inputs, n_in, &out_name, 1, &output);
    for (unsigned long i = 0; i < n_in; i++)
        if (inputs[i]) ((release_fn)o->release_value)(inputs[i]);
    if (output) ((release_fn)o->release_value)(output);
    if (st) {
        *out_status = st;
        return EE_ERR_RUNTIME;
    }
    return EE_OK;
}
