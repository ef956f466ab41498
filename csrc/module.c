/* polyvit._C: the CPython + NumPy binding of the CPU engine. Parse, check, call, raise.
 * Everything a user can hand in is validated here or in the Python layer above; the engine
 * itself assumes well-formed buffers. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL polyvit_ARRAY_API
#include <numpy/arrayobject.h>

#include "polyvit.h"
#include "bindings.h"
#include "cpu/blas.h"

#ifdef _OPENMP
#include <omp.h>
#endif


/* a float32 C-contiguous array of exactly ndim dims (any array-like accepted and converted
 * by the Python layer; here we only accept what is already right, to stay simple and safe) */
static PyArrayObject *as_f32(PyObject *obj, int ndim, const char *what) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array, got %s", what, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "%s must be float32", what);
        return NULL;
    }
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", what, ndim, PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous and aligned", what);
        return NULL;
    }
    Py_INCREF(a);
    return a;
}

/* ---- Engine type ----------------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD pv_model *m;
    int busy; /* set while the GIL is released inside an engine call */
} Engine;

#define ENGINE_ENTER(self)                                                                    \
    do {                                                                                      \
        if (!(self)->m) {                                                                     \
            PyErr_SetString(PyExc_RuntimeError, "the engine was not initialised");             \
            return NULL;                                                                      \
        }                                                                                     \
        if ((self)->busy) {                                                                   \
            PyErr_SetString(PyExc_RuntimeError, "this model is already running in another "     \
                            "thread; use one model per thread");                              \
            return NULL;                                                                      \
        }                                                                                     \
    } while (0)

static void Engine_dealloc(Engine *self) {
    pv_model_free(self->m);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Engine_init(Engine *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"config", "max_batch", NULL};
    PyObject *d;
    int max_batch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!i", kwlist, &PyDict_Type, &d, &max_batch)) return -1;
    pv_config c;
    if (pv_parse_config(d, &c)) return -1;
    pv_model *m = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = pv_model_create(&m, &c, max_batch);
    Py_END_ALLOW_THREADS if (rc) {
        pv_raise(rc);
        return -1;
    }
    pv_model_free(self->m);
    self->m = m;
    return 0;
}

static PyObject *Engine_tensors(Engine *self, PyObject *Py_UNUSED(ig)) {
    ENGINE_ENTER(self);
    return pv_tensor_table(self->m);
}

