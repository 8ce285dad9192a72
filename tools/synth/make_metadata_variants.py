"""Writes the tiny synthetic `bitnet` model again with metadata that says more than llama.cpp reads.

Each variant is the seed-7 tiny TQ2_0 model (the same weights as `bitnet-tiny-tq2_0.gguf`)
with keys added, replaced or dropped. llama.cpp's loader decides what they mean:

* `meta-*` files hold keys llama.cpp ignores for arch `bitnet` (a contradictory `hidden_act`,
  `vocab_size`, `logit_scale`, ...) or honours (RoPE scaling, per-layer arrays). Shard must
  give llama.cpp's logits on each: `tests/fixtures/llamacpp-bitnet-metadata.json`, recorded by
  `tools/conformance/llamacpp_reference.py`, checked by `tests/tests/metadata.rs`.
* `refuse-*` files hold keys Shard cannot run as llama.cpp would, or that make no model.
  Shard must refuse each at load with an error that names the key. They are the two-layer
  preset over a 24-token vocabulary: only their metadata matters, so they stay small.

Usage:
  python tools/synth/make_metadata_variants.py --vocab-from SmolLM2.gguf --out-dir work-data/synth
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import make_bitnet  # noqa: E402

A = "bitnet."
VARIANTS = {
    # Keys llama.cpp's bitnet graph never reads, each set to something that would matter if it did.
    "meta-ignored": [
        f"{A}hidden_act=str:relu2", f"{A}vocab_size=u32:49159", f"{A}logit_scale=f32:0.5",
        f"{A}embedding_scale=f32:12", f"{A}residual_scale=f32:0.2", f"{A}attention.scale=f32:2",
        f"{A}attention.layer_norm_epsilon=f32:0.5", f"{A}attention.clamp_kqv=f32:0.1",
        f"{A}tie_word_embeddings=bool:false", "general.name=str:relu2-gated",
    ],
    # Linear position scaling, the attention factor, partial rotation, another base and epsilon.
    "meta-rope-linear": [
        f"{A}rope.scaling.type=str:linear", f"{A}rope.scaling.factor=f32:4", f"{A}rope.scaling.attn_factor=f32:0.8",
        f"{A}rope.freq_base=f32:50000", f"{A}rope.dimension_count=u32:48", f"{A}attention.layer_norm_rms_epsilon=f32:1e-6",
    ],
    # YaRN over a short original context, so its ramp falls across the rotated pairs.
    "meta-rope-yarn": [
        f"{A}rope.scaling.type=str:yarn", f"{A}rope.scaling.factor=f32:8", f"{A}rope.scaling.original_context_length=u32:128",
    ],
    # Per-layer arrays (uniform), the old linear-scale key, explicit head sizes and causality.
    "meta-per-layer": [
        f"{A}feed_forward_length=u32s:768,768,768,768", f"{A}attention.head_count=u32s:4,4,4,4",
        f"{A}attention.head_count_kv=u32s:2,2,2,2", f"{A}rope.scale_linear=f32:2",
        f"{A}attention.key_length=u32:64", f"{A}attention.value_length=u32:64", f"{A}attention.causal=bool:true",
    ],
    # Scaling type "none" overrides a factor; the frequency base falls back to its default.
    "meta-rope-none": [f"{A}rope.scaling.type=str:none", f"{A}rope.scaling.factor=f32:4", f"-{A}rope.freq_base"],
    # Refused at load.
    "refuse-output-tensor": ["+output"],
    "refuse-head-size": [f"{A}attention.key_length=u32:32"],
    "refuse-non-causal": [f"{A}attention.causal=bool:false"],
    "refuse-ff-per-layer": [f"{A}feed_forward_length=u32s:512,256"],
    "refuse-context-0": [f"{A}context_length=u32:0"],
    "refuse-context-1": [f"{A}context_length=u32:1"],
    "refuse-no-rms-eps": [f"-{A}attention.layer_norm_rms_epsilon"],
    "refuse-rope-type": [f"{A}rope.scaling.type=str:ntk"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-from", required=True)
    p.add_argument("--out-dir", required=True)
    a = p.parse_args()
    for name, changes in VARIANTS.items():
        vocab = ["--small-vocab", "24", "--preset", "small"] if name.startswith("refuse-") else ["--vocab-from", a.vocab_from]
        argv = vocab + ["--out-dir", a.out_dir, "--types", "tq2_0", "--name", name]
        for c in changes:
            if c == "+output":
                argv.append("--output-tensor")
            elif c.startswith("-"):
                argv += ["--drop-kv", c[1:]]
            else:
                argv += ["--kv", c]
        make_bitnet.main(argv)


if __name__ == "__main__":
    main()
