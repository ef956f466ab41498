"""The built-in rename maps (:data:`BUILTIN_MAPS`): plain PyTorch ``nn.MultiheadAttention``
ViTs (``torch_mha``) and lucidrains' vit-pytorch (``vit_pytorch``)."""
from __future__ import annotations

from typing import Any, Dict


_B = r"^(?:blocks|layers|encoder\.layers|encoder\.blocks|transformer\.layers|" \
     r"transformer\.blocks|transformer\.encoder\.layers|encoder)\.(\d+)\."
_ATTN = r"(?:attn|self_attn|attention|self_attention|mha|msa)"

#: Built-in rename maps, by name (use one as ``rename_map="torch_mha"`` or
#: ``format="torch_mha"``, or extend it from your own map with ``"extends": "torch_mha"``).
BUILTIN_MAPS: Dict[str, Dict[str, Any]] = {
    "torch_mha": {
        "description": (
            "Plain PyTorch pre-norm ViTs: a Conv2d patch embedding (patch_embed / "
            "to_patch_embedding / patch_embedding, optionally .proj/.conv/.0), cls_token or "
            "class_token ((C,), (1, C) or (1, 1, C)), pos_embed or pos_embedding ((T, C) or "
            "(1, T, C)), blocks in blocks/layers/encoder.layers/transformer.layers.{i} with "
            "norm1/ln1/ln_1 and norm2/ln2/ln_2 LayerNorms, nn.MultiheadAttention as "
            "attn/self_attn/attention (in_proj_weight, in_proj_bias, out_proj), an nn.Sequential "
            "MLP as mlp/ffn/ff[.net].{j} (Linear, GELU[, Dropout], Linear[, Dropout]), a final "
            "norm/ln/transformer.norm LayerNorm and a Linear head/mlp_head/fc/classifier. The "
            "forward must be x = x + attn(norm1(x)); x = x + mlp(norm2(x)), exact GELU, the "
            "class token first, the head on the (final-normed) class token; LayerNorm eps "
            "defaults to PyTorch's 1e-5. None of this shows in the weights: check it in the "
            "model's code."),
        "rules": [
            [r"^(?:class_token|cls_token|cls)$", "cls_token"],
            [r"^(?:pos_embed|pos_embedding|position_embedding|position_embeddings|pos_emb)$",
             "pos_embed"],
            [r"^(?:patch_embed|to_patch_embedding|patch_embedding|patch_embeddings|patch_emb)"
             r"(?:\.proj|\.conv|\.0)?\.(weight|bias)$", r"patch_embed.proj.\1"],
            [_B + r"(?:norm1|norm_1|ln1|ln_1|layernorm1|layer_norm1|attn_norm|norm_attn|"
                  r"attention_norm)\.(weight|bias)$", r"blocks.\1.norm1.\2"],
            [_B + r"(?:norm2|norm_2|ln2|ln_2|layernorm2|layer_norm2|mlp_norm|ffn_norm|norm_mlp|"
                  r"norm_ffn)\.(weight|bias)$", r"blocks.\1.norm2.\2"],
            [_B + _ATTN + r"\.(in_proj_weight|in_proj_bias)$", r"blocks.\1.attn.\2"],
            [_B + _ATTN + r"\.out_proj\.(weight|bias)$", r"blocks.\1.attn.out_proj.\2"],
            [_B + r"(?:mlp|ffn|ff|feed_forward|feedforward|mlp_block)(?:\.net|\.layers|\.block)?"
                  r"\.(\d+)\.(weight|bias)$", r"blocks.\1.mlp.\2.\3"],
            [r"^(?:norm|ln|ln_f|norm_f|final_norm|final_ln|encoder_norm|encoder\.norm|encoder\.ln|"
             r"transformer\.norm|transformer\.ln|layernorm|layer_norm)\.(weight|bias)$",
             r"norm.\1"],
            [r"^(?:head|mlp_head|fc|classifier|cls_head|linear_head)\.(weight|bias)$",
             r"head.\1"],
            [r"^(?:head|mlp_head|classifier|cls_head)\.(\d+)\.(weight|bias)$", r"head.\1.\2"],
        ],
        "drop": [r"\.num_batches_tracked$", r"^mask_token$"],
        "refuse": [
            [r"\.(?:q_proj_weight|k_proj_weight|v_proj_weight)$",
             "separate q/k/v projections (nn.MultiheadAttention with kdim/vdim other than "
             "embed_dim)"],
            [r"\.bias_[kv]$", "extra key/value biases (nn.MultiheadAttention add_bias_kv=True)"],
            [r"\.(?:linear1|linear2)\.(weight|bias)$",
             "nn.TransformerEncoderLayer (linear1/linear2), which defaults to post-norm blocks "
             "and ReLU; if yours has norm_first=True and activation='gelu', write a map with "
             "\"extends\": \"torch_mha\" and rules for linear1 -> mlp.fc1, linear2 -> mlp.fc2 "
             "and norm1/norm2"],
            [r"^(?:patch_embed|to_patch_embedding|patch_embedding|patch_embeddings|patch_emb)\.",
             "a patch embedding with more than one layer (a convolutional stem, or a norm "
             "around the projection)"],
        ],
        "config": {"ln_eps": 1e-5, "global_pool": "token"},
    },
    "vit_pytorch": {
        "description": (
            "lucidrains/vit-pytorch's ViT (vit_pytorch.vit.ViT), in its older form (PreNorm "
            "wrappers: layers.{i}.0.norm/.0.fn.to_qkv, layers.{i}.1.norm/.1.fn.net; mlp_head = "
            "LayerNorm + Linear on the class token) and its newer one (the norms inside "
            "Attention and FeedForward: layers.{i}.0.norm, layers.{i}.1.net.0; transformer.norm; "
            "a Linear mlp_head). Assumes pool='cls' (its 'mean' pooling averages the class token "
            "too, which polyvit cannot express); heads * dim_head must equal dim (else the "
            "shapes do not fit). The patch embedding is a Linear over einops '(p1 p2 c)' "
            "patches, made into a Conv2d: give img_size (or patch_size). Versions with "
            "LayerNorms around the patch embedding are refused."),
        "rules": [
            [r"^to_patch_embedding\.1\.(weight|bias)$", r"patch_embed.proj.\1"],
            [r"^pos_embedding$", "pos_embed"],
            [r"^transformer\.layers\.(\d+)\.0\.norm\.(weight|bias)$", r"blocks.\1.norm1.\2"],
            [r"^transformer\.layers\.(\d+)\.0\.(?:fn\.)?to_qkv\.(weight|bias)$",
             r"blocks.\1.attn.qkv.\2"],
            [r"^transformer\.layers\.(\d+)\.0\.(?:fn\.)?to_out\.0\.(weight|bias)$",
             r"blocks.\1.attn.proj.\2"],
            [r"^transformer\.layers\.(\d+)\.1\.(?:net\.0|norm)\.(weight|bias)$",
             r"blocks.\1.norm2.\2"],
            [r"^transformer\.layers\.(\d+)\.1\.(?:fn\.)?net\.(\d+)\.(weight|bias)$",
             r"blocks.\1.mlp.\2.\3"],
            [r"^transformer\.norm\.(weight|bias)$", r"norm.\1"],
            [r"^mlp_head\.(weight|bias)$", r"head.\1"],
            [r"^mlp_head\.(\d+)\.(weight|bias)$", r"head.\1.\2"],
        ],
        "refuse": [
            [r"^to_patch_embedding\.",
             "LayerNorms around the patch embedding (newer vit-pytorch versions)"],
        ],
        "head_norm": "final_norm",
        "patch_linear": "p1 p2 c",
        "config": {"ln_eps": 1e-5, "global_pool": "token"},
    },
}
