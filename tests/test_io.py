"""Tests of polyvit.io: polyvit's safetensors files and the timm/torchvision/HF importers.

Most tests run against a stand-in model (a config plus float32 views into one flat buffer, like
the engine's); the ``backend`` fixture runs the central ones against the real ``polyvit.ViT``
too, and skips those when the engine is not built.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import polyvit  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polyvit.io as pio  # noqa: E402
from polyvit.config import ViTConfig  # noqa: E402

try:
    import torch
except ImportError:  # torch is optional
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------
class StandInViT:
    """What io relies on: ``config`` and ``params`` (float32 views into one buffer)."""

    def __init__(self, config, max_batch=64, seed=0):
        self.config = config
        self.max_batch = max_batch
        self.seed = seed
        specs = config.param_specs()
        sizes = [int(np.prod(shape)) for _, shape, _ in specs]
        self._buffer = np.zeros(sum(sizes), np.float32)
        self.params = {}
        off = 0
        for (name, shape, _), size in zip(specs, sizes):
            self.params[name] = self._buffer[off:off + size].reshape(shape)
            off += size


def _real_vit_class():
    try:
        import polyvit
        return polyvit.ViT
    except Exception:
        pytest.skip("polyvit engine not built")


@pytest.fixture(params=["stand-in", "engine"])
def backend(request, monkeypatch):
    """A model constructor ``make(config)``; io builds models with the same class."""
    if request.param == "stand-in":
        monkeypatch.setattr(pio._common, "_model_class", lambda: StandInViT)
        return lambda cfg: StandInViT(cfg, max_batch=2)
    cls = _real_vit_class()

    def make(cfg):
        try:
            return cls(cfg, max_batch=2, seed=0)
        except (ImportError, OSError) as e:  # the shared library is not there
            pytest.skip(f"polyvit engine not built ({e})")
    return make


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setattr(pio._common, "_model_class", lambda: StandInViT)
    return lambda cfg: StandInViT(cfg, max_batch=2)


def tiny_config(**kw):
    d = dict(img_size=8, patch_size=4, in_chans=3, embed_dim=16, depth=3, num_heads=2,
             mlp_ratio=2.0, num_classes=5, ln_eps=1e-5, act=["gelu", "poly", "poly"],
             poly_per_channel=[False, False, True])
    d.update(kw)
    return ViTConfig(**d)


def gelu_config(**kw):
    d = dict(img_size=8, patch_size=4, in_chans=3, embed_dim=16, depth=2, num_heads=2,
             mlp_ratio=2.0, num_classes=5)
    d.update(kw)
    return ViTConfig(**d)


def fill(model, seed=0):
    rng = np.random.default_rng(seed)
    for name, arr in model.params.items():
        arr[...] = rng.standard_normal(arr.shape).astype(np.float32)
    return model


def random_params(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s, _ in cfg.param_specs()}


def snapshot(model):
    return {n: np.array(a, copy=True) for n, a in model.params.items()}


def assert_params_equal(a, b):
    assert list(a) == list(b) or set(a) == set(b)
    for n in a:
        x, y = np.asarray(a[n]), np.asarray(b[n])
        assert x.shape == y.shape, n
        assert x.dtype == y.dtype == np.float32, n
        assert x.tobytes() == y.tobytes(), n


def write_safetensors_raw(path, tensors, metadata=None):
    """A safetensors file written by hand: tensors maps name -> (dtype code, shape, bytes)."""
    header = {}
    off = 0
    blobs = []
    for name, (code, shape, data) in tensors.items():
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ----------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------
def test_save_load_round_trip(backend, tmp_path):
    cfg = tiny_config()
    model = fill(backend(cfg))
    path = tmp_path / "m.safetensors"
    pio.save(model, path, metadata={"epoch": "7", "note": "hello"})
    loaded = pio.load(path)
    assert loaded.config == cfg
    assert loaded.config.act == ("gelu", "poly", "poly")
    assert loaded.config.poly_per_channel == (False, False, True)
    assert loaded.config.ln_eps == 1e-5
    assert_params_equal(snapshot(model), snapshot(loaded))
    if hasattr(model, "forward"):  # the engine: same weights, same logits
        x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
        np.testing.assert_array_equal(model.forward(x), loaded.forward(x))

    from safetensors import safe_open
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        assert set(f.keys()) == {n for n, _, _ in cfg.param_specs()}
    assert meta["format"] == "polyvit"
    assert meta["epoch"] == "7" and meta["note"] == "hello"
    assert ViTConfig.from_json(meta["polyvit_config"]) == cfg
    assert isinstance(meta["polyvit_version"], str) and meta["polyvit_version"]


def test_load_passes_max_batch(standin, tmp_path):
    model = fill(standin(gelu_config()))
    pio.save(model, tmp_path / "m.safetensors")
    m = pio.load(tmp_path / "m.safetensors", max_batch=5)
    assert m.max_batch == 5 and m.seed is None
    assert pio.load(tmp_path / "m.safetensors", seed=3).seed == 3
    assert pio.load(str(tmp_path / "m.safetensors")).max_batch == 64


def test_save_metadata_is_checked(standin, tmp_path):
    model = standin(gelu_config())
    with pytest.raises(TypeError, match="str"):
        pio.save(model, tmp_path / "a.safetensors", metadata={"epoch": 3})
    with pytest.raises(ValueError, match="reserved"):
        pio.save(model, tmp_path / "a.safetensors", metadata={"format": "x"})
    assert not os.listdir(tmp_path)


def test_save_refuses_params_that_do_not_match_config(tmp_path):
    model = StandInViT(gelu_config())
    model.params["head.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="head.bias"):
        pio.save(model, tmp_path / "a.safetensors")


def test_save_is_atomic(standin, tmp_path, monkeypatch):
    import safetensors.numpy as stnp

    path = tmp_path / "m.safetensors"
    model = fill(standin(tiny_config()), seed=1)
    pio.save(model, path)
    before = path.read_bytes()

    fill(model, seed=2)
    real_save_file = stnp.save_file

    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial garbage")
        raise RuntimeError("disk full")

    monkeypatch.setattr(stnp, "save_file", failing_save_file)
    with pytest.raises(RuntimeError, match="disk full"):
        pio.save(model, path)
    monkeypatch.setattr(stnp, "save_file", real_save_file)

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temporary left behind
    fill(model, seed=1)
    assert_params_equal(snapshot(model), snapshot(pio.load(path)))


def test_save_refuses_nonfinite_and_keeps_old_file(standin, tmp_path):
    path = tmp_path / "m.safetensors"
    model = fill(standin(gelu_config()))
    pio.save(model, path)
    before = path.read_bytes()
    model.params["blocks.1.mlp.fc2.weight"][0, 0] = np.nan
    model.params["head.bias"][1] = np.inf
    with pytest.raises(ValueError) as e:
        pio.save(model, path)
    assert "blocks.1.mlp.fc2.weight" in str(e.value) and "head.bias" in str(e.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_save_float16(standin, tmp_path):
    """dtype="float16": half the bytes, every weight within float16 rounding of the original,
    read back as float32; out-of-range weights and unknown dtypes refused, nothing written."""
    model = fill(standin(gelu_config()))
    full, half = tmp_path / "f.safetensors", tmp_path / "h.safetensors"
    pio.save(model, full)
    pio.save(model, half, dtype="float16")
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)
    from safetensors import safe_open
    with safe_open(str(half), framework="np") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    loaded = pio.load(half)
    for name, want in snapshot(model).items():
        got = loaded.params[name]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want.astype(np.float16).astype(np.float32))
    model.params["head.bias"][0] = 1e5
    with pytest.raises(ValueError, match="head.bias"):
        pio.save(model, tmp_path / "x.safetensors", dtype="float16")
    with pytest.raises(ValueError, match="dtype"):
        pio.save(model, tmp_path / "x.safetensors", dtype="bfloat16")
    assert not os.path.exists(tmp_path / "x.safetensors")


def test_save_into_missing_folder(standin, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pio.save(standin(gelu_config()), tmp_path / "nope" / "m.safetensors")


def test_save_keeps_umask_permissions(standin, tmp_path):
    path = tmp_path / "m.safetensors"
    pio.save(standin(gelu_config()), path)
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_load_missing_file(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        pio.load(path)
    assert isinstance(e.value, OSError)
    assert str(path) in str(e.value)


def test_load_directory(tmp_path):
    with pytest.raises(OSError):
        pio.load(tmp_path)


def _valid_file(standin, tmp_path):
    path = tmp_path / "good.safetensors"
    pio.save(fill(standin(gelu_config())), path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated", "header_only", "bad_json",
                                  "huge_header", "short_header"])
def test_load_corrupt_files(standin, tmp_path, kind):
    good = _valid_file(standin, tmp_path)
    n = struct.unpack("<Q", good[:8])[0]
    data = {
        "empty": b"",
        "garbage": b"this is not a safetensors file at all" * 10,
        "truncated": good[:-100],
        "header_only": good[:8 + n],
        "bad_json": good[:8] + b"x" + good[9:],
        "huge_header": struct.pack("<Q", 10 ** 12) + good[8:],
        "short_header": good[:5],
    }[kind]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(OSError) as e:
        pio.load(path)
    assert not isinstance(e.value, FileNotFoundError)
    assert str(path) in str(e.value) and "is not a valid safetensors file" in str(e.value)


def test_load_without_polyvit_config(standin, tmp_path):
    import safetensors.numpy as stnp

    path = tmp_path / "plain.safetensors"
    stnp.save_file(random_params(gelu_config()), str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError) as e:
        pio.load(path)
    msg = str(e.value)
    assert str(path) in msg and "import_weights" in msg and "from_state_dict" in msg
    stnp.save_file(random_params(gelu_config()), str(path))  # no metadata at all
    with pytest.raises(ValueError, match="no polyvit config"):
        pio.load(path)


def test_load_bad_stored_config(standin, tmp_path):
    import safetensors.numpy as stnp

    path = tmp_path / "m.safetensors"
    stnp.save_file(random_params(gelu_config()), str(path), metadata={"polyvit_config": "{oops"})
    with pytest.raises(ValueError, match="config stored in"):
        pio.load(path)


def _write_polyvit_file(path, cfg, tensors):
    import safetensors.numpy as stnp
    stnp.save_file(tensors, str(path), metadata={"polyvit_config": cfg.to_json(),
                                                 "format": "polyvit"})


def test_load_rejects_integer_tensors(standin, tmp_path):
    cfg = gelu_config()
    t = random_params(cfg)
    t["head.bias"] = np.arange(5, dtype=np.int32)
    t["norm.weight"] = np.ones(16, dtype=np.int64)
    path = tmp_path / "m.safetensors"
    _write_polyvit_file(path, cfg, t)
    with pytest.raises(ValueError) as e:
        pio.load(path)
    msg = str(e.value)
    assert "head.bias" in msg and "int32" in msg and "norm.weight" in msg and "int64" in msg


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_load_converts_float_dtypes(standin, tmp_path, dtype):
    cfg = tiny_config()
    ref = {n: np.round(v * 8) / 8 for n, v in random_params(cfg).items()}  # exact in fp16
    path = tmp_path / "m.safetensors"
    _write_polyvit_file(path, cfg, {n: v.astype(dtype) for n, v in ref.items()})
    assert_params_equal(ref, snapshot(pio.load(path)))


def test_load_converts_bfloat16(standin, tmp_path):
    cfg = tiny_config()
    ref = {n: np.round(v * 8) / 8 for n, v in random_params(cfg).items()}  # exact in bf16
    raw = {}
    for n, v in ref.items():
        bits = (v.astype("<f4").view("<u4") >> 16).astype("<u2")
        raw[n] = ("BF16", v.shape, bits.tobytes())
    path = tmp_path / "m.safetensors"
    write_safetensors_raw(path, raw, {"polyvit_config": cfg.to_json(), "format": "polyvit"})
    assert_params_equal(ref, snapshot(pio.load(path)))


def test_load_unsupported_dtype(standin, tmp_path):
    cfg = gelu_config()
    raw = {n: ("F32", v.shape, v.astype("<f4").tobytes()) for n, v in random_params(cfg).items()}
    raw["head.bias"] = ("F8_E4M3", (5,), bytes(5))
    path = tmp_path / "m.safetensors"
    write_safetensors_raw(path, raw, {"polyvit_config": cfg.to_json()})
    with pytest.raises((ValueError, OSError), match="head.bias"):
        pio.load(path)


def test_load_rejects_nonfinite(standin, tmp_path):
    cfg = tiny_config()
    t = random_params(cfg)
    t["blocks.2.mlp.act.s"][3] = np.nan
    t["pos_embed"][0, 0, 0] = -np.inf
    path = tmp_path / "m.safetensors"
    _write_polyvit_file(path, cfg, t)
    with pytest.raises(ValueError) as e:
        pio.load(path)
    msg = str(e.value)
    assert "blocks.2.mlp.act.s" in msg and "pos_embed" in msg and str(path) in msg


def test_load_float64_overflow_is_nonfinite(standin, tmp_path):
    cfg = gelu_config()
    t = {n: v.astype(np.float64) for n, v in random_params(cfg).items()}
    t["head.weight"][0, 0] = 1e300
    path = tmp_path / "m.safetensors"
    _write_polyvit_file(path, cfg, t)
    with pytest.raises(ValueError, match="head.weight"):
        pio.load(path)


# ----------------------------------------------------------------------------------------------
# load_state_dict
# ----------------------------------------------------------------------------------------------
def test_load_state_dict_copies_into_views(backend):
    cfg = tiny_config()
    model = backend(cfg)
    views = dict(model.params)
    sd = random_params(cfg, seed=3)
    assert pio.load_state_dict(model, sd) == pio.LoadResult([], [])
    assert_params_equal(sd, snapshot(model))
    for n in views:
        assert model.params[n] is views[n]  # written in place, not rebound


def test_load_state_dict_reports_everything_at_once(backend):
    cfg = tiny_config()
    model = fill(backend(cfg))
    before = snapshot(model)
    sd = random_params(cfg, seed=5)
    del sd["head.bias"], sd["blocks.1.mlp.act.a"]
    sd["blocks.0.attn.qkv.weight"] = np.zeros((16, 16), np.float32)
    sd["cls_token"] = np.zeros(16, np.float32)  # only the exact shape is accepted
    sd["fc_norm.weight"] = np.zeros(16, np.float32)
    sd["blocks.0.mlp.fc1.bias"] = np.arange(32)  # integers
    sd["norm.bias"] = np.full(16, np.nan, np.float32)
    with pytest.raises(ValueError) as e:
        pio.load_state_dict(model, sd)
    msg = str(e.value)
    for piece in ["head.bias", "blocks.1.mlp.act.a", "fc_norm.weight",
                  "blocks.0.attn.qkv.weight: expected (48, 16), got (16, 16)",
                  "cls_token: expected (1, 1, 16), got (16,)", "blocks.0.mlp.fc1.bias",
                  "norm.bias", "missing", "not parameters of this model", "wrong shape",
                  "not floating point", "NaN"]:
        assert piece in msg, piece
    assert "nothing was loaded" in msg
    assert_params_equal(before, snapshot(model))


def test_load_state_dict_caps_long_lists(standin):
    model = standin(gelu_config())
    sd = random_params(gelu_config())
    for i in range(35):
        sd[f"extra.{i:02d}"] = np.zeros(1, np.float32)
    with pytest.raises(ValueError) as e:
        pio.load_state_dict(model, sd)
    msg = str(e.value)
    assert "extra.19" in msg and "extra.20" not in msg and "... and 15 more" in msg


def test_load_state_dict_non_strict(standin):
    cfg = gelu_config()
    model = fill(standin(cfg))
    before = snapshot(model)
    sd = {"head.bias": np.arange(5, dtype=np.float32), "foo": np.zeros(2, np.float32)}
    res = pio.load_state_dict(model, sd, strict=False)
    assert res.unexpected_keys == ["foo"]
    assert "head.weight" in res.missing_keys and "head.bias" not in res.missing_keys
    np.testing.assert_array_equal(model.params["head.bias"], np.arange(5))
    np.testing.assert_array_equal(model.params["head.weight"], before["head.weight"])
    with pytest.raises(ValueError, match="wrong shape"):  # shapes are checked even then
        pio.load_state_dict(model, {"head.bias": np.zeros(4)}, strict=False)


def test_load_state_dict_poly_scalars_accept_0d(standin):
    cfg = tiny_config()
    model = standin(cfg)
    sd = random_params(cfg)
    sd["blocks.1.mlp.act.a"] = np.float32(2.5)
    sd["blocks.1.mlp.act.b"] = np.array(-1.0)
    pio.load_state_dict(model, sd)
    assert model.params["blocks.1.mlp.act.a"].tolist() == [2.5]
    assert model.params["blocks.1.mlp.act.b"].tolist() == [-1.0]
    sd["blocks.2.mlp.act.a"] = np.float32(1.0)  # per-channel: needs the full width
    with pytest.raises(ValueError, match="blocks.2.mlp.act.a"):
        pio.load_state_dict(model, sd)


def test_load_state_dict_accepts_lists(standin):
    cfg = gelu_config()
    model = standin(cfg)
    sd = {n: v.tolist() for n, v in random_params(cfg).items()}
    pio.load_state_dict(model, sd)
    np.testing.assert_array_equal(model.params["head.weight"], np.asarray(sd["head.weight"], np.float32))


def test_load_state_dict_hints_at_other_layouts(standin):
    cfg = gelu_config()
    with pytest.raises(ValueError, match="from_torchvision"):
        pio.load_state_dict(standin(cfg), timm_to_torchvision(random_params(cfg)))


@needs_torch
def test_load_state_dict_torch_tensors(standin):
    cfg = tiny_config()
    model = standin(cfg)
    ref = {n: np.round(v * 8) / 8 for n, v in random_params(cfg).items()}
    sd = {n: torch.from_numpy(v) for n, v in ref.items()}
    sd["head.weight"] = sd["head.weight"].clone().requires_grad_(True)
    sd["norm.weight"] = sd["norm.weight"].to(torch.bfloat16)
    sd["norm.bias"] = sd["norm.bias"].double()
    pio.load_state_dict(model, sd)
    assert_params_equal(ref, snapshot(model))
    sd["head.bias"] = torch.arange(5)
    with pytest.raises(ValueError, match=r"head\.bias has dtype int64"):
        pio.load_state_dict(model, sd)


# ----------------------------------------------------------------------------------------------
# layouts (inverse renamings written independently of polyvit.io)
# ----------------------------------------------------------------------------------------------
def timm_to_torchvision(sd, legacy_mlp=False):
    block_map = {
        "norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
        "attn.qkv.weight": "self_attention.in_proj_weight",
        "attn.qkv.bias": "self_attention.in_proj_bias",
        "attn.proj.weight": "self_attention.out_proj.weight",
        "attn.proj.bias": "self_attention.out_proj.bias",
        "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
        "mlp.fc1.weight": "mlp.linear_1.weight" if legacy_mlp else "mlp.0.weight",
        "mlp.fc1.bias": "mlp.linear_1.bias" if legacy_mlp else "mlp.0.bias",
        "mlp.fc2.weight": "mlp.linear_2.weight" if legacy_mlp else "mlp.3.weight",
        "mlp.fc2.bias": "mlp.linear_2.bias" if legacy_mlp else "mlp.3.bias",
    }
    top = {"cls_token": "class_token", "pos_embed": "encoder.pos_embedding",
           "patch_embed.proj.weight": "conv_proj.weight", "patch_embed.proj.bias": "conv_proj.bias",
           "norm.weight": "encoder.ln.weight", "norm.bias": "encoder.ln.bias",
           "head.weight": "heads.head.weight", "head.bias": "heads.head.bias"}
    out = {}
    for k, v in sd.items():
        if k in top:
            out[top[k]] = v
        else:
            _, i, rest = k.split(".", 2)
            out[f"encoder.layers.encoder_layer_{i}.{block_map[rest]}"] = v
    return out


def timm_to_hf(sd, prefix="vit."):
    out = {}
    for k, v in sd.items():
        if k == "cls_token":
            out[prefix + "embeddings.cls_token"] = v
        elif k == "pos_embed":
            out[prefix + "embeddings.position_embeddings"] = v
        elif k.startswith("patch_embed.proj."):
            out[prefix + "embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("norm."):
            out[prefix + "layernorm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("head."):
            out["classifier." + k.rsplit(".", 1)[1]] = v
        else:
            _, i, rest = k.split(".", 2)
            p = f"{prefix}encoder.layer.{i}."
            kind = rest.rsplit(".", 1)[1]
            if rest.startswith("attn.qkv."):
                q, kk, vv = np.split(v, 3, axis=0)
                out[p + f"attention.attention.query.{kind}"] = q
                out[p + f"attention.attention.key.{kind}"] = kk
                out[p + f"attention.attention.value.{kind}"] = vv
            else:
                name = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense",
                        "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
                        "mlp.fc2": "output.dense"}[rest.rsplit(".", 1)[0]]
                out[p + f"{name}.{kind}"] = v
    return out


def _shuffled(d, seed=0):
    keys = list(d)
    np.random.default_rng(seed).shuffle(keys)
    return {k: d[k] for k in keys}


@pytest.mark.parametrize("legacy_mlp", [False, True])
def test_from_torchvision_round_trip(legacy_mlp):
    sd = random_params(gelu_config())
    tv = timm_to_torchvision(sd, legacy_mlp=legacy_mlp)
    assert pio.detect_format(tv) == "torchvision"
    back = pio.from_torchvision(_shuffled(tv))
    assert set(back) == set(sd)
    assert_params_equal(sd, back)


@pytest.mark.parametrize("prefix", ["vit.", ""])
def test_from_hf_round_trip(prefix):
    sd = random_params(gelu_config(depth=3))
    hf = timm_to_hf(sd, prefix=prefix)
    hf[prefix + "embeddings.mask_token"] = np.zeros((1, 1, 16), np.float32)  # inert, dropped
    assert pio.detect_format(hf) == "hf"
    back = pio.from_hf(_shuffled(hf))
    assert_params_equal(sd, back)


def test_hf_qkv_order_is_q_k_v():
    C = 4
    hf = {f"vit.encoder.layer.0.attention.attention.{p}.weight": np.full((C, C), i, np.float32)
          for i, p in enumerate(["query", "key", "value"])}
    w = pio.from_hf(hf)["blocks.0.attn.qkv.weight"]
    assert w.shape == (3 * C, C)
    assert w[:C].max() == 0 and w[C:2 * C].min() == 1 and w[2 * C:].min() == 2


def test_from_hf_refuses_pooler_and_incomplete_attention():
    sd = timm_to_hf(random_params(gelu_config()))
    with pytest.raises(ValueError, match="pooler"):
        pio.from_hf({**sd, "vit.pooler.dense.weight": np.zeros((16, 16)),
                     "vit.pooler.dense.bias": np.zeros(16)})
    del sd["vit.encoder.layer.1.attention.attention.key.bias"]
    with pytest.raises(ValueError, match="block 1 bias lacks key"):
        pio.from_hf(sd)


def test_from_torchvision_refuses_what_it_cannot_express():
    sd = timm_to_torchvision(random_params(gelu_config()))
    with pytest.raises(ValueError) as e:
        pio.from_torchvision({**sd, "heads.pre_logits.weight": np.zeros((16, 16)),
                              "heads.pre_logits.bias": np.zeros(16),
                              "encoder.layers.encoder_layer_0.frobnicator": np.zeros(1)})
    msg = str(e.value)
    assert "heads.pre_logits.weight" in msg and "pre-logits" in msg
    assert "encoder.layers.encoder_layer_0.frobnicator" in msg


def test_torchvision_and_hf_always_have_the_final_norm(standin):
    sd = random_params(gelu_config())
    tv = {k: v for k, v in timm_to_torchvision(sd).items() if not k.startswith("encoder.ln.")}
    with pytest.raises(ValueError, match="final_norm: given True"):
        pio.from_state_dict(tv, num_heads=2)
    hf = {k: v for k, v in timm_to_hf(sd).items() if not k.startswith("vit.layernorm.")}
    with pytest.raises(ValueError, match="final_norm: given True"):
        pio.from_state_dict(hf, num_heads=2)
    tv = {k: v for k, v in timm_to_torchvision(sd).items() if not k.endswith("in_proj_bias")}
    with pytest.raises(ValueError, match="qkv_bias: given True"):
        pio.from_state_dict(tv, num_heads=2)


def test_from_torchvision_refuses_clashing_names():
    sd = timm_to_torchvision(random_params(gelu_config()))
    sd["encoder.layers.encoder_layer_0.mlp.linear_1.weight"] = \
        sd["encoder.layers.encoder_layer_0.mlp.0.weight"]
    with pytest.raises(ValueError, match="both map to blocks.0.mlp.fc1.weight"):
        pio.from_torchvision(sd)


def test_from_timm_strips_prefixes_and_refuses_extras():
    sd = random_params(tiny_config())
    wrapped = {"module.model." + k: v for k, v in sd.items()}
    wrapped["module.model.mask_token"] = np.zeros((1, 1, 16), np.float32)
    out = pio.from_timm(wrapped)
    assert_params_equal(sd, out)
    assert pio.from_timm(sd) is not sd  # a new dict
    # an unknown timm name passes through (and is reported by load_state_dict)
    assert "something.else" in pio.from_timm({**sd, "something.else": np.zeros(1)})


@pytest.mark.parametrize("key,why", [
    ("norm_pre.weight", "norm_pre"), ("reg_token", "register"),
    ("blocks.0.attn.relative_position_bias_table", "relative position bias"),
    ("blocks.0.gamma_1", "layer scale"), ("blocks.0.attn.k_norm.weight", "k_norm"),
    ("patch_embed.backbone.stem.conv.weight", "CNN stem"), ("head_dist.weight", "distillation"),
    ("blocks.0.norm1.rms_norm.weight", "RMSNorm"),
    ("blocks.0.attn.q_norm.weight", "q_norm"), ("blocks.1.ls1.gamma", "layer scale"),
    ("blocks.1.ls2.gamma", "layer scale"), ("pre_logits.fc.weight", "pre-logits"),
    ("dist_token", "distillation"), ("attn_pool.latent", "attention pooling"),
])
def test_from_timm_refuses(key, why):
    sd = random_params(gelu_config())
    sd[key] = np.zeros(16, np.float32)
    with pytest.raises(ValueError) as e:
        pio.from_timm(sd)
    assert key in str(e.value) and why in str(e.value)


def test_renamers_prefix_module():
    sd = random_params(gelu_config())
    tv = {"module." + k: v for k, v in timm_to_torchvision(sd).items()}
    assert pio.detect_format(tv) == "torchvision"
    assert_params_equal(sd, pio.from_torchvision(tv))


@needs_torch
def test_torchvision_in_proj_matches_timm_qkv_order():
    """nn.MultiheadAttention's in_proj (what torchvision stores) computes the same attention as
    timm's qkv layout after from_torchvision."""
    torch.manual_seed(0)
    B, N, C, heads = 3, 7, 16, 4
    D = C // heads
    mha = torch.nn.MultiheadAttention(C, heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    sd = {f"encoder.layers.encoder_layer_0.self_attention.{k}": v
          for k, v in mha.state_dict().items()}
    r = {k: torch.from_numpy(np.asarray(v)) for k, v in pio.from_torchvision(sd).items()}
    x = torch.randn(B, N, C)
    with torch.no_grad():
        ref, _ = mha(x, x, x, need_weights=False)
        qkv = x @ r["blocks.0.attn.qkv.weight"].T + r["blocks.0.attn.qkv.bias"]
        q, k, v = qkv.reshape(B, N, 3, heads, D).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * D ** -0.5).softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)
        out = out @ r["blocks.0.attn.proj.weight"].T + r["blocks.0.attn.proj.bias"]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@needs_torch
