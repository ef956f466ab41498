"""Bring your own ViT: checkpoints in other people's layouts, converted and checked.

Each source layout is written here independently of polyvit.io: small PyTorch modules with
their own forward (nn.MultiheadAttention + nn.Sequential MLP; a vit-pytorch-style model with a
Linear patch embedding, read through a user's JSON rename map; a Hugging Face-named ViT with a
config.json), whose float64 logits are the reference for polyvit's float32 engine after
conversion. Then every architecture polyvit cannot express is refused, file-metadata configs
are translated (and the real third-party checkpoint in ../shared/data imported), and the
``python -m polyvit convert`` command is exercised.
"""
from __future__ import annotations

import io as _io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import polyvit
import polyvit.io as pio
from polyvit.__main__ import main as cli_main
from polyvit.config import ViTConfig

from helpers import rel_err

try:
    import torch
    import torch.nn as nn
except ImportError:  # torch is only the oracle
    torch = None
    nn = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch (the test oracle) is not installed")

REPO = Path(__file__).resolve().parents[1]


def _data_dir():
    for d in (os.environ.get("POLYVIT_DATA"), REPO.parent / "shared" / "data"):
        if d and (Path(d) / "volterra-vit128.safetensors").is_file():
            return Path(d)
    return None


DATA = _data_dir()
needs_data = pytest.mark.skipif(
    DATA is None, reason="../shared/data (or $POLYVIT_DATA) with volterra-vit128.safetensors is "
                         "absent")

# float32 engine against a float64 reference of a tiny model: measured errors are ~1e-7..1e-6
LOGIT_TOL = 1e-5


