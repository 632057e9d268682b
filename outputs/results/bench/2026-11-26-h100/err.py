"""Each attention kind's relative error against the fp32 textbook computation on the GPU: one
layer (d_model 64, 4 heads) with padding and the causal mask, under autocast to each dtype; the
output, the input's gradient and the in-projection's gradient. Run as `python err.py` from the
repository root (run2.sh). Self-contained: the step is the one tests/test_gpu.py checks, written
out here (this record first imported it from tests/, as it ran on 2026-11-26 at commit 935b2bd).
"""

import torch

from attention_lab.nn.attention import ATTENTION_KINDS, build_attention, causal_mask

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def attention_step(kind: str, dtype: torch.dtype, length: int) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    module = build_attention(kind, d_model=64, n_heads=4, dropout=0.0).to("cuda")
    x = torch.randn(2, length, 64, device="cuda", requires_grad=True)
    padding = torch.zeros(2, length, dtype=torch.bool, device="cuda")
    padding[1, length * 3 // 4 :] = True  # True = ignore, as nn.MultiheadAttention
    later = ~causal_mask(length, device="cuda")  # (T, T), True = ignore
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out, _ = module(
            x, x, x, key_padding_mask=padding, attn_mask=later, is_causal=True, need_weights=False
        )
    out.float().square().sum().backward()  # a sum: fp16 gradients of a mean underflow
    return out.float(), x.grad, module.in_proj_weight.grad


for length in (128, 1024):
    want = attention_step("scratch", torch.float32, length)
    for kind in ATTENTION_KINDS:
        for dtype in DTYPES:
            got = attention_step(kind, dtype, length)
            errs = [float((g - w).abs().max() / w.abs().max()) for g, w in zip(got, want)]
            print(length, kind, dtype, " ".join(f"{e:.2e}" for e in errs), flush=True)
