/* polyvit._C_cuda: the CPython + NumPy binding of the CUDA engine. Parse, check, call, raise.
 *
 * Same shape as polyvit._C's Engine, except that the buffers live on the device: Python keeps
 * host mirrors and moves whole buffers with download/upload. Importing this module needs the
 * CUDA runtime library only (linked statically) and no driver; a missing driver or device shows
 * up as device_count() == 0 with the reason, and as a RuntimeError when a model is created. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL polyvit_cuda_ARRAY_API
#include <numpy/arrayobject.h>

#include "bindings.h"
#include "cuda/pv_cuda.h"

typedef struct {
    PyObject_HEAD pv_cuda_model *cm;
    int busy;
} Engine;

#define ENGINE_ENTER(self)                                                                    \
    do {                                                                                      \
        if (!(self)->cm) {                                                                    \
            PyErr_SetString(PyExc_RuntimeError, "the CUDA engine was not initialised");        \
            return NULL;                                                                      \
        }                                                                                     \
        if ((self)->busy) {                                                                   \
            PyErr_SetString(PyExc_RuntimeError, "this model is already running in another "     \
                            "thread; use one model per thread");                              \
            return NULL;                                                                      \
        }                                                                                     \
    } while (0)

/* run an engine call with the GIL released; evaluates to its status */
#define CALL(self, rc, expr)                  \
    do {                                      \
        (self)->busy = 1;                     \
        Py_BEGIN_ALLOW_THREADS rc = (expr);   \
        Py_END_ALLOW_THREADS(self)->busy = 0; \
    } while (0)

static void Engine_dealloc(Engine *self) {
    pvc_model_free(self->cm);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Engine_init(Engine *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"config", "max_batch", "device", NULL};
    PyObject *d;
    int max_batch, device = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!i|i", kwlist, &PyDict_Type, &d, &max_batch,
                                     &device))
        return -1;
    pv_config c;
    if (pv_parse_config(d, &c)) return -1;
    pv_cuda_model *cm = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = pvc_model_create(&cm, &c, max_batch, device);
    Py_END_ALLOW_THREADS if (rc) {
        pv_raise(rc);
        return -1;
    }
    pvc_model_free(self->cm);
    self->cm = cm;
    return 0;
}

static PyObject *Engine_tensors(Engine *self, PyObject *Py_UNUSED(ig)) {
    ENGINE_ENTER(self);
    return pv_tensor_table(&self->cm->m);
}

static int buffer_code(const char *which) {
    return !strcmp(which, "params") ? 0
           : !strcmp(which, "grads") ? 1
           : !strcmp(which, "m")     ? 2
           : !strcmp(which, "v")     ? 3
                                     : -1;
}

/* a writable float32 C-contiguous 1-D array of exactly n floats */
static int check_host_buffer(PyObject *o, size_t n, const char *what) {
    if (!PyArray_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array", what);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)o;
    if (PyArray_TYPE(a) != NPY_FLOAT32 || !PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) ||
        (size_t)PyArray_SIZE(a) != n) {
        PyErr_Format(PyExc_ValueError, "%s must be a C-contiguous float32 array of %zu floats",
                     what, n);
        return -1;
    }
    return 0;
}

/* download(which, out) -> out: the whole device buffer into the host array out */
static PyObject *Engine_download(Engine *self, PyObject *args) {
    const char *which;
    PyObject *out;
    if (!PyArg_ParseTuple(args, "sO", &which, &out)) return NULL;
    ENGINE_ENTER(self);
    int code = buffer_code(which), rc;
    if (code < 0) return PyErr_Format(PyExc_ValueError, "unknown buffer '%s'", which);
    if (check_host_buffer(out, self->cm->m.n_params, "the host buffer")) return NULL;
    if (!PyArray_ISWRITEABLE((PyArrayObject *)out))
        return PyErr_Format(PyExc_ValueError, "the host buffer is read-only");
    CALL(self, rc, pvc_download(self->cm, code, (float *)PyArray_DATA((PyArrayObject *)out)));
    if (rc) return pv_raise(rc);
    Py_INCREF(out);
    return out;
}

static PyObject *Engine_upload(Engine *self, PyObject *args) {
    const char *which;
    PyObject *in;
    if (!PyArg_ParseTuple(args, "sO", &which, &in)) return NULL;
    ENGINE_ENTER(self);
    int code = buffer_code(which), rc;
    if (code < 0) return PyErr_Format(PyExc_ValueError, "unknown buffer '%s'", which);
    if (check_host_buffer(in, self->cm->m.n_params, "the host buffer")) return NULL;
    CALL(self, rc, pvc_upload(self->cm, code, (const float *)PyArray_DATA((PyArrayObject *)in)));
    if (rc) return pv_raise(rc);
    Py_RETURN_NONE;
}

