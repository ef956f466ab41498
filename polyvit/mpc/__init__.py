"""Private (MPC) inference: what a model costs under secure multi-party computation, and running
it there.

- ``count(model)``: the nonlinearities of one forward pass and their per-element costs.
"""
from .count import DEFAULT_PROFILE, PROFILES, Profile, count, describe  # noqa: F401
