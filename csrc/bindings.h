/* Shared by the CPython binding files (module*.c). */
#ifndef POLYVIT_BINDINGS_H
#define POLYVIT_BINDINGS_H

#include <Python.h>

/* Raise the engine's last error (pv_last_error) as the exception its status code names:
 * PV_ERR_NOMEM -> MemoryError, PV_ERR_VALUE -> ValueError, anything else RuntimeError.
 * Returns NULL for `return pv_raise(rc);`. Defined in bindings.c. */
PyObject *pv_raise(int code);

#include "polyvit.h"
/* the engine config from polyvit.model._engine_config's dict; -1 with an exception set */
int pv_parse_config(PyObject *d, pv_config *c);
/* hp: a sequence of 4 (lr, weight_decay, frozen), groups decay, no_decay, embed, poly */
int pv_parse_hp(PyObject *o, pv_group_hp hp[4]);
/* [(name, shape, offset, group)] of the model's parameter table, in buffer order */
PyObject *pv_tensor_table(const pv_model *m);
/* profile(enable=None, reset=False) -> {op: seconds} over an engine's timing functions */
PyObject *pv_profile_binding(PyObject *args, PyObject *kw, void (*enable)(int),
                             int (*read)(const char **, double *, int));

#endif