/* forward(images, scale, shift) -> logits. images: float32 (B,C,H,W), or uint8 (B,C,H,W) or
 * (B,H,W,C); scale, shift: float32 (C,) applied on the device as x*scale + shift. */
static PyObject *Engine_forward(Engine *self, PyObject *args) {
    PyObject *xo, *so, *ho;
    if (!PyArg_ParseTuple(args, "OOO", &xo, &so, &ho)) return NULL;
    ENGINE_ENTER(self);
    pv_model *m = &self->cm->m;
    int Cin = m->cfg.in_chans, S = m->cfg.img_size;
    if (!PyArray_Check(xo)) return PyErr_Format(PyExc_TypeError, "images must be a numpy array");
    PyArrayObject *x = (PyArrayObject *)xo;
    int u8 = PyArray_TYPE(x) == NPY_UINT8;
    if (!u8 && PyArray_TYPE(x) != NPY_FLOAT32)
        return PyErr_Format(PyExc_TypeError, "images must be uint8 or float32");
    if (!PyArray_IS_C_CONTIGUOUS(x) || !PyArray_ISALIGNED(x))
        return PyErr_Format(PyExc_ValueError, "images must be C-contiguous and aligned");
    npy_intp *d = PyArray_DIMS(x);
    int nchw = PyArray_NDIM(x) == 4 && d[1] == Cin && d[2] == S && d[3] == S;
    int nhwc = u8 && PyArray_NDIM(x) == 4 && d[1] == S && d[2] == S && d[3] == Cin;
    if (!nchw && !nhwc)
        return PyErr_Format(PyExc_ValueError, "images must have shape (B, %d, %d, %d)%s", Cin, S,
                            S, u8 ? " or, for uint8, (B, H, W, C)" : "");
    if (d[0] < 1 || d[0] > m->max_batch)
        return PyErr_Format(PyExc_ValueError, "a batch of %ld images does not fit: this model was "
                            "allocated for at most %d (max_batch)", (long)d[0], m->max_batch);
    if (check_host_buffer(so, (size_t)Cin, "scale") || check_host_buffer(ho, (size_t)Cin, "shift"))
        return NULL;
    int B = (int)d[0], rc;
    npy_intp od[2] = {B, m->K};
    PyObject *out = PyArray_SimpleNew(2, od, NPY_FLOAT32);
    if (!out) return NULL;
    CALL(self, rc, pvc_forward(self->cm, PyArray_DATA(x), u8, nhwc && !nchw,
                               (const float *)PyArray_DATA((PyArrayObject *)so),
                               (const float *)PyArray_DATA((PyArrayObject *)ho), B,
                               (float *)PyArray_DATA((PyArrayObject *)out)));
    if (rc) {
        Py_DECREF(out);
        return pv_raise(rc);
    }
    return out;
}

static PyObject *Engine_preact(Engine *self, PyObject *args) {
    int l, rc;
    if (!PyArg_ParseTuple(args, "i", &l)) return NULL;
    ENGINE_ENTER(self);
    pv_model *m = &self->cm->m;
    if (l < 0 || l >= m->cfg.depth)
        return PyErr_Format(PyExc_ValueError, "block %d out of range for depth %d", l, m->cfg.depth);
    if (!m->last_batch)
        return PyErr_Format(PyExc_RuntimeError, "no forward has run yet, so there is nothing to capture");
    npy_intp od[3] = {m->last_batch, m->T, m->H};
    PyObject *out = PyArray_SimpleNew(3, od, NPY_FLOAT32);
    if (!out) return NULL;
    CALL(self, rc, pvc_preact(self->cm, l, (float *)PyArray_DATA((PyArrayObject *)out)));
    if (rc) {
        Py_DECREF(out);
        return pv_raise(rc);
    }
    return out;
}

