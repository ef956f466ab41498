"""Private (MPC) inference: what a model costs under secure multi-party computation, and running
it there.

- ``cost(model, protocol=...)``: the analytic cost model (bytes and rounds per op, block and
  kind) from per-op constants measured on SPU (``bench/mpc_constants.py``); milliseconds.
- ``export(model)``: the forward as a JAX function for SPU (``polyvit.mpc.jax_export``).
- ``run(model, images, protocol=...)``: secure inference under SPU with SPU's own costs
  (``polyvit.mpc.inference``).
- ``fixedpoint.evaluate(model, images, frac_bits=...)``: the whole model in the ring arithmetic
  MPC uses, in C (plaintext simulation): fidelity and per-block ranges against the safe bound.
- ``count(model)``: the older per-element accounting of the nonlinearities.

``export`` and ``run`` need the mpc extra: ``pip install "polyvit[mpc]"`` (SecretFlow SPU 0.9.5,
Python 3.10-3.11, numpy<2, jax 0.4.34).
"""
from .count import DEFAULT_PROFILE, PROFILES, Profile, count, describe  # noqa: F401
from .cost_model import cost  # noqa: F401,E402
from . import fixedpoint  # noqa: F401,E402  (C only: no extra needed)


def export(model, fold: bool = True):
    """The model as a JAX function + parameters (needs the mpc extra); see polyvit.mpc.jax_export."""
    from .jax_export import export as _export

    return _export(model, fold=fold)


def run(model, images, **kw):
    """The model under SecretFlow SPU on secret images; see polyvit.mpc.inference.run."""
    from .inference import run as _run

    return _run(model, images, **kw)
