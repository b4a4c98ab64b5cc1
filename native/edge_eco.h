/* edge_eco native kernel: the C side of edge_eco/_native.py.
 *
 * This header is read by cffi (native/build_native.py), so it holds no macros
 * and no preprocessor conditionals. Every function returns an ee_status:
 * 0 is success, a negative value names the error.
 */

typedef int ee_status;

/* ee_status values (kept in sync with edge_eco/_native.py). */
enum {
    EE_OK = 0,
    EE_ERR_NULL = -1,        /* a required pointer was NULL */
    EE_ERR_CONFIG = -2,      /* featurizer config out of range */
    EE_ERR_CAPACITY = -3,    /* output buffers too small for this text */
    EE_ERR_RUNTIME = -4      /* ONNX Runtime returned an error: *out_status holds its OrtStatus */
};

/* Featurizer "hash-ngram-v1" settings; see edge_eco/featurizer.py for the spec. */
typedef struct {
    unsigned int seed;           /* hash seed, declared in the manifest */
    unsigned int dim;            /* output dimension, a power of two in [2^8, 2^24] */
    unsigned int word_ngram_max; /* word n-grams of length 1..word_ngram_max (0 = none, <= 3) */
    unsigned int char_ngram_min; /* char n-grams inside " word " of length min..max */
    unsigned int char_ngram_max; /* (0 = none, max <= 8) */
    unsigned int word_weight;    /* integer count weight of one word n-gram occurrence */
    unsigned int char_weight;    /* integer count weight of one char n-gram occurrence */
} ee_featurizer_t;

/* Upper bound of n-gram occurrences for a text of n_bytes bytes; size buffers with it. */
ee_status ee_featurizer_capacity(const ee_featurizer_t *cfg, unsigned long n_bytes,
                                 unsigned long *out_cap);

/* Featurize one UTF-8 text into a sparse, L2-normalised vector.
 *   text     [n_bytes]  raw bytes (not NUL-terminated)
 *   scratch  [2 * cap]  uint64 work space
 *   out_idx  [cap]      int32 feature indices, strictly ascending, in [0, dim)
 *   out_val  [cap]      float32 values, sqrt(count / total_count)
 *   out_nnz  [1]        number of entries written
 */
ee_status ee_featurizer_run(const ee_featurizer_t *cfg, const unsigned char *text,
                            unsigned long n_bytes, unsigned long long *scratch,
                            int *out_idx, float *out_val, unsigned long cap,
                            unsigned long *out_nnz);

/* Router "deferral-linear": one logistic predictor per candidate model.
 * Fixed-point scoring (exact, order-independent): q = rint(value * 32768),
 * acc[c] = sum_i q[i] * weight[idx[i], c] (int64), logit[c] = (float)acc[c] * (scale[c] / 32768) + bias[c],
 * p[c] = 1 / (1 + exp(-logit[c])) (double), utility[c] = p[c] - lambda * cost[c].
 * Candidates with mask[c] == 0 are skipped; the rest are ranked by utility, ties by index. */
typedef struct {
    const signed char *weight;  /* [dim, k] int8, row-major */
    const float *scale;         /* [k] dequantisation scale per candidate */
    const float *bias;          /* [k] */
    const float *cost;          /* [k] cost per candidate, in utility units per lambda */
    unsigned int dim;           /* rows of weight; every index must be < dim */
    unsigned int k;             /* candidates, 1..64 */
} ee_router_t;

/* Score and rank one request.
 *   idx, val    [nnz]   featurizer output (indices < dim, values in [0, 1])
 *   mask        [k]     1 = eligible
 *   out_logit   [k]     logits of every candidate (masked ones included)
 *   out_order   [k]     eligible candidates, best utility first; *out_n of them
 *   out_prob    [k]     predicted correctness p of out_order[j]
 */
ee_status ee_router_route(const ee_router_t *r, const int *idx, const float *val, unsigned long nnz,
                          const unsigned char *mask, double lambda, float *out_logit,
                          int *out_order, double *out_prob, unsigned int *out_n);

/* How ee_route_text ranks and scores the eligible candidates. */
enum {
    EE_ROUTE_SOFTMAX = 0,  /* a domain router: rank by logit, prob = softmax(logit / param) (param = temperature) */
    EE_ROUTE_UTILITY = 1   /* correctness predictors: rank by sigmoid(logit) - param * cost (param = lambda) */
};

/* Featurize one text and route it, in one call.
 *   features: as ee_featurizer_run (out_idx/out_val [cap], *out_nnz)
 *   routing:  logits as ee_router_route (out_logit [k], out_order [k], out_prob [k], *out_n);
 *             EE_ROUTE_SOFTMAX ranks eligible candidates by logit (ties by index) with
 *             out_prob[j] = softmax(logit / param) over the eligible ones;
 *             EE_ROUTE_UTILITY is ee_router_route with lambda = param.
 */
ee_status ee_route_text(const ee_featurizer_t *f, const ee_router_t *r, const unsigned char *text,
                        unsigned long n_bytes, unsigned long long *scratch, int *out_idx, float *out_val,
                        unsigned long cap, unsigned long *out_nnz, const unsigned char *mask,
                        int mode, double param, float *out_logit, int *out_order, double *out_prob,
                        unsigned int *out_n);

/* One thread's routing job: the settings and buffers of ee_route_text bound once, so that a call
 * passes only the text (cffi converts every argument of every call; sixteen of them cost about
 * as much as the featurizer). Not shared between threads: the outputs live in it. */