static PyObject *Engine_backward(Engine *self, PyObject *args) {
    PyObject *go;
    if (!PyArg_ParseTuple(args, "O", &go)) return NULL;
    ENGINE_ENTER(self);
    pv_model *m = &self->cm->m;
    if (!PyArray_Check(go)) return PyErr_Format(PyExc_TypeError, "dlogits must be a numpy array");
    PyArrayObject *g = (PyArrayObject *)go;
    if (PyArray_TYPE(g) != NPY_FLOAT32 || PyArray_NDIM(g) != 2 || !PyArray_IS_C_CONTIGUOUS(g) ||
        PyArray_DIM(g, 1) != m->K || PyArray_DIM(g, 0) < 1 || PyArray_DIM(g, 0) > m->max_batch)
        return PyErr_Format(PyExc_ValueError, "dlogits must be C-contiguous float32 of shape "
                            "(B, %d) with 1 <= B <= %d", m->K, m->max_batch);
    int rc, B = (int)PyArray_DIM(g, 0);
    CALL(self, rc, pvc_backward(self->cm, (const float *)PyArray_DATA(g), B));
    if (rc) return pv_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *Engine_grad_norm(Engine *self, PyObject *args) {
    PyObject *ho;
    if (!PyArg_ParseTuple(args, "O", &ho)) return NULL;
    ENGINE_ENTER(self);
    pv_group_hp hp[4];
    if (pv_parse_hp(ho, hp)) return NULL;
    double n = 0.0;
    int rc;
    CALL(self, rc, pvc_grad_norm(self->cm, hp, &n));
    if (rc) return pv_raise(rc);
    return PyFloat_FromDouble(n);
}

static PyObject *Engine_grad_scale(Engine *self, PyObject *args) {
    PyObject *ho;
    double s;
    if (!PyArg_ParseTuple(args, "Od", &ho, &s)) return NULL;
    ENGINE_ENTER(self);
    pv_group_hp hp[4];
    if (pv_parse_hp(ho, hp)) return NULL;
    int rc;
    CALL(self, rc, pvc_grad_scale(self->cm, hp, (float)s));
    if (rc) return pv_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *Engine_adamw(Engine *self, PyObject *args) {
    PyObject *ho;
    double b1, b2, eps;
    int t, rc;
    if (!PyArg_ParseTuple(args, "Odddi", &ho, &b1, &b2, &eps, &t)) return NULL;
    ENGINE_ENTER(self);
    pv_group_hp hp[4];
    if (pv_parse_hp(ho, hp)) return NULL;
    if (t < 1) return PyErr_Format(PyExc_ValueError, "the AdamW step number starts at 1");
    CALL(self, rc, pvc_adamw_step(self->cm, hp, (float)b1, (float)b2, (float)eps, t));
    if (rc) return pv_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *Engine_set_precision(Engine *self, PyObject *args) {
    int mode;
    if (!PyArg_ParseTuple(args, "i", &mode)) return NULL;
    ENGINE_ENTER(self);
    int rc = pvc_set_precision(self->cm, mode);
    if (rc) return pv_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *Engine_synchronize(Engine *self, PyObject *Py_UNUSED(ig)) {
    ENGINE_ENTER(self);
    int rc;
    CALL(self, rc, pvc_synchronize(self->cm));
    if (rc) return pv_raise(rc);
    Py_RETURN_NONE;
}

static PyObject *get_max_batch(Engine *self, void *c) {
    return PyLong_FromLong(self->cm ? self->cm->m.max_batch : 0);
}
static PyObject *get_last_batch(Engine *self, void *c) {
    return PyLong_FromLong(self->cm ? self->cm->m.last_batch : 0);
}
static PyObject *get_device(Engine *self, void *c) {
    return PyLong_FromLong(self->cm ? self->cm->device : -1);
}
static PyObject *get_precision(Engine *self, void *c) {
    return PyLong_FromLong(self->cm ? self->cm->precision : 0);
}
static PyObject *get_device_bytes(Engine *self, void *c) {
    return PyLong_FromSize_t(self->cm ? self->cm->device_bytes : 0);
}
static PyObject *get_n_params(Engine *self, void *c) {
    return PyLong_FromSize_t(self->cm ? self->cm->m.n_params : 0);
}

static PyMethodDef Engine_methods[] = {
    {"tensors", (PyCFunction)Engine_tensors, METH_NOARGS, "[(name, shape, offset, group)] in buffer order"},
    {"download", (PyCFunction)Engine_download, METH_VARARGS, "download(which, out): device buffer -> host array"},
    {"upload", (PyCFunction)Engine_upload, METH_VARARGS, "upload(which, array): host array -> device buffer"},
    {"forward", (PyCFunction)Engine_forward, METH_VARARGS, "forward(images, scale, shift) -> logits"},
    {"preact", (PyCFunction)Engine_preact, METH_VARARGS, "preact(block) -> copy of the fc1 output (B,T,H)"},
    {"backward", (PyCFunction)Engine_backward, METH_VARARGS, "backward(dlogits float32 (B,K))"},
    {"grad_norm", (PyCFunction)Engine_grad_norm, METH_VARARGS, "global L2 norm of non-frozen grads"},
    {"grad_scale", (PyCFunction)Engine_grad_scale, METH_VARARGS, "scale non-frozen grads"},
    {"adamw", (PyCFunction)Engine_adamw, METH_VARARGS, "adamw(hp, beta1, beta2, eps, step)"},
    {"set_precision", (PyCFunction)Engine_set_precision, METH_VARARGS, "0 fp32, 1 tf32, 2 bf16"},
    {"synchronize", (PyCFunction)Engine_synchronize, METH_NOARGS, "wait for the model's stream"},
    {NULL}};

static PyGetSetDef Engine_getset[] = {
    {"max_batch", (getter)get_max_batch, NULL, "largest batch the activations hold", NULL},
    {"last_batch", (getter)get_last_batch, NULL, "batch of the last forward (0: none)", NULL},
    {"device", (getter)get_device, NULL, "CUDA device ordinal", NULL},
    {"precision", (getter)get_precision, NULL, "0 fp32, 1 tf32, 2 bf16", NULL},
    {"device_bytes", (getter)get_device_bytes, NULL, "device memory this model holds", NULL},
    {"n_params", (getter)get_n_params, NULL, "floats in each buffer (with alignment padding)", NULL},
    {NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "polyvit._C_cuda.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The CUDA engine holding one ViT on a device.",
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
    .tp_init = (initproc)Engine_init,
    .tp_new = PyType_GenericNew,
};

/* device_count() -> (n, reason): reason says why n is 0 ("" otherwise) */
static PyObject *py_device_count(PyObject *mod, PyObject *Py_UNUSED(ig)) {
    int n = 0;
    int rc = pvc_device_count(&n);
    if (rc) return pv_raise(rc);
    return Py_BuildValue("(is)", n, n ? "" : pv_last_error());
}

static PyObject *py_device_info(PyObject *mod, PyObject *args) {
    int dev, major = 0, minor = 0, sms = 0;
    if (!PyArg_ParseTuple(args, "i", &dev)) return NULL;
    char name[256];
    size_t mem = 0;
    int rc = pvc_device_info(dev, name, sizeof name, &major, &minor, &mem, &sms);
    if (rc) return pv_raise(rc);
    return Py_BuildValue("{s:s,s:(ii),s:n,s:i}", "name", name, "capability", major, minor,
                         "total_memory", (Py_ssize_t)mem, "multiprocessors", sms);
}

static PyObject *py_synchronize(PyObject *mod, PyObject *Py_UNUSED(ig)) {
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = pvc_device_synchronize();
    Py_END_ALLOW_THREADS if (rc) return pv_raise(rc);
    Py_RETURN_NONE;
}

/* profile(enable=None, reset=False) -> {op: seconds}, as polyvit._C.profile */
static PyObject *py_profile(PyObject *mod, PyObject *args, PyObject *kw) {
    return pv_profile_binding(args, kw, pvc_profile_enable, pvc_profile_read);
}

static PyObject *py_build_info(PyObject *mod, PyObject *Py_UNUSED(ig)) {
    int rt = 0, drv = 0, blas = 0;
    pvc_versions(&rt, &drv, &blas);
#ifdef PV_CUDA_ARCHS
    const char *archs = PV_CUDA_ARCHS;
#else
    const char *archs = "";
#endif
    return Py_BuildValue("{s:i,s:i,s:i,s:s}", "cuda_runtime", rt, "cuda_driver", drv, "cublas",
                         blas, "archs", archs);
}

static PyMethodDef module_methods[] = {
    {"device_count", py_device_count, METH_NOARGS, "(number of CUDA devices, reason when 0)"},
    {"device_info", py_device_info, METH_VARARGS, "device_info(i) -> name, capability, memory"},
    {"profile", (PyCFunction)(void (*)(void))py_profile, METH_VARARGS | METH_KEYWORDS,
     "profile(enable=None, reset=False) -> {op: seconds} (each op timed with the stream drained)"},
    {"synchronize", py_synchronize, METH_NOARGS, "wait for all work on the current device"},
    {"build_info", py_build_info, METH_NOARGS, "CUDA runtime, driver and cuBLAS versions"},
    {NULL}};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "polyvit._C_cuda",
                                    "polyvit's CUDA engine", -1, module_methods};

PyMODINIT_FUNC PyInit__C_cuda(void) {
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
    return m;
}
