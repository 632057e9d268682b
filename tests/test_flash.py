"""The hand-written FlashAttention against the explicit path: values, gradients, masks, dropout."""

from __future__ import annotations

import math

import pytest
import torch

from attention_lab.nn.attention import scaled_dot_product_attention
from attention_lab.nn.flash import _hash32, dropout_keep_mask, flash_attention, seed_key

# Blocks that do not divide the lengths, so every edge case of the tiling is visited.
BLOCKS = {"block_q": 4, "block_k": 3}


def _qkv(t: int = 11, s: int = 10, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 3, t, 8), (2, 3, s, 8), (2, 3, s, 5)]
    return [torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_() for shape in shapes]


def _masks(t: int, s: int) -> dict[str, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(1)
    per_entry = torch.rand(2, 3, t, s, generator=gen) > 0.4
    padding = torch.ones(2, 1, 1, s, dtype=torch.bool)
    padding[1, ..., s - 4 :] = False
    additive = torch.randn(t, s, generator=gen)
    additive[additive < -0.8] = -math.inf
    return {"none": None, "bool": per_entry, "padding": padding, "float": additive}


def _with_causal(mask: torch.Tensor | None, t: int, s: int) -> torch.Tensor:
    causal = torch.ones(t, s, dtype=torch.bool).tril()  # top-left aligned, as torch.tril
    if mask is None:
        return causal
    if mask.dtype == torch.bool:
        return mask & causal
    return mask.masked_fill(~causal, -math.inf)


def _value_and_grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [out, *torch.autograd.grad(out.square().sum(), inputs)]


@pytest.mark.parametrize("mask_kind", ["none", "bool", "padding", "float"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("t", "s"), [(11, 10), (10, 10), (3, 12)])
def test_values_and_gradients_equal_the_explicit_path(
    mask_kind: str, causal: bool, t: int, s: int
) -> None:
    q, k, v = _qkv(t, s)
    mask = _masks(t, s)[mask_kind]
    explicit_mask = _with_causal(mask, t, s) if causal else mask
    expected = _value_and_grads(scaled_dot_product_attention(q, k, v, explicit_mask)[0], [q, k, v])
    actual = _value_and_grads(flash_attention(q, k, v, mask, causal=causal, **BLOCKS), [q, k, v])
    for name, a, e in zip(["out", "dq", "dk", "dv"], actual, expected, strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5, msg=name)


def test_fp64_agrees_to_fp64_precision() -> None:
    q, k, v = _qkv(dtype=torch.float64)
    mask = _masks(11, 10)["bool"]
    expected = _value_and_grads(scaled_dot_product_attention(q, k, v, mask)[0], [q, k, v])
    actual = _value_and_grads(flash_attention(q, k, v, mask, **BLOCKS), [q, k, v])
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-12)


# (T, S, the mask's shape): broadcast over batch, heads or queries; T < S, where the top-left
# causal mask hides most of each row (skipped blocks).
LEARNED_MASKS = [
    (11, 10, (11, 10)),
    (11, 10, (2, 3, 11, 10)),
    (11, 10, (2, 1, 11, 10)),
    (11, 10, (3, 1, 10)),
    (3, 12, (3, 3, 12)),
]


@pytest.mark.parametrize(("t", "s", "shape"), LEARNED_MASKS)
@pytest.mark.parametrize("causal", [False, True])
def test_a_learned_float_mask_gets_the_explicit_paths_gradient(
    t: int, s: int, shape: tuple[int, ...], causal: bool
) -> None:
    # A learned bias (relative positions) with -inf entries.
    q, k, v = _qkv(t, s)
    bias = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    bias = bias.masked_fill(bias < -1.0, -math.inf).requires_grad_()
    explicit_mask = _with_causal(bias, t, s) if causal else bias
    expected = _value_and_grads(
        scaled_dot_product_attention(q, k, v, explicit_mask)[0], [q, k, v, bias]
    )
    actual = _value_and_grads(
        flash_attention(q, k, v, bias, causal=causal, **BLOCKS), [q, k, v, bias]
    )
    for name, a, e in zip(["out", "dq", "dk", "dv", "dbias"], actual, expected, strict=True):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5, msg=name)


def test_a_learned_bf16_mask_gets_a_bf16_gradient_close_to_fp32s() -> None:
    q, k, v = _qkv(11, 10)
    bias = torch.randn(3, 11, 10, generator=torch.Generator().manual_seed(4), requires_grad=True)
    expected = torch.autograd.grad(flash_attention(q, k, v, bias, **BLOCKS).square().sum(), bias)
    low = [x.detach().bfloat16().requires_grad_() for x in (q, k, v, bias)]
    (grad,) = torch.autograd.grad(flash_attention(*low, **BLOCKS).square().sum(), low[3])
    assert grad.dtype == torch.bfloat16 and grad.shape == bias.shape
    torch.testing.assert_close(grad.float(), expected[0], atol=0.05, rtol=0.05)


