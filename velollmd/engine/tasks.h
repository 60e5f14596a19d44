/* How the matmul kernels (matmul.c, matmul_q8.c, matmul_q4k.c, matmul_q5k.c, matmul_q6k.c,
 * matmul_legacy.c) share N weight rows out among OpenMP threads: tasks of `per_task` consecutive
 * rows, the same split in every kernel. */
#ifndef VL_TASKS_H
#define VL_TASKS_H

#include <stdint.h>

/* The number of tasks; *num_threads clamped to 1..tasks (no thread without a task). */
static inline int64_t row_tasks(int64_t N, int64_t per_task, int *num_threads) {
    int64_t tasks = (N + per_task - 1) / per_task;
    if (*num_threads < 1)
        *num_threads = 1;
    if (*num_threads > tasks)
        *num_threads = (int)tasks;
    return tasks;
}

/* One past the last row of the task that starts at row n0. */
static inline int64_t task_end(int64_t n0, int64_t per_task, int64_t N) {
    return n0 + per_task < N ? n0 + per_task : N;
}

/* One task's work: rows [n0, n1) of the product that `args` describes. */
typedef void (*rows_fn)(const void *args, int64_t n0, int64_t n1);

/* Rows [0, N) in tasks of per_task rows, shared out among num_threads OpenMP threads (static
 * schedule: a task's rows, hence its results, do not depend on the thread count). */
static inline void run_row_tasks(rows_fn rows, const void *args, int64_t N, int64_t per_task,
                                 int num_threads) {
    int64_t num_tasks = row_tasks(N, per_task, &num_threads);
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_threads > 1)
    for (int64_t task = 0; task < num_tasks; task++) {
        int64_t n0 = task * per_task;
        rows(args, n0, task_end(n0, per_task, N));
    }
}

#endif