def test_hf_style_attention_matches_timm_qkv():
    """Separate q/k/v Linears (HF) give the same attention as the concatenated qkv."""
    torch.manual_seed(1)
    B, N, C, heads = 2, 5, 12, 3
    D = C // heads
    lin = {p: torch.nn.Linear(C, C) for p in ("query", "key", "value")}
    hf = {f"encoder.layer.0.attention.attention.{p}.{w}": getattr(m, w).detach().numpy()
          for p, m in lin.items() for w in ("weight", "bias")}
    r = pio.from_hf(hf)
    x = torch.randn(B, N, C)
    with torch.no_grad():
        def heads_of(t):
            return t.reshape(B, N, heads, D).transpose(1, 2)
        q, k, v = (heads_of(lin[p](x)) for p in ("query", "key", "value"))
        ref = ((q @ k.transpose(-2, -1)) * D ** -0.5).softmax(-1) @ v
        qkv = x @ torch.from_numpy(r["blocks.0.attn.qkv.weight"]).T + \
            torch.from_numpy(r["blocks.0.attn.qkv.bias"])
        q2, k2, v2 = qkv.reshape(B, N, 3, heads, D).permute(2, 0, 3, 1, 4)
        out = ((q2 @ k2.transpose(-2, -1)) * D ** -0.5).softmax(-1) @ v2
    torch.testing.assert_close(out, ref)


