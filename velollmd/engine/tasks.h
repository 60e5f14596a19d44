/* How the matmul kernels (matmul.c, matmul_q8.c, matmul_q4k.c, matmul_q6k.c) share N weight rows
 * out among OpenMP threads: tasks of `per_task` consecutive rows, the same split in every kernel. */
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

#endif
