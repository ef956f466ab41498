"""polyvit.mpc.export: the JAX function computes the C engine's forward (issue 10, part 1)."""
import numpy as np
import pytest

import polyvit

pytest.importorskip("jax", reason="JAX is not installed (pip install \"polyvit[mpc]\", Python 3.10-3.11)")
from polyvit.mpc.jax_export import KINDS, export  # noqa: E402

CONFIGS = [
    dict(),
    dict(final_norm=False),
    dict(global_pool="avg"),
    dict(global_pool="avg", fc_norm=True),
    dict(gelu="tanh"),
    dict(qkv_bias=False),
]


def _model(depth=3, **over):
    m = polyvit.ViT.preset("vit_mini_patch4_32", depth=depth, seed=1, max_batch=8,
                           mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), **over)
    m.set_activation([min(1, depth - 1)], "poly", coeffs=(0.1, 0.5, 0.2, 1.3))
    return m


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("over", CONFIGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("fold", [True, False])
def test_export_matches_engine(over, fold):
    m = _model(**over)
    imgs = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    ref = m.forward(imgs)
    out = export(m, fold=fold)(imgs)
    assert out.shape == ref.shape
    assert _rel(out, ref) <= 1e-5


def test_export_per_channel_poly_and_float_input():
    m = _model()
    H = m.config.mlp_hidden
    rng = np.random.default_rng(2)
    m.set_activation([0, 2], "poly", per_channel=True,
                     coeffs=dict(a=rng.uniform(0.05, 0.2, H), b=rng.uniform(0.3, 0.7, H),
                                 c=rng.uniform(0, 0.3, H), s=rng.uniform(0.8, 1.2, H)))
    x = m.preprocess(rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    assert _rel(export(m)(x), m.forward(x)) <= 1e-5


def test_export_on_real_weights():
    from polyvit.demo import load_assets

    teacher, _, test, _ = load_assets(max_batch=32)
    imgs = test[0][:32]
    e = export(teacher)
    assert _rel(e(imgs), teacher.forward(imgs)) <= 1e-5


def test_ops_cover_the_forward():
    m = _model(depth=2)
    ops = export(m).ops(batch=2)
    names = [o.name for o in ops]
    assert names[0] == "patch_embed" and names[-1] == "head"
    per_block = [o for o in ops if o.block == 1]
    assert [o.kind for o in per_block] == ["layernorm", "matmul", "matmul", "softmax", "matmul",
                                           "matmul", "layernorm", "matmul", "activation", "matmul"]
    assert {o.kind for o in ops} == set(KINDS)
    act = {o.block: o for o in ops if o.kind == "activation"}
    assert act[0].variant == "gelu-erf" and act[1].variant == "poly"
    assert act[1].param_args == (False, True, True, True)
    assert act[0].shapes == ((2, 65, 512),)
    sm = [o for o in ops if o.kind == "softmax"][0]
    assert sm.shapes == ((2, 4, 65, 65),)
    # ops of equal shape and visibility share a key (their SPU costs are measured once)
    qkv = [o for o in ops if o.name.endswith("attn.qkv")]
    assert qkv[0].key("secret") == qkv[1].key("secret")
    assert act[0].key("public") != act[1].key("public")


def test_folding_saves_the_layernorm_affine():
    m = _model(depth=1)
    folded = export(m, fold=True)
    literal = export(m, fold=False)
    assert "blocks.0.norm1.w" not in folded.params and "blocks.0.norm1.w" in literal.params
    ln = [o for o in folded.ops() if o.kind == "layernorm"]
    assert all(o.param_args == (False,) for o in ln)


def test_export_rejects_bad_input():
    m = _model(depth=1)
    with pytest.raises(TypeError, match="polyvit.ViT"):
        export(m.state_dict())
    e = export(m)
    with pytest.raises(ValueError, match="NCHW"):
        e(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 images"):
        e(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        e(np.zeros((2, 3, 32, 32), np.int32))