def test_a_learned_mask_with_dropout_gets_the_gradient_of_the_kept_entries() -> None:
    q, k, v = _qkv(t=11, s=10, dtype=torch.float64)
    bias = torch.randn(11, 10, dtype=torch.float64, requires_grad=True)
    keep = dropout_keep_mask(7, 0.3, (2, 3), range(11), range(10))  # (B, H, T, S)
    weights = scaled_dot_product_attention(q, k, v, bias)[1]
    expected = _value_and_grads((weights * keep / 0.7) @ v, [q, k, v, bias])
    actual = _value_and_grads(
        flash_attention(q, k, v, bias, dropout_p=0.3, seed=7, **BLOCKS), [q, k, v, bias]
    )
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("block", [1, 2, 5, 64])
def test_the_result_does_not_depend_on_the_block_sizes(block: int) -> None:
    q, k, v = _qkv()
    reference = flash_attention(q, k, v, block_q=11, block_k=10)  # one block each
    torch.testing.assert_close(
        flash_attention(q, k, v, block_q=block, block_k=block), reference, atol=1e-6, rtol=1e-6
    )


def test_a_row_with_no_allowed_key_gives_zeros_and_finite_gradients() -> None:
    q, k, v = _qkv()
    mask = torch.ones(11, 10, dtype=torch.bool)
    mask[4] = False  # query 4 may attend to nothing
    out = flash_attention(q, k, v, mask, **BLOCKS)
    assert torch.all(out[:, :, 4] == 0)
    grads = torch.autograd.grad(out.square().sum() + out.sum(), [q, k, v])
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.all(grads[0][:, :, 4] == 0)


def test_causal_attention_leaks_nothing_from_the_future() -> None:
    q, k, v = _qkv(10, 10)
    out = flash_attention(q, k, v, causal=True, **BLOCKS)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, 6:] += 1.0
    v2[:, :, 6:] -= 1.0
    changed = flash_attention(q, k2, v2, causal=True, **BLOCKS)
    torch.testing.assert_close(changed[:, :, :6], out[:, :, :6])
    assert not torch.allclose(changed[:, :, 6:], out[:, :, 6:])


