/* Shared by the CPython binding files (module*.c). */
#ifndef POLYVIT_BINDINGS_H
#define POLYVIT_BINDINGS_H

#include <Python.h>

/* Raise the engine's last error (pv_last_error) as the exception its status code names:
 * PV_ERR_NOMEM -> MemoryError, PV_ERR_VALUE -> ValueError, anything else RuntimeError.
 * Returns NULL for `return pv_raise(rc);`. Defined in module.c. */
PyObject *pv_raise(int code);

#endif