# ----------------------------------------------------------------------------------------------
# detect_format / infer_config
# ----------------------------------------------------------------------------------------------
def test_detect_format():
    gelu = random_params(gelu_config())
    poly = random_params(tiny_config())
    assert pio.detect_format(gelu) == "timm"
    assert pio.detect_format({"module." + k: v for k, v in gelu.items()}) == "timm"
    assert pio.detect_format(poly) == "polyvit"
    assert pio.detect_format(timm_to_torchvision(gelu)) == "torchvision"
    assert pio.detect_format(timm_to_hf(gelu)) == "hf"
    assert pio.detect_format(timm_to_hf(gelu, prefix="")) == "hf"
    with pytest.raises(ValueError, match="empty"):
        pio.detect_format({})
    with pytest.raises(ValueError, match="Cannot tell"):
        pio.detect_format({"features.0.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="several layouts"):
        pio.detect_format({**gelu, **timm_to_torchvision(gelu)})


@pytest.mark.parametrize("cfg", [tiny_config(), gelu_config(), gelu_config(mlp_ratio=3.0),
                                 tiny_config(in_chans=1, img_size=12, patch_size=3,
                                             num_classes=2, act=["poly", "gelu", "poly"],
                                             poly_per_channel=[True, False, False])])
def test_infer_config_matches(cfg):
    sd = random_params(cfg)
    got = pio.infer_config(sd, num_heads=cfg.num_heads, ln_eps=cfg.ln_eps)
    assert got == cfg


def test_infer_config_odd_mlp_widths():
    for C in (16, 24, 40, 96, 384, 100):
        base = {n: np.zeros(s, np.float32) for n, s, _ in
                gelu_config(embed_dim=C, num_heads=1).param_specs()}
        for H in range(1, 5 * C, 7):
            sd = dict(base)
            for i in range(2):
                sd[f"blocks.{i}.mlp.fc1.weight"] = np.zeros((H, C), np.float32)
            cfg = pio.infer_config(sd, num_heads=1)
            assert cfg.mlp_hidden == H, (C, H)
            assert ViTConfig.from_json(cfg.to_json()).mlp_hidden == H
            # a plain ratio when it reproduces the width, else an explicit mlp_dim
            if H / C == round(H / C, 6) and int(C * (H / C)) == H:
                assert cfg.mlp_dim is None and cfg.mlp_ratio == H / C, (C, H)
            else:
                assert cfg.mlp_dim == H, (C, H)


def test_infer_config_guesses_heads():
    for C, heads in [(192, 3), (384, 6), (768, 12), (128, 4), (1280, 16)]:
        shapes = {"cls_token": (1, 1, C), "pos_embed": (1, 5, C),
                  "patch_embed.proj.weight": (C, 3, 4, 4), "patch_embed.proj.bias": (C,),
                  "blocks.0.mlp.fc1.weight": (4 * C, C), "blocks.0.mlp.fc1.bias": (4 * C,),
                  "head.weight": (10, C), "head.bias": (10,)}
        sd = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
        cfg = pio.infer_config(sd)
        assert (cfg.embed_dim, cfg.num_heads, cfg.img_size, cfg.depth) == (C, heads, 8, 1)
    sd = random_params(gelu_config(embed_dim=64 * 5, num_heads=5))
    with pytest.warns(UserWarning, match="guessing 5 heads"):
        assert pio.infer_config(sd).num_heads == 5


def test_infer_config_errors():
    sd = random_params(gelu_config())  # embed_dim 16: no guess possible
    with pytest.raises(ValueError, match="num_heads"):
        pio.infer_config(sd)
    with pytest.raises(ValueError, match="not divisible"):
        pio.infer_config(sd, num_heads=7)
    bad = dict(sd, pos_embed=np.zeros((1, 6, 16), np.float32))
    with pytest.raises(ValueError, match="square"):
        pio.infer_config(bad, num_heads=2)
    bad = dict(sd, pos_embed=np.zeros((1, 4, 16), np.float32))  # 2x2 grid, no class slot
    with pytest.raises(ValueError, match="no_embed_class"):
        pio.infer_config(bad, num_heads=2)
    bad = {k: v for k, v in sd.items() if k != "head.weight"}
    with pytest.raises(ValueError, match="head.weight"):
        pio.infer_config(bad, num_heads=2)
    bad = dict(sd, cls_token=np.zeros((1, 2, 16), np.float32))
    with pytest.raises(ValueError, match="cls_token"):
        pio.infer_config(bad, num_heads=2)
    bad = dict(sd, **{"patch_embed.proj.weight": np.zeros((16, 3, 4, 2), np.float32)})
    with pytest.raises(ValueError, match="square"):
        pio.infer_config(bad, num_heads=2)
    bad = {k.replace("blocks.1.", "blocks.2."): v for k, v in sd.items()}
    with pytest.raises(ValueError, match="numbered"):
        pio.infer_config(bad, num_heads=2)


# ----------------------------------------------------------------------------------------------
# from_state_dict / read_state_dict / import_weights
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["timm", "torchvision", "hf"])
def test_from_state_dict_each_layout(backend, fmt):
    cfg = gelu_config()
    sd = random_params(cfg, seed=4)
    given = {"timm": lambda d: d, "torchvision": timm_to_torchvision, "hf": timm_to_hf}[fmt](sd)
    model = pio.from_state_dict(given, num_heads=2, max_batch=3)
    assert model.config == cfg.replace(ln_eps=pio.DEFAULT_LN_EPS[fmt])
    assert_params_equal(sd, snapshot(model))
    model = pio.from_state_dict(given, format=fmt, num_heads=2, ln_eps=1e-3)
    assert model.config.ln_eps == 1e-3
    model = pio.from_state_dict(given, config=cfg)
    assert model.config == cfg


def test_from_state_dict_poly(backend):
    cfg = tiny_config()
    sd = random_params(cfg)
    model = pio.from_state_dict(sd, num_heads=2, ln_eps=1e-5)
    assert model.config == cfg
    assert_params_equal(sd, snapshot(model))


def test_from_state_dict_errors(standin):
    cfg = gelu_config()
    sd = random_params(cfg)
    with pytest.raises(ValueError, match="Unknown format"):
        pio.from_state_dict(sd, format="keras", num_heads=2)
    with pytest.raises(ValueError, match="wrong shape"):  # config disagrees with the tensors
        pio.from_state_dict(sd, config=cfg.replace(mlp_ratio=4.0))
    with pytest.raises(TypeError):
        pio.from_state_dict([("a", 1)])


def test_read_state_dict_safetensors(standin, tmp_path):
    model = fill(standin(tiny_config()))
    path = tmp_path / "m.safetensors"
    pio.save(model, path, metadata={"k": "v"})
    sd, meta = pio.read_state_dict(path)
    assert_params_equal(snapshot(model), sd)
    assert meta["k"] == "v" and meta["format"] == "polyvit"


def test_read_state_dict_unknown_extension(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="weights.h5"):
        pio.read_state_dict(path)


def test_read_state_dict_without_torch(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ImportError, match="needs PyTorch"):
        pio.read_state_dict(path)


def test_read_state_dict_missing_pth(tmp_path):
    with pytest.raises(FileNotFoundError):
        pio.read_state_dict(tmp_path / "absent.pth")


@needs_torch
@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
@pytest.mark.parametrize("ext", [".pth", ".pt", ".bin"])
def test_pth_round_trip(standin, tmp_path, wrap, ext):
    cfg = gelu_config()
    sd = random_params(cfg)
    tv = {k: torch.from_numpy(v) for k, v in timm_to_torchvision(sd).items()}
    obj = tv if wrap is None else {wrap: tv, "epoch": 3}
    path = tmp_path / f"vit{ext}"
    torch.save(obj, path)
    got, meta = pio.read_state_dict(path)
    assert meta == {}
    assert set(got) == set(tv) and all(isinstance(v, np.ndarray) for v in got.values())
    model = pio.import_weights(path, num_heads=2)
    assert model.config == cfg
    assert_params_equal(sd, snapshot(model))


@needs_torch
def test_pth_bf16_and_half_become_float32(tmp_path):
    t = {"a": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
         "b": torch.tensor([0.25], dtype=torch.float16), "c": torch.arange(3)}
    torch.save(t, tmp_path / "w.pth")
    got, _ = pio.read_state_dict(tmp_path / "w.pth")
    assert got["a"].dtype == np.float32 and got["a"].tolist() == [1.5, -2.0]
    assert got["b"].dtype == np.float32 and got["c"].dtype == np.int64


class Opaque:
    """Something torch.load(weights_only=True) refuses to unpickle."""


@needs_torch
def test_pth_errors(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(OSError, match="bad.pth"):
        pio.read_state_dict(path)

    torch.save({"w": torch.zeros(1), "obj": Opaque()}, tmp_path / "pickled.pth")
    with pytest.raises(OSError, match="weights_only"):
        pio.read_state_dict(tmp_path / "pickled.pth")

    torch.save({"w": torch.zeros(1), "step": 3}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="step"):
        pio.read_state_dict(tmp_path / "mixed.pth")


def test_import_weights_uses_stored_config(standin, tmp_path):
    cfg = tiny_config()  # embed_dim 16, 2 heads: not guessable from shapes
    model = fill(standin(cfg))
    path = tmp_path / "m.safetensors"
    pio.save(model, path)
    got = pio.import_weights(path)
    assert got.config == cfg
    assert_params_equal(snapshot(model), snapshot(got))


def test_import_weights_hf_safetensors(standin, tmp_path):
    import safetensors.numpy as stnp

    cfg = gelu_config()
    sd = random_params(cfg)
    path = tmp_path / "model.safetensors"
    stnp.save_file(timm_to_hf(sd), str(path), metadata={"format": "pt"})
    model = pio.import_weights(path, num_heads=2)
    assert model.config == cfg.replace(ln_eps=1e-12)
    assert_params_equal(sd, snapshot(model))
    with pytest.raises(ValueError, match="Could not import .*model.safetensors"):
        pio.import_weights(path)  # heads cannot be guessed for width 16


def test_no_torch_import_at_module_import():
    import subprocess
    code = ("import sys; import polyvit.io; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1])] + sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@needs_torch
def test_torchvision_style_torch_model_matches_engine():
    """A torch ViT built like torchvision's (names, nn.MultiheadAttention, exact GELU), imported
    with from_state_dict, gives the same logits in the polyvit engine."""
    ViT = _real_vit_class()
    from collections import OrderedDict
    nn = torch.nn
    C, heads, H, depth, p, img, K, eps = 16, 2, 40, 2, 4, 12, 5, 1e-6
    T = (img // p) ** 2 + 1

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C, eps=eps)
            self.self_attention = nn.MultiheadAttention(C, heads, batch_first=True)
            self.ln_2 = nn.LayerNorm(C, eps=eps)
            self.mlp = nn.Sequential(nn.Linear(C, H), nn.GELU(), nn.Dropout(0.0), nn.Linear(H, C),
                                     nn.Dropout(0.0))

        def forward(self, x):
            y = self.ln_1(x)
            y, _ = self.self_attention(y, y, y, need_weights=False)
            x = x + y
            return x + self.mlp(self.ln_2(x))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embedding = nn.Parameter(torch.zeros(1, T, C))
            self.layers = nn.Sequential(OrderedDict(
                (f"encoder_layer_{i}", Block()) for i in range(depth)))
            self.ln = nn.LayerNorm(C, eps=eps)

        def forward(self, x):
            return self.ln(self.layers(x + self.pos_embedding))

    class TorchvisionLikeViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_proj = nn.Conv2d(3, C, kernel_size=p, stride=p)
            self.class_token = nn.Parameter(torch.zeros(1, 1, C))
            self.encoder = Encoder()
            self.heads = nn.Sequential(OrderedDict(head=nn.Linear(C, K)))

        def forward(self, x):
            x = self.conv_proj(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            return self.heads(self.encoder(x)[:, 0])

    torch.manual_seed(0)
    ref_model = TorchvisionLikeViT().eval()
    with torch.no_grad():
        for name, prm in ref_model.named_parameters():
            prm.normal_(0.0, 0.3 if prm.ndim > 1 else 0.5)
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or \
                    name.endswith("ln.weight"):
                prm.add_(1.0)
    x = torch.randn(3, 3, img, img)
    with torch.no_grad():
        ref = ref_model(x).numpy()

    sd = ref_model.state_dict()
    assert pio.detect_format(sd) == "torchvision"
    try:
        model = pio.from_state_dict(sd, num_heads=heads, max_batch=4)
    except (ImportError, OSError) as e:
        pytest.skip(f"polyvit engine not built ({e})")
    assert isinstance(model, ViT)
    assert model.config.mlp_hidden == H and model.config.ln_eps == 1e-6
    out = model.forward(x.numpy())
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
