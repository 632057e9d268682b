"""The Triton FlashAttention kernels (``model.attention=scratch_triton``) against the explicit path.

Without CUDA these run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, which conftest.py
sets), so CI covers the kernels' arithmetic, masking and indexing; the compiled kernels are
checked by the same tests on a GPU, and in every dtype by tests/test_gpu.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attention_lab.cli.bench import main
from attention_lab.nn import triton_flash
from attention_lab.nn.attention import (
    MultiHeadAttention,
    causal_mask,
    scaled_dot_product_attention,
)
from attention_lab.nn.flash import dropout_keep_mask, flash_attention
from attention_lab.nn.triton_flash import triton_flash_attention

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(
    triton_flash.available() is not None
    or (DEVICE.type == "cpu" and not triton_flash.interpreted()),
    reason="needs triton, and CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)",
)


def _qkv(batch: int, heads: int, tgt_len: int, src_len: int, head_dim: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, tgt_len, head_dim)] + [(batch, heads, src_len, head_dim)] * 2
    return [torch.randn(shape, generator=generator).to(DEVICE).requires_grad_() for shape in shapes]


def _with_grads(fn, q, k, v, grad_out):
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def _explicit(mask, causal, tgt_len, src_len):
    """The explicit path with the same mask (True = may attend), causality folded in."""
    if causal:
        tril = causal_mask(tgt_len, device=DEVICE)[:, :src_len]
        if src_len > tgt_len:  # top-left aligned: key s is visible to query t when s <= t
            tril = torch.ones(tgt_len, src_len, dtype=torch.bool, device=DEVICE).tril()
        mask = tril if mask is None else (mask & tril if mask.dtype == torch.bool else None)
    return lambda q, k, v: scaled_dot_product_attention(q, k, v, mask)[0]


# (B, H, T, S, d): one block and several, sizes that fill no block, T != S, d not a power of 2;
# d > 128 in fp32 takes 32 x 32 blocks.
SHAPES = [(1, 1, 16, 16, 16), (2, 3, 70, 130, 24), (1, 2, 129, 65, 8), (1, 1, 70, 40, 200)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_outputs_and_gradients_equal_the_explicit_path(shape, causal) -> None:
    q, k, v = _qkv(*shape)
    grad_out = torch.randn_like(q)
    ours = _with_grads(lambda *x: triton_flash_attention(*x, causal=causal), q, k, v, grad_out)
    ref = _with_grads(_explicit(None, causal, shape[2], shape[3]), q, k, v, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)


def test_padding_mask_with_an_empty_row_gives_zeros_and_finite_gradients() -> None:
    batch, heads, tgt_len, src_len = 2, 2, 20, 70
    q, k, v = _qkv(batch, heads, tgt_len, src_len, 16, seed=1)
    mask = torch.rand(batch, 1, 1, src_len, generator=torch.Generator().manual_seed(2)) > 0.4
    mask[0] = False  # the first sequence has no key at all: every row of it is empty
    mask = mask.to(DEVICE)
    grad_out = torch.randn_like(q)
    ours = _with_grads(lambda *x: triton_flash_attention(*x, mask), q, k, v, grad_out)
    ref = _with_grads(_explicit(mask, False, tgt_len, src_len), q, k, v, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)
    assert ours[0][0].abs().max() == 0 and all(g.isfinite().all() for g in ours[1:])


def test_float_mask_per_head_adds_to_the_scores_beside_causality() -> None:
    q, k, v = _qkv(2, 3, 40, 40, 16, seed=3)
    bias = torch.randn(1, 3, 40, 40).to(DEVICE)  # broadcast over the batch: stride 0 there
    grad_out = torch.randn_like(q)
    ours = _with_grads(lambda *x: triton_flash_attention(*x, bias, causal=True), q, k, v, grad_out)
    causal_bias = bias.masked_fill(~causal_mask(40, device=DEVICE), -math.inf)
    ref = _with_grads(
        lambda *x: scaled_dot_product_attention(*x, causal_bias)[0], q, k, v, grad_out
    )
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_drops_the_entries_of_flash_dropout_keep_mask(causal) -> None:
    """The kernel regenerates flash.py's keep-mask from (seed, head, row, column): the output
    and gradients equal softmax(S) * Z / (1 - p) V with Z built whole by ``dropout_keep_mask``."""
    batch, heads, tgt_len, src_len, p, seed = 2, 2, 70, 90, 0.3, 1234
    q, k, v = _qkv(batch, heads, tgt_len, src_len, 16, seed=4)
    grad_out = torch.randn_like(q)
    ours = _with_grads(
        lambda *x: triton_flash_attention(*x, causal=causal, dropout_p=p, seed=seed),
        q, k, v, grad_out,
    )  # fmt: skip
    keep = dropout_keep_mask(seed, p, (batch, heads), range(tgt_len), range(src_len))
    allowed = torch.ones(tgt_len, src_len, dtype=torch.bool).tril() if causal else None

    def reference(q, k, v):
        scores = q @ k.mT / math.sqrt(q.size(-1))
        if allowed is not None:
            scores = scores.masked_fill(~allowed.to(DEVICE), -math.inf)
        return (scores.softmax(-1) * keep.to(DEVICE) / (1 - p)) @ v

    ref = _with_grads(reference, q, k, v, grad_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)
    assert 0.6 < keep.float().mean() < 0.8  # about 1 - p of the entries are kept


def test_a_drawn_seed_drops_what_flash_py_drops_with_the_same_draw() -> None:
    """Without a seed both draw one from torch's generator, as a tensor on the device that the
    kernels read (no sync, no graph break); a seed given as an int or a tensor is the same seed."""
    q, k, v = _qkv(2, 2, 30, 40, 16, seed=7)
    torch.manual_seed(3)
    drawn = triton_flash_attention(q, k, v, dropout_p=0.3)
    torch.manual_seed(3)
    torch.testing.assert_close(drawn, flash_attention(q, k, v, dropout_p=0.3))
    torch.manual_seed(3)
    seed = int(torch.randint(2**31 - 1, ()))
    for given in (seed, torch.tensor(seed)):
        torch.testing.assert_close(
            drawn, triton_flash_attention(q, k, v, dropout_p=0.3, seed=given)
        )
    assert not torch.allclose(drawn, triton_flash_attention(q, k, v, dropout_p=0.3))


@pytest.mark.parametrize(("block_q", "block_k"), [(16, 16), (16, 64), (128, 32)])
def test_the_result_does_not_depend_on_the_block_sizes(block_q, block_k) -> None:
    """Any blocks compute the same attention, causal, padded and with dropout (whose bits depend
    on positions only); ``bench flash-blocks --kinds scratch_triton`` times them."""
    q, k, v = _qkv(2, 2, 70, 90, 16, seed=8)
    mask = (torch.rand(2, 1, 1, 90, generator=torch.Generator().manual_seed(9)) > 0.3).to(DEVICE)
    grad_out = torch.randn_like(q)

    def run(**blocks):
        return _with_grads(
            lambda *x: triton_flash_attention(
                *x, mask, causal=True, dropout_p=0.2, seed=5, **blocks
            ),
            q, k, v, grad_out,
        )  # fmt: skip

    blocked, default = run(block_q=block_q, block_k=block_k), run()
    for name, a, b in zip(("out", "dq", "dk", "dv"), blocked, default, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)


def test_bench_flash_blocks_times_the_triton_kernel(tmp_path: Path) -> None:
    """Every (block_q, block_k, stages, warps) gets a row, and each a ratio to the reference
    timed beside it (PyTorch's math backend here; on a GPU, --sdpa-backends flash)."""
    settings = (
        "--seq-lens 24 40 --block-sizes 16 32 --stages 2 3 --warps 4 --sdpa-backends math "
        "--batch 1 --d-model 32 --heads 2 --repeats 1 --min-time 0.01"
    )
    main(["flash-blocks", "--kinds", "scratch_triton", "--out", str(tmp_path), *settings.split()])
    with (tmp_path / "flash-blocks.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    configs = {
        (r["kind"], r["seq_len"], r["block_q"], r["block_k"], r["stages"], r["warps"]) for r in rows
    }
    assert configs == {
        ("scratch_triton", seq_len, q, k, stages, "4")
        for seq_len in ("24", "40")
        for q in ("16", "32")
        for k in ("16", "32")
        for stages in ("2", "3")
    } | {("scratch_fused[math]", seq_len, "", "", "", "") for seq_len in ("24", "40")}
    assert all(float(r["ms"]) > 0 for r in rows)
    header, _, *lines = (tmp_path / "flash-blocks.md").read_text().splitlines()
    assert header.endswith("| fwd+bwd ms | vs scratch_fused[math] |")
    reference = {r["seq_len"]: float(r["ms"]) for r in rows if r["kind"] == "scratch_fused[math]"}
    for line in lines:  # each over the reference at its own T
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        ratio = float(cells[-2]) / reference[cells[3]]  # from the rounded time: to its rounding
        assert float(cells[-1].rstrip("x")) == pytest.approx(ratio, rel=0.01, abs=0.006)


def test_pipeline_settings_reach_the_forward_and_its_backward(monkeypatch) -> None:
    """``pipeline``'s stages and warps reach every launch of a forward run inside it, and of its
    backward, which may run later (and on autograd's own thread); the numbers do not change."""
    launched = []
    settings_of = triton_flash._kernel_settings

    def spy(*args):
        settings = settings_of(*args)
        launched.append((settings["num_stages"], settings["num_warps"]))
        return settings

    monkeypatch.setattr(triton_flash, "_kernel_settings", spy)
    q, k, v = _qkv(1, 2, 20, 20, 16, seed=4)
    grad_out = torch.randn_like(q)
    default = _with_grads(lambda *x: triton_flash_attention(*x, causal=True), q, k, v, grad_out)
    with triton_flash.pipeline(num_stages=2, num_warps=8):
        out = triton_flash_attention(q, k, v, causal=True)
    tuned = (out, *torch.autograd.grad(out, (q, k, v), grad_out))  # outside the block
    assert launched == [(3, 4), (3, 4), (2, 8), (2, 8)]
    for name, a, b in zip(("out", "dq", "dk", "dv"), tuned, default, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=name)
    with pytest.raises(ValueError, match="num_warps=6 must be a power of two"):
        triton_flash.pipeline(num_warps=6).__enter__()
    with pytest.raises(ValueError, match="num_stages=0 must be 1 or more"):
        triton_flash.pipeline(num_stages=0).__enter__()


def test_fp16_is_close_to_the_fp32_explicit_path() -> None:
    """fp16 products, fp32 accumulation (bf16 is checked on a GPU by tests/test_gpu.py: Triton's
    CPU interpreter multiplies bf16 blocks wrongly, so it cannot check bf16 here)."""
    q, k, v = _qkv(2, 2, 70, 70, 32, seed=5)
    half = [x.detach().half().requires_grad_() for x in (q, k, v)]
    out = triton_flash_attention(*half, causal=True)
    out.float().square().sum().backward()
    ref = _explicit(None, True, 70, 70)(q, k, v)
    ref.square().sum().backward()
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)
    for a, b in zip(half, (q, k, v), strict=True):
        torch.testing.assert_close(a.grad.float(), b.grad, atol=2e-2, rtol=2e-2)