class TestDropout:
    P = 0.3

    def test_forward_and_backward_apply_one_generated_mask(self) -> None:
        # The explicit computation with the same keep-mask, built whole: softmax * Z @ V.
        q, k, v = _qkv(t=11, s=10, dtype=torch.float64)
        mask = _masks(11, 10)["padding"]
        keep = dropout_keep_mask(7, self.P, (2, 3), range(11), range(10))  # (B, H, T, S)
        weights = scaled_dot_product_attention(q, k, v, mask)[1]
        expected = _value_and_grads((weights * keep / (1 - self.P)) @ v, [q, k, v])
        actual = _value_and_grads(
            flash_attention(q, k, v, mask, dropout_p=self.P, seed=7, **BLOCKS), [q, k, v]
        )
        for a, e in zip(actual, expected, strict=True):
            torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-12)

    def test_the_keep_mask_depends_on_the_position_not_the_block(self) -> None:
        whole = dropout_keep_mask(3, self.P, (2, 3), range(40), range(50))
        block = dropout_keep_mask(3, self.P, (2, 3), range(8, 16), range(20, 35))
        assert torch.equal(block, whole[..., 8:16, 20:35])
        assert not torch.equal(dropout_keep_mask(4, self.P, (2, 3), range(40), range(50)), whole)

    def test_the_seed_key_is_the_same_hash_on_python_ints_as_on_tensors(self) -> None:
        # seed_key hashes a given int as a Python int and a drawn seed as a tensor (never read
        # back: no sync, no graph break); the keep-mask must draw the same bits either way:
        # pinned values, and the tensor path of the same hash.
        assert [seed_key(s) for s in (0, -1, 2**32 + 5)] == [33350994, 903996321, 260803382]
        for seed in (0, 1, 7, 2**31 - 1, 2**32 + 5, -1):
            as_tensor = _hash32(torch.tensor(seed & 0xFFFFFFFF) ^ 0x9E3779B9)
            assert seed_key(seed) == int(as_tensor)
        for seed in (0, 5, -1, 2**31 - 1):  # an int32 seed tensor hashes as the int does
            assert int(seed_key(torch.tensor(seed, dtype=torch.int32))) == seed_key(seed)

    def test_keep_rate_and_scaling(self) -> None:
        keep = dropout_keep_mask(11, self.P, (4, 8), range(256), range(256)).float()
        n = keep.numel()
        # Keep rate within 5 standard deviations of 1 - p; rows and columns uncorrelated.
        assert abs(keep.mean().item() - (1 - self.P)) < 5 * math.sqrt(self.P * (1 - self.P) / n)
        neighbours = (keep[..., 1:] * keep[..., :-1]).mean().item()
        assert abs(neighbours - (1 - self.P) ** 2) < 0.01
        # Uniform attention over S keys: each output is the mean of the kept values / (1 - p),
        # whose expectation is the plain mean.
        q = torch.zeros(1, 1, 512, 4)
        k = torch.zeros(1, 1, 512, 4)
        v = torch.ones(1, 1, 512, 1)
        out = flash_attention(q, k, v, dropout_p=self.P, seed=5)
        assert abs(out.mean().item() - 1.0) < 0.01
        assert set(torch.unique((out * 512 * (1 - self.P)).round()).tolist()) <= set(range(513))

    def test_a_seed_is_drawn_from_torch_when_none_is_given(self) -> None:
        q, k, v = _qkv()
        torch.manual_seed(0)
        first = flash_attention(q, k, v, dropout_p=self.P)
        torch.manual_seed(0)
        again = flash_attention(q, k, v, dropout_p=self.P)
        third = flash_attention(q, k, v, dropout_p=self.P)
        torch.testing.assert_close(first, again)
        assert not torch.allclose(first, third)

    def test_a_drawn_seed_is_the_keep_mask_of_that_seed_as_an_int(self) -> None:
        q, k, v = _qkv()
        torch.manual_seed(0)
        drawn = flash_attention(q, k, v, dropout_p=self.P)
        torch.manual_seed(0)
        seed = int(torch.randint(2**31 - 1, ()))
        torch.testing.assert_close(drawn, flash_attention(q, k, v, dropout_p=self.P, seed=seed))
        for dtype in (torch.int64, torch.int32):  # an int32 seed hashed in int32 would wrap
            as_tensor = torch.tensor(seed, dtype=dtype)
            torch.testing.assert_close(
                drawn, flash_attention(q, k, v, dropout_p=self.P, seed=as_tensor)
            )

    def test_dropout_without_a_seed_compiles_to_one_graph(self) -> None:
        # The seed is drawn as a tensor and never read back: fullgraph=True refuses any break
        # (it was an .item() before). The eager backend traces without compiling kernels.
        q, k, v = (x.requires_grad_() for x in _qkv())
        compiled = torch.compile(
            lambda *x: flash_attention(*x, dropout_p=self.P, **BLOCKS),
            backend="eager",
            fullgraph=True,
        )
        torch.manual_seed(0)
        out = compiled(q, k, v)
        out.square().sum().backward()
        torch.manual_seed(0)
        torch.testing.assert_close(out, flash_attention(q, k, v, dropout_p=self.P, **BLOCKS))
        assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_under_autocast(dtype: torch.dtype) -> None:
    q, k, v = _qkv()
    mask = _masks(11, 10)["padding"]
    expected = _value_and_grads(scaled_dot_product_attention(q, k, v, mask)[0], [q, k, v])
    with torch.autocast("cpu", dtype=dtype):
        half = [x.to(dtype) for x in (q, k, v)]
        out = flash_attention(*half, mask, **BLOCKS)
    assert out.dtype == dtype
    actual = _value_and_grads(out.float(), [q, k, v])
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.float(), e, atol=0.05, rtol=0.05)


class TestBadInput:
    def test_block_sizes_must_be_positive(self) -> None:
        q, k, v = _qkv()
        with pytest.raises(ValueError, match="block_k=0 must be a positive integer"):
            flash_attention(q, k, v, block_k=0)
        with pytest.raises(ValueError, match=r"block_q=-2 must be a positive integer"):
            flash_attention(q, k, v, block_q=-2)

    def test_mask_of_the_wrong_shape_or_dtype(self) -> None:
        q, k, v = _qkv()
        with pytest.raises(ValueError, match=r"mask of shape \(11, 9\) does not broadcast"):
            flash_attention(q, k, v, torch.ones(11, 9, dtype=torch.bool))
        with pytest.raises(TypeError, match=r"mask has dtype torch\.int64"):
            flash_attention(q, k, v, torch.ones(11, 10, dtype=torch.long))

    def test_weights_cannot_be_asked_of_the_flash_kernel(self) -> None:
        q, k, v = _qkv()
        with pytest.raises(ValueError, match="need_weights=True: flash_attention never forms"):
            flash_attention(q, k, v, need_weights=True)

    def test_mismatched_inputs(self) -> None:
        q, k, v = _qkv()
        with pytest.raises(ValueError, match="same leading dims"):
            flash_attention(q, k[:1], v[:1])