/* a 1-D float32 view of one of the engine's buffers; the view keeps the engine alive */
static PyObject *Engine_buffer(Engine *self, PyObject *args) {
    const char *which;
    if (!PyArg_ParseTuple(args, "s", &which)) return NULL;
    ENGINE_ENTER(self);
    pv_model *m = self->m;
    float *p = !strcmp(which, "params") ? m->params
               : !strcmp(which, "grads") ? m->grads
               : !strcmp(which, "m")     ? m->m
               : !strcmp(which, "v")     ? m->v
                                         : NULL;
    if (!p) {
        PyErr_Format(PyExc_ValueError, "unknown buffer '%s'", which);
        return NULL;
    }
    npy_intp dims[1] = {(npy_intp)m->n_params};
    PyObject *arr = PyArray_SimpleNewFromData(1, dims, NPY_FLOAT32, p);
    if (!arr) return NULL;
    Py_INCREF(self);
    if (PyArray_SetBaseObject((PyArrayObject *)arr, (PyObject *)self) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    return arr;
}

static PyObject *Engine_forward(Engine *self, PyObject *args) {
    PyObject *xo;
    if (!PyArg_ParseTuple(args, "O", &xo)) return NULL;
    ENGINE_ENTER(self);
    pv_model *m = self->m;
    PyArrayObject *x = as_f32(xo, 4, "images");
    if (!x) return NULL;
    npy_intp *d = PyArray_DIMS(x);
    if (d[1] != m->cfg.in_chans || d[2] != m->cfg.img_size || d[3] != m->cfg.img_size) {
        PyErr_Format(PyExc_ValueError, "images must have shape (B, %d, %d, %d), got (%ld, %ld, %ld, %ld)",
                     m->cfg.in_chans, m->cfg.img_size, m->cfg.img_size, (long)d[0], (long)d[1],
                     (long)d[2], (long)d[3]);
        Py_DECREF(x);
        return NULL;
    }
    if (d[0] < 1 || d[0] > m->max_batch) {
        PyErr_Format(PyExc_ValueError, "a batch of %ld images does not fit: this model was allocated "
                     "for at most %d (max_batch)", (long)d[0], m->max_batch);
        Py_DECREF(x);
        return NULL;
    }
    int B = (int)d[0], rc;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS rc = pv_model_forward(m, (const float *)PyArray_DATA(x), B);
    Py_END_ALLOW_THREADS self->busy = 0;
    Py_DECREF(x);
    if (rc) return pv_raise(rc);
    npy_intp od[2] = {B, m->K};
    PyObject *out = PyArray_SimpleNew(2, od, NPY_FLOAT32);
    if (!out) return NULL;
    memcpy(PyArray_DATA((PyArrayObject *)out), m->logits, sizeof(float) * B * m->K);
    return out;
}

/* copy of block l's MLP pre-activation (fc1 output) from the last forward: (B, T, H) */
static PyObject *Engine_preact(Engine *self, PyObject *args) {
    int l;
    if (!PyArg_ParseTuple(args, "i", &l)) return NULL;
    ENGINE_ENTER(self);
    pv_model *m = self->m;
    if (l < 0 || l >= m->cfg.depth) {
        PyErr_Format(PyExc_ValueError, "block %d out of range for depth %d", l, m->cfg.depth);
        return NULL;
    }
    if (!m->last_batch) {
        PyErr_SetString(PyExc_RuntimeError, "no forward has run yet, so there is nothing to capture");
        return NULL;
    }
    npy_intp od[3] = {m->last_batch, m->T, m->H};
    PyObject *out = PyArray_SimpleNew(3, od, NPY_FLOAT32);
    if (!out) return NULL;
    memcpy(PyArray_DATA((PyArrayObject *)out), m->blk[l].h, sizeof(float) * m->last_batch * m->T * m->H);
    return out;
}

static PyObject *Engine_backward(Engine *self, PyObject *args) {
    PyObject *go;
    if (!PyArg_ParseTuple(args, "O", &go)) return NULL;
    ENGINE_ENTER(self);
    pv_model *m = self->m;
    PyArrayObject *g = as_f32(go, 2, "dlogits");
    if (!g) return NULL;
    if (PyArray_DIM(g, 1) != m->K || PyArray_DIM(g, 0) < 1 || PyArray_DIM(g, 0) > m->max_batch) {
        PyErr_Format(PyExc_ValueError, "dlogits must have shape (B, %d) with 1 <= B <= %d, got (%ld, %ld)",
                     m->K, m->max_batch, (long)PyArray_DIM(g, 0), (long)PyArray_DIM(g, 1));
        Py_DECREF(g);
        return NULL;
    }
    int rc, B = (int)PyArray_DIM(g, 0);
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS rc = pv_model_backward(m, (const float *)PyArray_DATA(g), B);
    Py_END_ALLOW_THREADS self->busy = 0;
    Py_DECREF(g);
    if (rc) return pv_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *Engine_grad_norm(Engine *self, PyObject *args) {
    PyObject *ho;
    if (!PyArg_ParseTuple(args, "O", &ho)) return NULL;
    ENGINE_ENTER(self);
    pv_group_hp hp[4];
    if (pv_parse_hp(ho, hp)) return NULL;
    double n;
    Py_BEGIN_ALLOW_THREADS n = pv_grad_norm(self->m, hp);
    Py_END_ALLOW_THREADS return PyFloat_FromDouble(n);
}

static PyObject *Engine_grad_scale(Engine *self, PyObject *args) {
    PyObject *ho;
    double s;
    if (!PyArg_ParseTuple(args, "Od", &ho, &s)) return NULL;
    ENGINE_ENTER(self);
    pv_group_hp hp[4];
    if (pv_parse_hp(ho, hp)) return NULL;
    Py_BEGIN_ALLOW_THREADS pv_grad_scale(self->m, hp, (float)s);
    Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

static PyObject *Engine_adamw(Engine *self, PyObject *args) {
    PyObject *ho;
    double b1, b2, eps;
    int t;
    if (!PyArg_ParseTuple(args, "Odddi", &ho, &b1, &b2, &eps, &t)) return NULL;
    ENGINE_ENTER(self);
    pv_group_hp hp[4];
    if (pv_parse_hp(ho, hp)) return NULL;
    if (t < 1) {
        PyErr_SetString(PyExc_ValueError, "the AdamW step number starts at 1");
        return NULL;
    }
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS pv_adamw_step(self->m, hp, (float)b1, (float)b2, (float)eps, t);
    Py_END_ALLOW_THREADS self->busy = 0;
    Py_RETURN_NONE;
}

static PyObject *Engine_get_max_batch(Engine *self, void *c) {
    return PyLong_FromLong(self->m ? self->m->max_batch : 0);
}
static PyObject *Engine_get_last_batch(Engine *self, void *c) {
    return PyLong_FromLong(self->m ? self->m->last_batch : 0);
}
static PyObject *Engine_get_act_bytes(Engine *self, void *c) {
    return PyLong_FromSize_t(self->m ? self->m->act_floats * sizeof(float) : 0);
}

static PyMethodDef Engine_methods[] = {
    {"tensors", (PyCFunction)Engine_tensors, METH_NOARGS, "[(name, shape, offset, group)] in buffer order"},
    {"buffer", (PyCFunction)Engine_buffer, METH_VARARGS, "buffer('params'|'grads'|'m'|'v') -> 1-D float32 view"},
    {"forward", (PyCFunction)Engine_forward, METH_VARARGS, "forward(images float32 (B,C,H,W)) -> logits"},
    {"preact", (PyCFunction)Engine_preact, METH_VARARGS, "preact(block) -> copy of the fc1 output (B,T,H)"},
    {"backward", (PyCFunction)Engine_backward, METH_VARARGS, "backward(dlogits float32 (B,K))"},
    {"grad_norm", (PyCFunction)Engine_grad_norm, METH_VARARGS, "global L2 norm of non-frozen grads"},
    {"grad_scale", (PyCFunction)Engine_grad_scale, METH_VARARGS, "scale non-frozen grads"},
    {"adamw", (PyCFunction)Engine_adamw, METH_VARARGS, "adamw(hp, beta1, beta2, eps, step)"},
    {NULL}};

static PyGetSetDef Engine_getset[] = {
    {"max_batch", (getter)Engine_get_max_batch, NULL, "largest batch the activations hold", NULL},
    {"last_batch", (getter)Engine_get_last_batch, NULL, "batch of the last forward (0: none)", NULL},
    {"activation_bytes", (getter)Engine_get_act_bytes, NULL, "bytes of the activation arena", NULL},
    {NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "polyvit._C.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The CPU engine holding one ViT: parameters, gradients, AdamW moments, activations.",
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
    .tp_init = (initproc)Engine_init,
    .tp_new = PyType_GenericNew,
};

/* ---- losses ---------------------------------------------------------------------------- */
/* Each returns (loss, dlogits). Arrays arrive float32/int64 C-contiguous from the Python layer. */
static PyObject *py_cross_entropy(PyObject *mod, PyObject *args) {
    PyObject *lo, *to;
    double smoothing;
    if (!PyArg_ParseTuple(args, "OOd", &lo, &to, &smoothing)) return NULL;
    PyArrayObject *l = as_f32(lo, 2, "logits");
    if (!l) return NULL;
    int B = (int)PyArray_DIM(l, 0), K = (int)PyArray_DIM(l, 1);
    PyArrayObject *t = NULL;
    PyObject *dl = NULL;
    if (!PyArray_Check(to)) {
        PyErr_SetString(PyExc_TypeError, "target must be a numpy array");
        goto fail;
    }
    t = (PyArrayObject *)to;
    Py_INCREF(t);
    int hard = PyArray_TYPE(t) == NPY_INT64;
    if (hard ? (PyArray_NDIM(t) != 1 || PyArray_DIM(t, 0) != B)
             : (PyArray_TYPE(t) != NPY_FLOAT32 || PyArray_NDIM(t) != 2 || PyArray_DIM(t, 0) != B ||
                PyArray_DIM(t, 1) != K)) {
        PyErr_SetString(PyExc_ValueError, "target must be int64 labels (B,) or float32 probabilities (B, K)");
        goto fail;
    }
    if (!PyArray_IS_C_CONTIGUOUS(t)) {
        PyErr_SetString(PyExc_ValueError, "target must be C-contiguous");
        goto fail;
    }
    if (hard) {
        const int64_t *lab = (const int64_t *)PyArray_DATA(t);
        for (int b = 0; b < B; b++)
            if (lab[b] < 0 || lab[b] >= K) {
                PyErr_Format(PyExc_ValueError, "label %lld at position %d is outside 0..%d",
                             (long long)lab[b], b, K - 1);
                goto fail;
            }
    }
    npy_intp dims[2] = {B, K};
    dl = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!dl) goto fail;
    double loss;
    Py_BEGIN_ALLOW_THREADS loss = loss_cross_entropy(
        (float *)PyArray_DATA((PyArrayObject *)dl), (const float *)PyArray_DATA(l),
        hard ? (const int64_t *)PyArray_DATA(t) : NULL, hard ? NULL : (const float *)PyArray_DATA(t), B,
        K, (float)smoothing);
    Py_END_ALLOW_THREADS Py_DECREF(l);
    Py_DECREF(t);
    return Py_BuildValue("(dN)", loss, dl);
fail:
    Py_XDECREF(l);
    Py_XDECREF(t);
    Py_XDECREF(dl);
    return NULL;
}

static PyObject *pair_loss(PyObject *args, int kind) {
    PyObject *lo, *to;
    double T = 1.0;
    if (!PyArg_ParseTuple(args, kind ? "OOd" : "OO", &lo, &to, &T)) return NULL;
    PyArrayObject *l = as_f32(lo, 2, "logits"), *t = NULL;
    PyObject *dl = NULL;
    if (!l) return NULL;
    t = as_f32(to, 2, "teacher_logits");
    if (!t) goto fail;
    if (PyArray_DIM(t, 0) != PyArray_DIM(l, 0) || PyArray_DIM(t, 1) != PyArray_DIM(l, 1)) {
        PyErr_SetString(PyExc_ValueError, "teacher_logits must have the same shape as logits");
        goto fail;
    }
    int B = (int)PyArray_DIM(l, 0), K = (int)PyArray_DIM(l, 1);
    npy_intp dims[2] = {B, K};
    dl = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    if (!dl) goto fail;
    float *d = (float *)PyArray_DATA((PyArrayObject *)dl);
    const float *lp = (const float *)PyArray_DATA(l), *tp = (const float *)PyArray_DATA(t);
    double loss;
    Py_BEGIN_ALLOW_THREADS loss = kind ? loss_kl(d, lp, tp, B, K, (float)T) : loss_mse(d, lp, tp, B, K);
    Py_END_ALLOW_THREADS Py_DECREF(l);
    Py_DECREF(t);
    return Py_BuildValue("(dN)", loss, dl);
fail:
    Py_XDECREF(l);
    Py_XDECREF(t);
    Py_XDECREF(dl);
    return NULL;
}
static PyObject *py_mse(PyObject *mod, PyObject *args) { return pair_loss(args, 0); }
static PyObject *py_kl(PyObject *mod, PyObject *args) { return pair_loss(args, 1); }

static PyObject *py_set_num_threads(PyObject *mod, PyObject *args) {
    int n;
    if (!PyArg_ParseTuple(args, "i", &n)) return NULL;
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "the number of threads must be at least 1, got %d", n);
        return NULL;
    }
    pv_set_num_threads(n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *mod, PyObject *Py_UNUSED(ig)) {
    return PyLong_FromLong(pv_get_num_threads());
}

/* profile(enable=None, reset=False) -> {op: seconds}; enable turns per-op timing on or off */
static PyObject *py_profile(PyObject *mod, PyObject *args, PyObject *kw) {
    return pv_profile_binding(args, kw, pv_profile_enable, pv_profile_read);
}

static PyObject *py_build_info(PyObject *mod, PyObject *Py_UNUSED(ig)) {
#ifdef _OPENMP
    int omp = _OPENMP;
#else
    int omp = 0;
#endif
#ifdef __AVX2__
    int avx2 = 1;
#else
    int avx2 = 0;
#endif
    return Py_BuildValue("{s:s,s:i,s:s,s:i}", "compiler", __VERSION__, "openmp", omp, "blas",
                         pv_blas_get_config(), "avx2", avx2);
}

static PyMethodDef module_methods[] = {
    {"cross_entropy", py_cross_entropy, METH_VARARGS, "cross_entropy(logits, target, smoothing) -> (loss, dlogits)"},
    {"mse", py_mse, METH_VARARGS, "mse(logits, teacher) -> (loss, dlogits)"},
    {"kl", py_kl, METH_VARARGS, "kl(logits, teacher, T) -> (loss, dlogits)"},
    {"set_num_threads", py_set_num_threads, METH_VARARGS, "set the engine's thread count"},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "the engine's thread count"},
    {"build_info", py_build_info, METH_NOARGS, "how this extension was built"},
    {"profile", (PyCFunction)(void (*)(void))py_profile, METH_VARARGS | METH_KEYWORDS,
     "profile(enable=None, reset=False) -> {op: seconds} of engine time per op"},
    {NULL}};

extern PyMethodDef pv_data_methods[]; /* module_data.c: image and augmentation ops */
extern PyMethodDef pv_mix_methods[];  /* module_mix.c: Mixup and CutMix */
extern PyMethodDef pv_fixed_methods[]; /* module_fixed.c: MPC fixed-point ring kernels */

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "polyvit._C", "polyvit's CPU engine", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__C(void) {
    import_array();
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddFunctions(m, pv_data_methods) < 0 || PyModule_AddFunctions(m, pv_mix_methods) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddFunctions(m, pv_fixed_methods) < 0) { Py_DECREF(m); return NULL; }
    /* OpenBLAS single-threaded from the start: our OpenMP regions partition the GEMMs */
    pv_set_num_threads(pv_get_num_threads());
    return m;
}