def test_keys_and_values_of_another_dtype_take_the_querys() -> None:
    """As under autocast, where fp32 bias_k / bias_v appended to half-precision keys make the
    keys fp32: the products run in q's dtype, the gradients return in each input's own."""
    q, k, v = _qkv(1, 2, 20, 20, 16, seed=6)
    half_q = q.detach().half().requires_grad_()
    out = triton_flash_attention(half_q, k, v)
    out.float().sum().backward()
    assert out.dtype == torch.float16 and k.grad.dtype == torch.float32
    ref = scaled_dot_product_attention(q.detach(), k.detach(), v.detach())[0]
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)


def test_as_the_kernel_of_multi_head_attention_it_is_a_drop_in() -> None:
    """kernel="triton" in MultiHeadAttention: the same outputs as the explicit kernel with
    nn.MultiheadAttention's masks (True = ignore), in its (T, B, E) layout, and the explicit
    path's weights when they are asked for."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(32, 4, kernel="triton").to(DEVICE)
    explicit = MultiHeadAttention(32, 4).to(DEVICE)
    explicit.load_state_dict(ours.state_dict())
    x = torch.randn(12, 3, 32, device=DEVICE)  # (T, B, E)
    padding = torch.zeros(3, 12, dtype=torch.bool, device=DEVICE)
    padding[1, 8:] = True
    for kwargs in (
        {"key_padding_mask": padding, "need_weights": False},
        {"is_causal": True, "need_weights": False},
        {"key_padding_mask": padding, "is_causal": True, "need_weights": False},
    ):
        torch.testing.assert_close(
            ours(x, x, x, **kwargs)[0], explicit(x, x, x, **kwargs)[0], atol=1e-5, rtol=1e-5
        )
    out, weights = ours(x, x, x, key_padding_mask=padding)
    ref_out, ref_weights = explicit(x, x, x, key_padding_mask=padding)
    torch.testing.assert_close(weights, ref_weights)
    torch.testing.assert_close(out, ref_out)


def test_bad_inputs_name_what_to_change(monkeypatch) -> None:
    q, k, v = _qkv(1, 2, 8, 8, 16)
    with pytest.raises(TypeError, match=r"fp32, fp16 or bf16.*scratch_flash"):
        triton_flash_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="one head size"):
        triton_flash_attention(q, k, v[..., :8])
    with pytest.raises(ValueError, match=r"\(B, H, T, d\)"):
        triton_flash_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match=r"mask requires grad: scratch_triton.*scratch_flash"):
        triton_flash_attention(q, k, v, torch.zeros(8, 8, device=DEVICE, requires_grad=True))
    with pytest.raises(ValueError, match="block_q=48 must be a power of two from 16"):
        triton_flash_attention(q, k, v, block_q=48)
    with pytest.raises(ValueError, match="block_k=8 must be a power of two from 16"):
        MultiHeadAttention(32, 2, kernel="triton", block_k=8)
    monkeypatch.setattr(triton_flash, "interpreted", lambda: False)
    cpu = [x.detach().cpu() for x in (q, k, v)]
    with pytest.raises(RuntimeError, match=r"CUDA GPU \(trainer=gpu\).*TRITON_INTERPRET=1"):
        triton_flash_attention(*cpu)


HOPPER_SHARED_BYTES = 232448  # the most on-chip memory one program may take on sm_90 (227 KiB)


@pytest.mark.slow
def test_the_kernels_compile_for_hopper_within_its_on_chip_memory(tmp_path: Path) -> None:
    """Compiled, not run, for sm_90 (tests/triton_compile_check.py): the compiler checks types
    the interpreter lets pass, and says how much on-chip memory each program needs."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_compile_check.py")
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env | {"TRITON_CACHE_DIR": str(tmp_path)},
        timeout=900,
    )
    if result.returncode == 3:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(compiled) == 15  # three kernels in each of five settings
    for kernel in compiled:
        assert 0 < kernel["shared_bytes"] <= HOPPER_SHARED_BYTES, kernel
