/* The engine's error message: one per thread, set by pv_set_error and read by the binding.
 * Shared by the CPU and CUDA engines (each extension links its own copy). */
#include <stdarg.h>
#include <stdio.h>

#include "polyvit.h"

static _Thread_local char pv_err_msg[512];

const char *pv_last_error(void) { return pv_err_msg[0] ? pv_err_msg : "unknown engine error"; }

int pv_set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pv_err_msg, sizeof pv_err_msg, fmt, ap);
    va_end(ap);
    return code;
}