typedef struct {
    const ee_featurizer_t *featurizer;
    const ee_router_t *router;
    unsigned long long *scratch;  /* [2 * cap] uint64 work space */
    int *idx;                     /* [cap] out: feature indices */
    float *val;                   /* [cap] out: feature values */
    unsigned long cap;            /* n-gram capacity of idx/val/scratch */
    const unsigned char *mask;    /* [k] 1 = eligible */
    int mode;                     /* EE_ROUTE_SOFTMAX or EE_ROUTE_UTILITY */
    double param;                 /* temperature or lambda, as ee_route_text */
    float *logit;                 /* [k] out */
    int *order;                   /* [k] out: eligible candidates, best first */
    double *prob;                 /* [k] out: probability of order[j] */
    unsigned long nnz;            /* out: features written */
    unsigned int n;               /* out: candidates ranked */
} ee_route_job_t;

/* ee_route_text over a bound job: job->nnz and job->n receive the counts.
 *   text  [n_bytes]  raw UTF-8 bytes
 */
ee_status ee_route_job_run(ee_route_job_t *job, const unsigned char *text, unsigned long n_bytes);

/* ONNX Runtime, one C call per load and per run (ortrun.c; edge_eco/backends/_ort_capi.py).
 * Through cffi each OrtApi call releases and retakes the interpreter lock, and each retake lets
 * this thread's Python in ahead of another thread's: a load made of ~30 calls kept a warm request
 * on another thread waiting. The function pointers are ONNX Runtime's own, copied by the Python
 * side from the library's OrtApi table; this kernel does not link against ONNX Runtime. */
typedef struct {
    void *env;                                  /* OrtEnv* */
    void *cpu;                                  /* OrtMemoryInfo* describing CPU memory */
    void *create_session_options;               /* OrtApi functions, by their OrtApi names */
    void *release_session_options;
    void *set_session_graph_optimization_level;
    void *set_intra_op_num_threads;
    void *set_inter_op_num_threads;
    void *set_session_execution_mode;
    void *disable_mem_pattern;
    void *disable_cpu_mem_arena;
    void *set_session_log_severity_level;
    void *add_session_config_entry;
    void *create_session;
    void *create_tensor_with_data_as_ort_value;
    void *run;
    void *release_value;
    void *run_options_set_terminate;            /* ee_ort_job_stop */
    void *run_options_unset_terminate;
    void *release_status;
    void *create_run_options;
    void *run_options_set_run_log_severity_level;
    void *release_run_options;
    void *release_session;
} ee_ort_t;

/* Build a session with edge_eco's options: optimization level (0 or 99), intra-op threads,
 * one inter-op thread, sequential, no memory pattern, no CPU arena, errors-only logging, and
 * n_config session config entries keys[i] = values[i].
 *   out_session  [1]  the OrtSession* on success
 *   out_status   [1]  the OrtStatus* when EE_ERR_RUNTIME is returned (the caller releases it)
 */
ee_status ee_ort_session_open(const ee_ort_t *o, const char *path, int threads, int optimization_level,
                              const char *const *keys, const char *const *values, unsigned long n_config,
                              void **out_session, void **out_status);

/* One session's run, bound once per thread (as ee_route_job_t: cffi converts every argument of
 * every call, and a dozen of them cost as much as the model). The caller sets data, dims and
 * out_data before each run; the inputs' byte sizes follow from their types and dims.
 * Not shared between threads. */
typedef struct {
    const ee_ort_t *ort;
    void *session;                /* OrtSession* */
    unsigned long n_in;           /* inputs, <= 16 */
    const char *const *names;     /* [n_in] input names */
    const int *types;             /* [n_in] ONNX element types (1 float ... 13 uint64; no strings) */
    const unsigned long *ranks;   /* [n_in] input ranks */
    void **data;                  /* [n_in] C-contiguous input buffers, set per run */
    const long long *dims;        /* [sum of ranks] input shapes, concatenated, set per run */
    const char *out_name;         /* the one output */
    int out_type;                 /* its ONNX element type */
    unsigned long out_rank;
    const long long *out_dims;    /* [out_rank] its (fixed) shape */
    void *out_data;               /* its buffer, set per run: out_dims' product x element size bytes */
    void *status;                 /* out: the OrtStatus* when EE_ERR_RUNTIME is returned (caller releases) */
    int stoppable;                /* make run_options at the first run, so ee_ort_job_stop can stop runs */
    void *run_options;            /* OrtRunOptions* of this job's runs (NULL: none yet, or not stoppable) */
    long long started_ns;         /* CLOCK_MONOTONIC start of the run in flight; 0 between runs */
    long long stopped_ns;         /* the start of the run ee_ort_job_stop stopped; 0 if none */
    int stopped;                  /* out: 1 when the last run was stopped by ee_ort_job_stop */
    int guard;                    /* spin lock between a run and ee_ort_job_stop */
} ee_ort_job_t;

/* Run job->session on its inputs into job->out_data.
 * EE_ERR_CAPACITY: more than 16 inputs; EE_ERR_CONFIG: an element type without a fixed size. */
ee_status ee_ort_job_run(ee_ort_job_t *job);

/* From another thread (a watchdog): stop job's run in flight if it is still the one that started
 * at started_ns (read from job->started_ns), through its run options' terminate flag; ONNX
 * Runtime then returns from it with an error, between two nodes (a Loop's body included), and
 * ee_ort_job_run sets job->stopped and clears the flag for the next run. A run that has already
 * ended (or a job without run options) is left alone: EE_OK either way; EE_ERR_NULL: no job. */
ee_status ee_ort_job_stop(ee_ort_job_t *job, long long started_ns);

/* Release a session and the run options of its jobs (no run may be in flight), in one call. */
ee_status ee_ort_session_release(const ee_ort_t *o, void *session, ee_ort_job_t *const *jobs, unsigned long n_jobs);