def _round32(module):
    """Make every parameter exactly representable in float32 (the engine's precision)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.float().double())
    return module


def _randomise(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = int(np.prod(p.shape[1:])) if p.ndim > 1 else 1
            std = 1.0 / np.sqrt(fan_in) if p.ndim > 1 else 0.3
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)
            if p.ndim == 1 and name.endswith("weight"):  # norms: around 1
                p.add_(1.0)
    return _round32(module)


def _sd32(module):
    return {k: v.detach().float().numpy().copy() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# 1. plain PyTorch: nn.MultiheadAttention + nn.Sequential MLP, through the built-in map
# ----------------------------------------------------------------------------------------------
def _plain_vit(C=24, heads=3, H=40, depth=2, p=4, img=12, K=5, chans=3, eps=1e-5,
               mlp_style="0-3", head_style="linear", cls_shape="111", pos_shape="1TC",
               names=None):
    """A from-scratch CIFAR-style ViT as people write it, with its own forward."""
    names = names or {}
    T = (img // p) ** 2 + 1
    n1, n2 = names.get("norm1", "ln1"), names.get("norm2", "ln2")
    blocks_name = names.get("blocks", "blocks")

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            setattr(self, n1, nn.LayerNorm(C, eps=eps))
            self.attn = nn.MultiheadAttention(C, heads, batch_first=True)
            setattr(self, n2, nn.LayerNorm(C, eps=eps))
            if mlp_style == "0-3":
                self.mlp = nn.Sequential(nn.Linear(C, H), nn.GELU(), nn.Dropout(0.0),
                                         nn.Linear(H, C), nn.Dropout(0.0))
            else:  # "0-2"
                self.mlp = nn.Sequential(nn.Linear(C, H), nn.GELU(), nn.Linear(H, C))

        def forward(self, x):
            y = getattr(self, n1)(x)
            x = x + self.attn(y, y, y, need_weights=False)[0]
            return x + self.mlp(getattr(self, n2)(x))

    class PlainViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Conv2d(chans, C, kernel_size=p, stride=p)
            shape = {"111": (1, 1, C), "1C": (1, C), "C": (C,)}[cls_shape]
            self.cls_token = nn.Parameter(torch.zeros(shape))
            self.pos_embedding = nn.Parameter(torch.zeros((1, T, C) if pos_shape == "1TC"
                                                          else (T, C)))
            setattr(self, blocks_name, nn.ModuleList(Block() for _ in range(depth)))
            if head_style == "linear":
                self.norm = nn.LayerNorm(C, eps=eps)
                self.head = nn.Linear(C, K)
            else:  # "ln_in_mlp_head": the norm lives in the head, on the class token
                self.mlp_head = nn.Sequential(nn.LayerNorm(C, eps=eps), nn.Linear(C, K))

        def forward(self, x):
            x = self.patch_embed(x).flatten(2).transpose(1, 2)
            cls = self.cls_token.reshape(1, 1, C).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1) + self.pos_embedding.reshape(1, T, C)
            for blk in getattr(self, blocks_name):
                x = blk(x)
            if head_style == "linear":
                return self.head(self.norm(x)[:, 0])
            return self.mlp_head(x[:, 0])

    return PlainViT().double().eval()


def _logits_match(model, ref_module, img=12, chans=3, n=3, seed=0):
    x = torch.randn(n, chans, img, img, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    x = x.float().double()
    with torch.no_grad():
        ref = ref_module(x).numpy()
    out = model.forward(x.float().numpy())
    err = rel_err(out, ref)
    assert err <= LOGIT_TOL, f"relative logit error {err:.3g}"
    return err


@needs_torch
@pytest.mark.parametrize("mlp_style,cls_shape,pos_shape,names", [
    ("0-3", "111", "1TC", {}),
    ("0-2", "C", "TC", {"norm1": "norm1", "norm2": "norm2", "blocks": "layers"}),
    ("0-3", "1C", "TC", {"norm1": "ln_1", "norm2": "ln_2"}),
])
def test_plain_torch_mha_matches(mlp_style, cls_shape, pos_shape, names):
    ref = _randomise(_plain_vit(mlp_style=mlp_style, cls_shape=cls_shape, pos_shape=pos_shape,
                                names=names), seed=1)
    sd = ref.state_dict()
    assert pio.detect_format(sd) == "torch_mha"
    model = pio.from_state_dict(sd, num_heads=3, max_batch=4)
    c = model.config
    assert (c.embed_dim, c.depth, c.num_heads, c.mlp_hidden, c.ln_eps, c.gelu) == \
        (24, 2, 3, 40, 1e-5, "erf")
    assert c.mlp_dim == 40  # 40 / 24 is no plain ratio
    assert c.qkv_bias and c.final_norm and c.global_pool == "token" and not c.fc_norm
    _logits_match(model, ref)


@needs_torch
def test_plain_mlp_head_layernorm_needs_the_map_to_say_what_it_is(tmp_path):
    ref = _randomise(_plain_vit(head_style="ln_in_mlp_head", H=37), seed=2)
    sd = ref.state_dict()
    with pytest.raises(ValueError) as e:
        pio.from_state_dict(sd, num_heads=3)
    assert "LayerNorm inside the head" in str(e.value) and "head_norm" in str(e.value)
    # the user's map says it: a LayerNorm on the class token = timm's final norm
    model = pio.from_state_dict(sd, num_heads=3, max_batch=4,
                                rename_map={"extends": "torch_mha", "head_norm": "final_norm"})
    assert model.config.final_norm and not model.config.fc_norm
    assert model.config.mlp_dim == 37  # 37 / 24 is no plain ratio
    _logits_match(model, ref)
    # ... or an fc_norm (a LayerNorm after pooling): the same computation
    model = pio.from_state_dict(sd, num_heads=3, max_batch=4,
                                rename_map={"extends": "torch_mha", "head_norm": "fc_norm"})
    assert model.config.fc_norm and not model.config.final_norm
    _logits_match(model, ref)
    # final_norm with average pooling would compute something else
    with pytest.raises(ValueError, match="global_pool='token'"):
        pio.from_state_dict(sd, num_heads=3, global_pool="avg",
                            rename_map={"extends": "torch_mha", "head_norm": "final_norm"})


# ----------------------------------------------------------------------------------------------
# 2. a vit-pytorch-style model through a user's JSON rename map, via the CLI
# ----------------------------------------------------------------------------------------------
def _lucid_vit(C=16, heads=2, H=24, depth=2, p=4, img=8, K=4, chans=3, eps=1e-5, style="new"):
    """lucidrains' vit-pytorch layout: Linear patch embedding over (p1 p2 c), a bias-free
    to_qkv. style "new": attention with its own norm, FeedForward = Sequential(LN, Linear,
    GELU, Dropout, Linear, Dropout), a final transformer.norm and a Linear mlp_head; style
    "old": PreNorm wrappers (norm + fn), no transformer.norm, mlp_head = (LayerNorm, Linear)."""
    T = (img // p) ** 2 + 1
    D = C // heads
    new = style == "new"

    class PreNorm(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.norm = nn.LayerNorm(C, eps=eps)
            self.fn = fn

        def forward(self, x):
            return self.fn(self.norm(x))

    class Rearrange(nn.Module):  # b c (h p1) (w p2) -> b (h w) (p1 p2 c)
        def forward(self, x):
            B, c, Hh, W = x.shape
            x = x.reshape(B, c, Hh // p, p, W // p, p)
            return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (Hh // p) * (W // p), p * p * c)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(C, eps=eps) if new else nn.Identity()
            self.to_qkv = nn.Linear(C, 3 * C, bias=False)
            self.to_out = nn.Sequential(nn.Linear(C, C), nn.Dropout(0.0))

        def forward(self, x):
            B, N, _ = x.shape
            q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
            q, k, v = (t.reshape(B, N, heads, D).transpose(1, 2) for t in (q, k, v))
            a = torch.softmax(q @ k.transpose(-1, -2) * D ** -0.5, dim=-1)
            return self.to_out((a @ v).transpose(1, 2).reshape(B, N, C))

    class FeedForward(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [nn.Linear(C, H), nn.GELU(), nn.Dropout(0.0), nn.Linear(H, C),
                      nn.Dropout(0.0)]
            self.net = nn.Sequential(*([nn.LayerNorm(C, eps=eps)] if new else []), *layers)

        def forward(self, x):
            return self.net(x)

    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(
                nn.ModuleList([Attention(), FeedForward()] if new else
                              [PreNorm(Attention()), PreNorm(FeedForward())])
                for _ in range(depth))
            self.norm = nn.LayerNorm(C, eps=eps) if new else nn.Identity()

        def forward(self, x):
            for attn, ff in self.layers:
                x = attn(x) + x
                x = ff(x) + x
            return self.norm(x)

    class LucidViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.to_patch_embedding = nn.Sequential(Rearrange(), nn.Linear(p * p * chans, C))
            self.pos_embedding = nn.Parameter(torch.zeros(1, T, C))
            self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
            self.transformer = Transformer()
            self.mlp_head = nn.Linear(C, K) if new else \
                nn.Sequential(nn.LayerNorm(C, eps=eps), nn.Linear(C, K))

        def forward(self, img_):
            x = self.to_patch_embedding(img_)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = self.transformer(x + self.pos_embedding)
            return self.mlp_head(x[:, 0])

    return LucidViT().double().eval()


LUCID_MAP = {
    "description": "lucidrains vit-pytorch (pool='cls', Linear patch embedding)",
    "rules": [
        [r"^to_patch_embedding\.1\.", "patch_embed.proj."],
        [r"^pos_embedding$", "pos_embed"],
        [r"^transformer\.layers\.(\d+)\.0\.norm\.", r"blocks.\1.norm1."],
        [r"^transformer\.layers\.(\d+)\.0\.to_qkv\.", r"blocks.\1.attn.in_proj_"],
        [r"^transformer\.layers\.(\d+)\.0\.to_out\.0\.", r"blocks.\1.attn.proj."],
        [r"^transformer\.layers\.(\d+)\.1\.net\.0\.", r"blocks.\1.norm2."],
        [r"^transformer\.layers\.(\d+)\.1\.net\.(\d+)\.", r"blocks.\1.mlp.\2."],
        [r"^transformer\.norm\.", "norm."],
        [r"^mlp_head\.", "head."],
    ],
    "patch_linear": "(p1 p2 c)",
    "config": {"patch_size": 4, "num_heads": 2, "layer_norm_eps": 1e-5, "pre_norm": True,
               "class_token": True, "global_pool": "cls", "emb_dropout": 0.1,
               "head": "linear on the final-normed class token"},
}


@needs_torch
@pytest.mark.parametrize("ext", [".pth", ".safetensors"])
def test_user_json_map_via_cli(tmp_path, capsys, ext):
    ref = _randomise(_lucid_vit(), seed=3)
    # nn.Linear's to_qkv is stored as "...to_qkv.weight": the rule makes it in_proj_weight
    sd = ref.state_dict()
    src = tmp_path / f"lucid{ext}"
    if ext == ".pth":
        torch.save(sd, src)
    else:
        import safetensors.numpy as stnp
        stnp.save_file({k: v.float().numpy() for k, v in sd.items()}, str(src))
    map_path = tmp_path / "lucid_map.json"
    map_path.write_text(json.dumps(LUCID_MAP))
    out = tmp_path / "converted.safetensors"
    rc = cli_main(["convert", str(src), "--out", str(out), "--map", str(map_path)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "parameters:" in captured.out and "qkv_bias: false" in captured.out
    assert "emb_dropout" in captured.out  # noted as ignored
    model = polyvit.load(out, max_batch=4)
    c = model.config
    assert (c.embed_dim, c.depth, c.num_heads, c.mlp_hidden, c.ln_eps, c.patch_size) == \
        (16, 2, 2, 24, 1e-5, 4)
    assert not c.qkv_bias and c.final_norm and c.global_pool == "token"
    _logits_match(model, ref, img=8)
    # the same map from Python
    direct = pio.apply_rename_map(sd, LUCID_MAP)
    assert "blocks.1.attn.qkv.weight" in direct and "blocks.1.attn.qkv.bias" not in direct
    assert direct["patch_embed.proj.weight"].shape == (16, 3, 4, 4)


@needs_torch
@pytest.mark.parametrize("style", ["new", "old"])
def test_builtin_vit_pytorch_map(style):
    ref = _randomise(_lucid_vit(style=style, C=24, heads=3, H=48, img=12, K=6), seed=7)
    sd = ref.state_dict()
    assert pio.detect_format(sd) == "vit_pytorch"
    with pytest.raises(ValueError, match="give img_size, patch_size or in_chans"):
        pio.from_state_dict(sd, num_heads=3)
    model = pio.from_state_dict(sd, num_heads=3, img_size=12, max_batch=4)
    c = model.config
    assert (c.patch_size, c.mlp_ratio, c.mlp_dim, c.qkv_bias, c.final_norm, c.ln_eps) == \
        (4, 2.0, None, False, True, 1e-5)
    _logits_match(model, ref, img=12)
    # newer versions put LayerNorms around the patch embedding: refused
    newer = dict(sd)
    newer["to_patch_embedding.1.weight"] = torch.ones(48, dtype=torch.float64)
    newer["to_patch_embedding.1.bias"] = torch.zeros(48, dtype=torch.float64)
    newer["to_patch_embedding.2.weight"] = sd["to_patch_embedding.1.weight"]
    newer["to_patch_embedding.2.bias"] = sd["to_patch_embedding.1.bias"]
    with pytest.raises(ValueError, match="LayerNorms around the patch embedding"):
        pio.from_state_dict(newer, num_heads=3, img_size=12)


def test_rename_map_rules_are_ordered_first_match_wins():
    C = 4
    sd = {"enc.0.a.weight": np.ones(C, np.float32), "enc.0.a.bias": np.zeros(C, np.float32)}
    m = {"rules": [[r"^enc\.(\d+)\.a\.", r"blocks.\1.norm1."],
                   [r"^enc\.(\d+)\.", r"blocks.\1.norm2."]]}
    assert set(pio.apply_rename_map(sd, m)) == {"blocks.0.norm1.weight", "blocks.0.norm1.bias"}
    m["rules"].reverse()  # now the general rule comes first and makes names polyvit lacks
    with pytest.raises(ValueError, match="enc.0.a.weight -> blocks.0.norm2.a.weight"):
        pio.apply_rename_map(sd, m)


def test_rename_map_transpose_drop_and_qkv_merge():
    rng = np.random.default_rng(0)
    C = 6
    q, k, v = (rng.standard_normal((C, C)).astype(np.float32) for _ in range(3))
    sd = {"l.0.wq": q.T.copy(), "l.0.wk": k.T.copy(), "l.0.wv": v.T.copy(),
          "l.0.step": np.zeros(1, np.float32), "l.0.fc.w": rng.standard_normal((C, 2 * C))}
    m = {"rules": [[r"^l\.(\d+)\.w([qkv])$", r"blocks.\1.attn.\2.weight"],
                   [r"^l\.(\d+)\.fc\.w$", r"blocks.\1.mlp.fc1.weight"]],
         "drop": [r"\.step$"], "transpose": [r"attn\.[qkv]\.weight$", r"fc1\.weight$"]}
    out = pio.apply_rename_map(sd, m)
    assert set(out) == {"blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight"}
    np.testing.assert_array_equal(out["blocks.0.attn.qkv.weight"], np.concatenate([q, k, v]))
    assert out["blocks.0.mlp.fc1.weight"].shape == (2 * C, C)


@pytest.mark.parametrize("bad,match", [
    ({"rules": [["(unclosed", "x"]]}, "not a valid regular expression"),
    ({"rules": [["^a$"]]}, "pair"),
    ({"rules": "^a$"}, "pairs"),
    ({"renames": []}, "unknown keys"),
    ({"head_norm": "final"}, "head_norm"),
    ({"extends": "nope"}, "extends"),
    ({"patch_linear": "c h w"}, "patch_linear"),
    ({"config": [1]}, "config"),
])
def test_rename_map_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        pio.load_rename_map(bad)


def test_rename_map_reports_everything_at_once():
    sd = {"cls_token": np.zeros((1, 1, 4)), "weird.0": np.zeros(1), "weird.1": np.zeros(1),
          "layer.0.thing": np.zeros(1), "blocks.0.gamma_1": np.zeros(4)}
    m = {"rules": [[r"^layer\.(\d+)\.thing$", r"blocks.\1.attn.gizmo"]]}
    with pytest.raises(ValueError) as e:
        pio.apply_rename_map(sd, m)
    msg = str(e.value)
    for piece in ["weird.0", "weird.1", "layer.0.thing -> blocks.0.attn.gizmo", "layer scale",
                  "blocks.0.gamma_1"]:
        assert piece in msg, piece


def test_rename_map_files_and_names(tmp_path):
    assert pio.load_rename_map("torch_mha")["config"]["ln_eps"] == 1e-5
    with pytest.raises(ValueError, match="Unknown rename map"):
        pio.load_rename_map("not_a_map")
    with pytest.raises(FileNotFoundError):
        pio.load_rename_map(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        pio.load_rename_map(bad)
    ext = pio.load_rename_map({"extends": "torch_mha", "rules": [["^x$", "cls_token"]],
                               "config": {"ln_eps": 1e-6}})
    assert ext["rules"][0] == ["^x$", "cls_token"] and len(ext["rules"]) > 1
    assert ext["config"]["ln_eps"] == 1e-6


# ----------------------------------------------------------------------------------------------
# 3. Hugging Face with config.json; timm with the new options
# ----------------------------------------------------------------------------------------------
def _timm_to_hf(sd):
    out = {}
    for k, v in sd.items():
        if k == "cls_token":
            out["vit.embeddings.cls_token"] = v
        elif k == "pos_embed":
            out["vit.embeddings.position_embeddings"] = v
        elif k.startswith("patch_embed.proj."):
            out["vit.embeddings.patch_embeddings.projection." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("norm."):
            out["vit.layernorm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("head."):
            out["classifier." + k.rsplit(".", 1)[1]] = v
        else:
            _, i, rest = k.split(".", 2)
            pre, kind = f"vit.encoder.layer.{i}.", rest.rsplit(".", 1)[1]
            if rest.startswith("attn.qkv."):
                for part, t in zip(("query", "key", "value"), np.split(v, 3, axis=0)):
                    out[pre + f"attention.attention.{part}.{kind}"] = t
            else:
                name = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense",
                        "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense",
                        "mlp.fc2": "output.dense"}[rest.rsplit(".", 1)[0]]
                out[pre + f"{name}.{kind}"] = v
    return out


def _ref_model(tref, cfg, seed):
    ref = tref.RefViT(cfg, dtype=torch.float64, init=False)
    return _randomise(ref, seed)


HF_CONFIG = {"_name_or_path": "me/tiny-vit", "architectures": ["ViTForImageClassification"],
             "model_type": "vit", "hidden_size": 24, "num_hidden_layers": 2,
             "num_attention_heads": 3, "intermediate_size": 40, "hidden_act": "gelu_pytorch_tanh",
             "layer_norm_eps": 1e-6, "image_size": 12, "patch_size": 4, "num_channels": 3,
             "qkv_bias": False, "hidden_dropout_prob": 0.0, "encoder_stride": 4,
             "id2label": {str(i): f"c{i}" for i in range(5)}, "transformers_version": "4.46.0"}


def _hf_cfg():
    return ViTConfig(img_size=12, patch_size=4, embed_dim=24, depth=2, num_heads=3,
                     mlp_dim=40, num_classes=5, ln_eps=1e-6, gelu="tanh", qkv_bias=False)


@needs_torch
def test_hf_with_config_json_matches(tref, tmp_path):
    cfg = _hf_cfg()
    ref = _ref_model(tref, cfg, seed=4)
    hf = _timm_to_hf(_sd32(ref))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(HF_CONFIG))
    for given in (HF_CONFIG, path, str(path)):
        model = pio.from_state_dict(hf, hf_config=given, max_batch=4)
        assert model.config == cfg, model.config  # 40 / 24 is no plain ratio: mlp_dim
    _logits_match(model, ref)
    # the same through the command line
    src, out = tmp_path / "model.safetensors", tmp_path / "out.safetensors"
    _write(src, hf, {"format": "pt"})
    assert cli_main(["convert", str(src), "--out", str(out), "--hf-config", str(path)]) == 0
    assert polyvit.load(out).config == cfg
    # without the config.json: the defaults of HF's ViTConfig (exact GELU, eps 1e-12)
    plain = pio.from_state_dict(hf, num_heads=3)
    assert plain.config.gelu == "erf" and plain.config.ln_eps == 1e-12


def _hf_sd():
    cfg = _hf_cfg()
    rng = np.random.default_rng(0)
    return _timm_to_hf({n: rng.standard_normal(s).astype(np.float32)
                        for n, s, _ in cfg.param_specs()})


@pytest.mark.parametrize("change,match", [
    ({"hidden_act": "relu"}, "activation polyvit does not have"),
    ({"hidden_act": "quick_gelu"}, "activation polyvit does not have"),
    ({"model_type": "deit"}, "model_type 'deit'"),
    ({"architectures": ["ViTModel"]}, "ViTModel has no classifier"),
    ({"image_size": 16}, "img_size: given 16"),
    ({"qkv_bias": True}, "qkv_bias: given True"),
    ({"intermediate_size": 48}, "mlp_dim: given 48"),
    ({"num_attention_heads": 5}, "not divisible"),
])
def test_hf_config_refusals(change, match):
    with pytest.raises(ValueError, match=match):
        pio.from_state_dict(_hf_sd(), hf_config={**HF_CONFIG, **change})


def test_hf_model_without_classifier_and_pooler_refused():
    sd = _hf_sd()
    backbone = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    with pytest.raises(ValueError, match="ViTModel without a classification head"):
        pio.from_state_dict(backbone, num_heads=3)
    with pytest.raises(ValueError, match="pooler"):
        pio.from_state_dict({**sd, "vit.pooler.dense.weight": np.zeros((24, 24), np.float32),
                             "vit.pooler.dense.bias": np.zeros(24, np.float32)}, num_heads=3)
    with pytest.raises(ValueError, match="hf_config= is for Hugging Face"):
        pio.from_state_dict({n: v for n, v in pio.from_hf(sd).items()}, hf_config=HF_CONFIG)


@needs_torch
def test_timm_avg_pool_fc_norm_needs_global_pool(tref, tmp_path):
    cfg = ViTConfig(img_size=12, patch_size=4, embed_dim=24, depth=2, num_heads=3, mlp_dim=29,
                    num_classes=5, global_pool="avg", final_norm=False, fc_norm=True,
                    qkv_bias=False, ln_eps=1e-6)
    ref = _ref_model(tref, cfg, seed=5)
    sd = _sd32(ref)
    with pytest.raises(ValueError) as e:
        pio.from_state_dict(sd, num_heads=3)
    assert "global_pool='avg'" in str(e.value) and "global_pool='token'" in str(e.value)
    model = pio.from_state_dict(sd, num_heads=3, global_pool="avg", max_batch=4)
    assert model.config == cfg
    _logits_match(model, ref)
    # the same through the command line
    src, out = tmp_path / "timm.safetensors", tmp_path / "out.safetensors"
    _write(src, sd, {})
    assert cli_main(["convert", str(src), "--out", str(out), "--num-heads", "3",
                     "--global-pool", "avg"]) == 0
    assert polyvit.load(out).config == cfg


# ----------------------------------------------------------------------------------------------
# 4. refusals: what polyvit cannot express exactly is never imported
# ----------------------------------------------------------------------------------------------
def _timm_sd(**kw):
    cfg = ViTConfig(**{**dict(img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                                mlp_ratio=2.0, num_classes=5), **kw})
    rng = np.random.default_rng(1)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s, _ in cfg.param_specs()}


_PLAIN = {"cls_token": "cls_token", "pos_embed": "pos_embedding",
          "patch_embed.proj.weight": "patch_embed.weight", "patch_embed.proj.bias": "patch_embed.bias",
          "norm.weight": "norm.weight", "norm.bias": "norm.bias",
          "head.weight": "head.weight", "head.bias": "head.bias"}
_PLAIN_BLOCK = {"norm1": "ln1", "norm2": "ln2", "attn.qkv": "attn.in_proj_",
                "attn.proj": "attn.out_proj", "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.3"}


def _plain_sd():
    """The timm-named tensors in the torch_mha layout (written here, not by polyvit)."""
    out = {}
    for k, v in _timm_sd().items():
        if k in _PLAIN:
            out[_PLAIN[k]] = v
            continue
        _, i, rest = k.split(".", 2)
        mod, kind = rest.rsplit(".", 1)
        new = _PLAIN_BLOCK[mod]
        out[f"blocks.{i}.{new}{kind}" if new.endswith("_") else f"blocks.{i}.{new}.{kind}"] = v
    return out


def _z(*shape):
    return np.zeros(shape, np.float32)


TIMM_REFUSALS = {
    "no_class_token": (lambda sd: {k: (v[:, 1:] if k == "pos_embed" else v)
                                   for k, v in sd.items() if k != "cls_token"},
                       "no class token"),
    "layer_scale": (lambda sd: {**sd, "blocks.0.ls1.gamma": _z(16), "blocks.0.ls2.gamma": _z(16)},
                    "layer scale"),
    "beit_layer_scale": (lambda sd: {**sd, "blocks.1.gamma_1": _z(16)}, "layer scale"),
    "qk_norm": (lambda sd: {**sd, "blocks.0.attn.q_norm.weight": _z(8),
                            "blocks.0.attn.k_norm.weight": _z(8)}, "q_norm/k_norm"),
    "register_tokens": (lambda sd: {**sd, "reg_token": _z(1, 4, 16)}, "register tokens"),
    "relative_position_bias": (lambda sd: {**sd, "blocks.0.attn.relative_position_bias_table":
                                           _z(9, 2)}, "relative position bias"),
    "distillation_token": (lambda sd: {**sd, "dist_token": _z(1, 1, 16),
                                       "head_dist.weight": _z(5, 16)}, "distillation"),
    "conv_stem": (lambda sd: {**sd, "patch_embed.backbone.stem.conv.weight": _z(8, 3, 3, 3)},
                  "CNN stem"),
    "head_hidden_layer": (lambda sd: {**sd, "head.fc.weight": _z(16, 16)}, "hidden layer"),
    "bias_free_layernorm": (lambda sd: {k: v for k, v in sd.items()
                                        if k != "blocks.1.norm2.bias"},
                            "bias-free LayerNorm, or an RMSNorm"),
    "rmsnorm_by_name": (lambda sd: {**sd, "blocks.0.rms_norm.weight": _z(16)}, "RMSNorm"),
    "bias_free_linear": (lambda sd: {k: v for k, v in sd.items() if k != "blocks.0.attn.proj.bias"},
                         "layers without a bias"),
    "qkv_bias_in_some_blocks": (lambda sd: {k: v for k, v in sd.items()
                                            if k != "blocks.1.attn.qkv.bias"}, "qkv bias in blocks"),
    "norm_pre": (lambda sd: {**sd, "norm_pre.weight": _z(16), "norm_pre.bias": _z(16)},
                 "norm_pre"),
    "batchnorm": (lambda sd: {**sd, "blocks.0.bn.running_mean": _z(16)}, "BatchNorm"),
}


@pytest.mark.parametrize("case", list(TIMM_REFUSALS))
def test_timm_refusals(case):
    edit, why = TIMM_REFUSALS[case]
    with pytest.raises(ValueError) as e:
        pio.from_state_dict(edit(_timm_sd()), num_heads=2)
    assert why in str(e.value), str(e.value)


PLAIN_REFUSALS = {
    "conv_stem": (lambda sd: {**{k: v for k, v in sd.items() if not k.startswith("patch_embed")},
                              "patch_embed.0.weight": _z(8, 3, 2, 2), "patch_embed.0.bias": _z(8),
                              "patch_embed.2.weight": _z(16, 8, 2, 2),
                              "patch_embed.2.bias": _z(16)},
                  "more than one layer"),
    "head_with_hidden_layers": (lambda sd: {**{k: v for k, v in sd.items()
                                               if not k.startswith("head")},
                                            "mlp_head.0.weight": _z(16, 16),
                                            "mlp_head.0.bias": _z(16),
                                            "mlp_head.2.weight": _z(5, 16),
                                            "mlp_head.2.bias": _z(5)}, "hidden layers"),
    "mlp_with_three_linears": (lambda sd: {**sd, "blocks.0.mlp.5.weight": _z(16, 16),
                                           "blocks.0.mlp.5.bias": _z(16)}, "3 Linear layers"),
    "norm_inside_mlp": (lambda sd: {**sd, "blocks.1.mlp.2.weight": _z(32),
                                    "blocks.1.mlp.2.bias": _z(32)}, "inside the MLP"),
    "transformer_encoder_layer": (lambda sd: {**sd, "blocks.0.linear1.weight": _z(32, 16)},
                                  "norm_first=True"),
    "add_bias_kv": (lambda sd: {**sd, "blocks.0.attn.bias_k": _z(1, 1, 16)}, "add_bias_kv"),
    "layer_scale": (lambda sd: {**sd, "blocks.0.layer_scale_1": _z(16)}, "layer scale"),
    "unknown_names": (lambda sd: {**sd, "blocks.0.adapter.weight": _z(4, 16)},
                      "blocks.0.adapter.weight"),
}


@pytest.mark.parametrize("case", list(PLAIN_REFUSALS))
def test_plain_refusals(case):
    sd = _plain_sd()
    assert pio.detect_format(sd) == "torch_mha"
    pio.from_state_dict(sd, num_heads=2)  # the unedited one converts
    edit, why = PLAIN_REFUSALS[case]
    with pytest.raises(ValueError) as e:
        pio.from_state_dict(edit(sd), num_heads=2)
    assert why in str(e.value), str(e.value)


@pytest.mark.parametrize("config,match", [
    ({"pre_norm": False}, "post-norm"),
    ({"class_token": False}, "without a class token"),
    ({"global_pool": "mean"}, "ambiguous"),
    ({"global_pool": "map"}, "global_pool='map'"),
    ({"init_values": 1e-5}, "layer scale"),
    ({"reg_tokens": 4}, "register tokens"),
    ({"rope_theta": 100.0, "mlp_act": "swiglu"}, "rope_theta, mlp_act"),
    ({"hidden_act": "relu"}, "activation"),
    ({"head": "mlp with one hidden layer"}, "describes the head"),
])
def test_map_config_refusals(config, match):
    with pytest.raises(ValueError, match=match):
        pio.from_state_dict(_plain_sd(), num_heads=2,
                            rename_map={"extends": "torch_mha", "config": config})


def test_missing_unexpected_misshaped_in_one_error():
    sd = _timm_sd()
    del sd["blocks.1.mlp.fc2.bias"], sd["blocks.1.mlp.fc2.weight"]
    sd["blocks.0.attn.proj.weight"] = _z(16, 15)
    sd["blocks.0.extra.weight"] = _z(3)
    with pytest.raises(ValueError) as e:
        pio.from_state_dict(sd, num_heads=2)
    msg = str(e.value)
    for piece in ["blocks.1.mlp.fc2.weight", "blocks.1.mlp.fc2.bias", "blocks.0.extra.weight",
                  "blocks.0.attn.proj.weight: expected (16, 16), got (16, 15)"]:
        assert piece in msg, piece


def test_config_overrides_must_agree_with_the_weights():
    with pytest.raises(ValueError) as e:
        pio.from_state_dict(_timm_sd(), num_heads=2, embed_dim=32, img_size=16, qkv_bias=False,
                            mlp_ratio=4.0)
    msg = str(e.value)
    for piece in ["embed_dim: given 32", "img_size: given 16", "qkv_bias: given False",
                  "mlp_ratio: given 4.0"]:
        assert piece in msg, piece


# ----------------------------------------------------------------------------------------------
# 5. configs in file metadata
# ----------------------------------------------------------------------------------------------
def _write(path, tensors, metadata):
    import safetensors.numpy as stnp
    stnp.save_file(tensors, str(path), metadata=metadata)


def test_metadata_config_is_translated(tmp_path):
    sd = _timm_sd(qkv_bias=False)
    meta_cfg = {"image_size": 8, "patch_size": 4, "hidden_size": 16, "num_attention_heads": 2,
                "mlp_ratio": 2.0, "num_classes": 5, "layer_norm_eps": 1e-5,
                "hidden_act": "gelu_new", "qkv_bias": False, "class_token": True,
                "pre_norm": True, "global_pool": "token", "drop_path_rate": 0.1,
                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "name": "mine",
                "head": "Linear on the final-normed class token"}
    path = tmp_path / "m.safetensors"
    _write(path, sd, {"config": json.dumps(meta_cfg), "format": "pt"})
    m = pio.import_weights(path, max_batch=2)
    assert m.config == ViTConfig(img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2,
                                 mlp_ratio=2.0, num_classes=5, ln_eps=1e-5, gelu="tanh",
                                 qkv_bias=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    # the caller's arguments win over the metadata
    assert pio.import_weights(path, ln_eps=1e-6, gelu="erf").config.gelu == "erf"
    # convert() writes the same model as a polyvit file
    out = tmp_path / "converted.safetensors"
    converted = pio.convert(path, out)
    assert converted.config == m.config and pio.load(out).config == m.config
    # a polyvit_config, when present, is polyvit's own and wins
    _write(path, sd, {"config": json.dumps({"pre_norm": False}),
                      "polyvit_config": m.config.to_json()})
    assert pio.import_weights(path).config == m.config


@pytest.mark.parametrize("meta,match", [
    ({"pre_norm": False}, "post-norm"),
    ({"class_token": False}, "without a class token"),
    ({"no_embed_class": True}, "no_embed_class"),
    ({"layer_scale_init_value": 0.1}, "layer scale"),
    ({"window_size": 7}, "window_size"),
    ({"head": "linear on the mean of the patch tokens"}, "describes the head"),
    ({"embed_dim": 32}, "embed_dim: given 32"),
    ({"mlp_ratio": 4.0}, "mlp_ratio: given 4.0"),
])
def test_metadata_config_refusals(tmp_path, meta, match):
    path = tmp_path / "m.safetensors"
    _write(path, _timm_sd(), {"config": json.dumps({"num_heads": 2, **meta})})
    with pytest.raises(ValueError, match=match):
        pio.import_weights(path)


def test_metadata_config_not_json(tmp_path):
    path = tmp_path / "m.safetensors"
    _write(path, _timm_sd(), {"config": "{oops"})
    with pytest.raises(ValueError, match="not valid JSON"):
        pio.import_weights(path, num_heads=2)


VOLTERRA_CONFIG = dict(img_size=32, patch_size=4, in_chans=3, embed_dim=128, depth=4,
                       num_heads=4, mlp_ratio=2.0, num_classes=10, ln_eps=1e-5, gelu="erf",
                       final_norm=True, qkv_bias=True, global_pool="token", fc_norm=False,
                       mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.2435, 0.2616))


@needs_data
def test_volterra_metadata_config_import():
    model = polyvit.import_weights(DATA / "volterra-vit128.safetensors", max_batch=32)
    assert model.config == ViTConfig(**VOLTERRA_CONFIG)
    assert model.config.mlp_dim is None and model.config.mlp_hidden == 256

    # and it computes what the reference forward (float64, independent) computed: the first
    # 32 test images (test/airplane/0000..0031.jpg are rows 0..31 of the reference)
    from PIL import Image
    ref = np.load(DATA / "volterra-vit128.reference.npz")
    names = [str(n) for n in ref["names"][:32]]
    wanted = set(names)
    images = {}
    with tarfile.open(DATA / "cifar10-jpeg.tar.gz") as tar:
        for member in tar:
            if member.name in wanted:
                with Image.open(_io.BytesIO(tar.extractfile(member).read())) as im:
                    images[member.name] = np.asarray(im.convert("RGB"))
                if len(images) == len(wanted):
                    break
    x = np.stack([images[n] for n in names])  # uint8 NHWC: the model normalises
    logits = model.forward(x)
    # measured: 3.3e-7 with Pillow 13.0.0's decoder; another libjpeg build may differ by a
    # grey level in a few pixels (see shared/data/README.md), hence the looser bound, and the
    # predictions must agree exactly
    assert rel_err(logits, ref["logits_fp64"][:32]) < 1e-3
    np.testing.assert_array_equal(logits.argmax(1), ref["pred_reference_fp64"][:32])


@needs_data
def test_volterra_convert_cli_round_trip(tmp_path, capsys):
    out = tmp_path / "v.safetensors"
    assert cli_main(["convert", str(DATA / "volterra-vit128.safetensors"), "--out",
                     str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parameters: 546,186" in printed and "mean: [0.4914, 0.4822, 0.4465]" in printed
    model = polyvit.load(out)
    assert model.config == ViTConfig(**VOLTERRA_CONFIG)
    from safetensors import safe_open
    with safe_open(str(out), framework="np") as f:
        meta = f.metadata()
    assert meta["converted_from"] == "volterra-vit128.safetensors"
    assert meta["source_format"] == "timm"
    assert "MightyDeb" in json.loads(meta["source_metadata"])["source"]


# ----------------------------------------------------------------------------------------------
# 6. the command line
# ----------------------------------------------------------------------------------------------
@needs_torch
def test_cli_convert_pth_with_options(tmp_path, capsys):
    ref = _randomise(_plain_vit(), seed=6)
    src = tmp_path / "plain.pth"
    torch.save({"state_dict": {k: v.float() for k, v in ref.state_dict().items()}}, src)
    out = tmp_path / "out.safetensors"
    rc = cli_main(["convert", str(src), "--out", str(out), "--num-heads", "3", "--eps", "1e-5",
                   "--gelu", "erf", "--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.2", "0.2"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "torch_mha layout" in captured.out
    model = polyvit.load(out, max_batch=4)
    assert model.config.mean == (0.5, 0.4, 0.3) and model.config.num_heads == 3
    _logits_match(model, ref)


def _cli_error(args, capsys):
    rc = cli_main(args)
    captured = capsys.readouterr()
    assert rc == 2
    err = captured.err.strip()
    assert err.startswith("python -m polyvit convert: error: ")
    assert "\n" not in err and "Traceback" not in err
    return err


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    err = _cli_error(["convert", str(tmp_path / "absent.safetensors"), "--out", str(out)], capsys)
    assert "absent.safetensors" in err
    src = tmp_path / "plain.safetensors"
    _write(src, _plain_sd(), {})
    err = _cli_error(["convert", str(src), "--out", str(out)], capsys)  # heads for width 16
    assert "num_heads" in err
    err = _cli_error(["convert", str(src), "--out", str(out), "--num-heads", "2", "--mean", "0.5"],
                     capsys)
    assert "--mean and --std" in err
    err = _cli_error(["convert", str(src), "--out", str(out), "--num-heads", "2",
                      "--mean", "0.5", "--std", "0.2"], capsys)
    assert "one value per input channel" in err
    err = _cli_error(["convert", str(src), "--out", str(out), "--num-heads", "2",
                      "--img-size", "16"], capsys)
    assert "img_size: given 16" in err
    err = _cli_error(["convert", str(src), "--out", str(out), "--format", "map"], capsys)
    assert "--map" in err
    bad_map = tmp_path / "m.json"
    bad_map.write_text(json.dumps({"rules": [["(", "x"]]}))
    err = _cli_error(["convert", str(src), "--out", str(out), "--map", str(bad_map)], capsys)
    assert "regular expression" in err
    sd = _plain_sd()
    sd["blocks.0.attn.bias_k"] = _z(1, 1, 16)
    _write(src, sd, {})
    err = _cli_error(["convert", str(src), "--out", str(out), "--num-heads", "2"], capsys)
    assert "add_bias_kv" in err
    assert not out.exists()  # nothing written by a failed conversion
    assert sorted(os.listdir(tmp_path)) == ["m.json", "plain.safetensors"]


def test_cli_failed_conversion_keeps_existing_output(tmp_path, capsys):
    src = tmp_path / "plain.safetensors"
    out = tmp_path / "out.safetensors"
    _write(src, _plain_sd(), {})
    assert cli_main(["convert", str(src), "--out", str(out), "--num-heads", "2"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    _cli_error(["convert", str(src), "--out", str(out), "--num-heads", "3"], capsys)
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.safetensors", "plain.safetensors"]


def test_cli_subprocess(tmp_path):
    """The real entry point: python -m polyvit convert, success and a user error."""
    src = tmp_path / "plain.safetensors"
    _write(src, _plain_sd(), {})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + sys.path))
    ok = subprocess.run([sys.executable, "-m", "polyvit", "convert", str(src), "--out",
                         str(tmp_path / "o.safetensors"), "--num-heads", "2"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "parameters:" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "polyvit", "convert", str(src), "--out",
                          str(tmp_path / "o2.safetensors")], capture_output=True, text=True,
                         env=env)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
