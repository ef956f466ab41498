/* Shared by the CPython bindings of both engines (module.c, module_cuda.c): errors, the
 * config dict and the optimizer hyperparameters. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "bindings.h"
#include "polyvit.h"

PyObject *pv_raise(int code) {
    PyObject *exc = code == PV_ERR_NOMEM   ? PyExc_MemoryError
                    : code == PV_ERR_VALUE ? PyExc_ValueError
                                           : PyExc_RuntimeError;
    PyErr_SetString(exc, pv_last_error());
    return NULL;
}

static int get_int(PyObject *d, const char *key, int *out) {
    PyObject *v = PyDict_GetItemString(d, key); /* borrowed */
    if (!v) {
        PyErr_Format(PyExc_ValueError, "config is missing '%s'", key);
        return -1;
    }
    long x = PyLong_AsLong(v);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (x < INT32_MIN || x > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "config '%s' is out of range", key);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* optional int: leaves *out unchanged when the key is absent */
static int get_opt_int(PyObject *d, const char *key, int *out) {
    if (!PyDict_GetItemString(d, key)) return 0;
    return get_int(d, key, out);
}

static int get_int_list(PyObject *d, const char *key, int *out, int n) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) {
        PyErr_Format(PyExc_ValueError, "config is missing '%s'", key);
        return -1;
    }
    PyObject *seq = PySequence_Fast(v, "config list expected");
    if (!seq) return -1;
    if (PySequence_Fast_GET_SIZE(seq) != n) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "config '%s' must have %d entries", key, n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (x == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        out[i] = (int)x;
    }
    Py_DECREF(seq);
    return 0;
}

/* the engine config from the dict polyvit.model._engine_config builds */
int pv_parse_config(PyObject *d, pv_config *c) {
    memset(c, 0, sizeof *c);
    if (get_int(d, "img_size", &c->img_size) || get_int(d, "patch_size", &c->patch_size) ||
        get_int(d, "in_chans", &c->in_chans) || get_int(d, "embed_dim", &c->embed_dim) ||
        get_int(d, "depth", &c->depth) || get_int(d, "num_heads", &c->num_heads) ||
        get_int(d, "hidden", &c->hidden) || get_int(d, "num_classes", &c->num_classes))
        return -1;
    if (c->depth <= 0 || c->depth > PV_MAX_DEPTH) {
        PyErr_Format(PyExc_ValueError, "depth must be in 1..%d", PV_MAX_DEPTH);
        return -1;
    }
    /* architecture options, with timm's defaults when absent */
    c->qkv_bias = c->final_norm = 1;
    if (get_opt_int(d, "gelu_tanh", &c->gelu_tanh) || get_opt_int(d, "qkv_bias", &c->qkv_bias) ||
        get_opt_int(d, "final_norm", &c->final_norm) || get_opt_int(d, "pool", &c->pool) ||
        get_opt_int(d, "fc_norm", &c->fc_norm))
        return -1;
    PyObject *eps = PyDict_GetItemString(d, "ln_eps");
    c->ln_eps = eps ? (float)PyFloat_AsDouble(eps) : 1e-6f;
    if (PyErr_Occurred()) return -1;
    if (get_int_list(d, "act", c->act, c->depth) || get_int_list(d, "poly_width", c->poly_width, c->depth))
        return -1;
    return 0;
}

/* hp: sequence of 4 (lr, weight_decay, frozen) for decay, no_decay, embed, poly */
int pv_parse_hp(PyObject *o, pv_group_hp hp[4]) {
    PyObject *seq = PySequence_Fast(o, "hyperparameters must be a sequence of 4 tuples");
    if (!seq) return -1;
    if (PySequence_Fast_GET_SIZE(seq) != 4) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "hyperparameters must have 4 groups");
        return -1;
    }
    for (int i = 0; i < 4; i++) {
        double lr, wd;
        int frozen;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "ddp", &lr, &wd, &frozen)) {
            Py_DECREF(seq);
            return -1;
        }
        hp[i].lr = (float)lr;
        hp[i].weight_decay = (float)wd;
        hp[i].frozen = frozen;
    }
    Py_DECREF(seq);
    return 0;
}


static const char *group_names[] = {"decay", "no_decay", "embed", "poly"};

/* [(name, shape, offset, group)] in buffer order */
PyObject *pv_tensor_table(const pv_model *m) {
    PyObject *list = PyList_New(m->n_tensors);
    if (!list) return NULL;
    for (int i = 0; i < m->n_tensors; i++) {
        const pv_tensor *t = &m->tensors[i];
        PyObject *shape = PyTuple_New(t->ndim);
        if (!shape) goto fail;
        for (int k = 0; k < t->ndim; k++) PyTuple_SET_ITEM(shape, k, PyLong_FromLong(t->shape[k]));
        PyObject *item = Py_BuildValue("(sNns)", t->name, shape, (Py_ssize_t)t->offset, group_names[t->group]);
        if (!item) goto fail;
        PyList_SET_ITEM(list, i, item);
    }
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}


PyObject *pv_profile_binding(PyObject *args, PyObject *kw, void (*enable)(int),
                             int (*read)(const char **, double *, int)) {
    static char *kwlist[] = {"enable", "reset", NULL};
    PyObject *on_obj = Py_None;
    int reset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|Op", kwlist, &on_obj, &reset)) return NULL;
    if (on_obj != Py_None) {
        int on = PyObject_IsTrue(on_obj);
        if (on < 0) return NULL;
        enable(on);
    }
    const char *names[PV_PROF_N];
    double sec[PV_PROF_N];
    int n = read(names, sec, reset);
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *v = PyFloat_FromDouble(sec[i]);
        if (!v || PyDict_SetItemString(d, names[i], v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    return d;
}
