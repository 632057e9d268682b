"""The hand-written attention against PyTorch's, value for value and gradient for gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attention_lab.nn.attention as attention_module
from attention_lab.nn import triton_flash
from attention_lab.nn.attention import (
    ATTENTION_KINDS,
    PORTABLE_KINDS,
    MultiHeadAttention,
    build_attention,
    causal_mask,
    scaled_dot_product_attention,
)

ATOL = 1e-5


def _random_mask(*shape: int, seed: int = 0) -> torch.Tensor:
    """A random boolean mask with at least one allowed key in every row."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(*shape, generator=gen) > 0.5
    mask[..., 0] = True
    return mask


class TestScaledDotProductAttention:
    @pytest.mark.parametrize("leading", [(3,), (2, 4), (2, 3, 2)])
    def test_matches_torch_without_mask(self, leading: tuple[int, ...]) -> None:
        q, k, v = (torch.randn(*leading, n, 8) for n in (5, 7, 7))
        out, weights = scaled_dot_product_attention(q, k, v)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=ATOL, rtol=0)
        assert weights.shape == (*leading, 5, 7)
        torch.testing.assert_close(weights.sum(-1), torch.ones(*leading, 5))

    def test_matches_torch_with_boolean_mask(self) -> None:
        q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
        mask = _random_mask(2, 3, 5, 6)
        out, weights = scaled_dot_product_attention(q, k, v, mask)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
        assert torch.all(weights[~mask] == 0)

    def test_matches_torch_with_causal_mask(self) -> None:
        q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
        out, _ = scaled_dot_product_attention(q, k, v, causal_mask(6))
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)

    def test_float_mask_is_added_to_the_scores(self) -> None:
        q, k, v = torch.randn(2, 5, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 8)
        bias = torch.randn(5, 6)
        out, _ = scaled_dot_product_attention(q, k, v, bias)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)

    def test_value_width_may_differ_from_key_width(self) -> None:
        q, k, v = torch.randn(2, 5, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 3)
        out, _ = scaled_dot_product_attention(q, k, v)
        assert out.shape == (2, 5, 3)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=ATOL, rtol=0)

    def test_scaling_is_one_over_sqrt_dk(self) -> None:
        q, k = torch.randn(1, 1, 16), torch.randn(1, 4, 16)
        _, weights = scaled_dot_product_attention(q, k, torch.randn(1, 4, 2))
        expected = torch.softmax((q @ k.transpose(-2, -1)) / 4.0, dim=-1)
        torch.testing.assert_close(weights, expected)

    def test_fully_masked_row_gives_zeros_and_finite_gradients(self) -> None:
        q, k, v = (torch.randn(1, 3, 4, requires_grad=True) for _ in range(3))
        mask = torch.ones(1, 3, 3, dtype=torch.bool)
        mask[0, 1] = False  # query 1 may attend to nothing
        out, weights = scaled_dot_product_attention(q, k, v, mask)
        assert torch.all(out[0, 1] == 0) and torch.all(weights[0, 1] == 0)
        out.sum().backward()
        for tensor in (q, k, v):
            assert torch.isfinite(tensor.grad).all()
        assert torch.all(q.grad[0, 1] == 0)

    def test_dropout_acts_on_the_weights(self) -> None:
        torch.manual_seed(0)
        q, k, v = torch.randn(2, 5, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 8)
        plain, _ = scaled_dot_product_attention(q, k, v)
        dropped, weights = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
        assert not torch.allclose(plain, dropped)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))  # returned before dropout


def _pair(**kwargs) -> tuple[nn.MultiheadAttention, MultiHeadAttention]:
    """nn.MultiheadAttention and ours, ours loaded with its state_dict."""
    torch.manual_seed(0)
    kwargs = {"embed_dim": 16, "num_heads": 4, "batch_first": True, **kwargs}
    reference = nn.MultiheadAttention(**kwargs).eval()
    ours = MultiHeadAttention(**kwargs).eval()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


class TestMultiHeadAttention:
    @pytest.mark.parametrize(
        "kwargs", [{}, {"bias": False}, {"kdim": 6, "vdim": 10}, {"dropout": 0.1}]
    )
    def test_parameters_have_torch_names_and_shapes(self, kwargs: dict) -> None:
        reference, ours = _pair(**kwargs)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in reference.state_dict().items()
        }

    def test_state_dict_loads_in_both_directions(self) -> None:
        torch.manual_seed(1)
        ours = MultiHeadAttention(16, 4, batch_first=True).eval()
        reference = nn.MultiheadAttention(16, 4, batch_first=True).eval()
        reference.load_state_dict(ours.state_dict())
        x = torch.randn(2, 5, 16)
        torch.testing.assert_close(ours(x, x, x)[0], reference(x, x, x)[0], atol=ATOL, rtol=0)

    @pytest.mark.parametrize("average", [True, False])
    def test_self_attention_matches(self, average: bool) -> None:
        reference, ours = _pair()
        x = torch.randn(3, 7, 16)
        expected = reference(x, x, x, average_attn_weights=average)
        actual = ours(x, x, x, average_attn_weights=average)
        torch.testing.assert_close(actual[0], expected[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(actual[1], expected[1], atol=ATOL, rtol=0)
        assert actual[1].shape == ((3, 7, 7) if average else (3, 4, 7, 7))

    def test_cross_attention_with_kdim_and_vdim_matches(self) -> None:
        reference, ours = _pair(kdim=6, vdim=10)
        query, key, value = torch.randn(2, 5, 16), torch.randn(2, 9, 6), torch.randn(2, 9, 10)
        for actual, expected in zip(
            ours(query, key, value), reference(query, key, value), strict=True
        ):
            torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)

    @pytest.mark.parametrize("bias", [True, False])
    @pytest.mark.parametrize("shared_memory", [True, False], ids=["key-is-value", "distinct"])
    def test_cross_attention_same_width_matches(self, bias: bool, shared_memory: bool) -> None:
        # key is value (a decoder attending to the encoder output) takes the packed K/V
        # projection; distinct keys and values take three projections. Both must match torch,
        # gradients of the inputs and of the shared in_proj parameters included.
        reference, ours = _pair(bias=bias)
        query, memory = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
        value = memory if shared_memory else torch.randn(2, 9, 16)
        grads = []
        for module in (reference, ours):
            leaves = [query.clone().requires_grad_(), memory.clone().requires_grad_()]
            key = leaves[1]
            out, _ = module(leaves[0], key, key if shared_memory else value)
            out.square().sum().backward()
            grads.append(
                [out, *(t.grad for t in leaves)]
                + [p.grad for _, p in sorted(module.named_parameters())]
            )
        for expected, actual in zip(*grads, strict=True):
            torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)

    def test_key_padding_mask_matches(self) -> None:
        reference, ours = _pair()
        x = torch.randn(3, 6, 16)
        padding = torch.zeros(3, 6, dtype=torch.bool)
        padding[0, 4:] = True
        padding[2, 1:] = True
        expected = reference(x, x, x, key_padding_mask=padding, average_attn_weights=False)
        actual = ours(x, x, x, key_padding_mask=padding, average_attn_weights=False)
        torch.testing.assert_close(actual[0], expected[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(actual[1], expected[1], atol=ATOL, rtol=0)
        assert torch.all(actual[1][0, :, :, 4:] == 0)

    def test_causal_mask_matches(self) -> None:
        reference, ours = _pair()
        x = torch.randn(2, 6, 16)
        blocked = ~causal_mask(6)  # nn.MultiheadAttention: True = ignore
        expected = reference(x, x, x, attn_mask=blocked, is_causal=True)
        torch.testing.assert_close(
            ours(x, x, x, attn_mask=blocked)[0], expected[0], atol=ATOL, rtol=0
        )
        # is_causal alone builds the same mask here (nn.MultiheadAttention insists on attn_mask).
        torch.testing.assert_close(ours(x, x, x, is_causal=True)[0], expected[0], atol=ATOL, rtol=0)

    def test_per_head_attn_mask_and_padding_combine(self) -> None:
        reference, ours = _pair()
        x = torch.randn(2, 5, 16)
        blocked = ~_random_mask(2 * 4, 5, 5, seed=3)
        padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
        kwargs = {"attn_mask": blocked, "key_padding_mask": padding}
        torch.testing.assert_close(
            ours(x, x, x, **kwargs)[0], reference(x, x, x, **kwargs)[0], atol=ATOL, rtol=0
        )

    def test_sequence_first_layout_matches(self) -> None:
        reference, ours = _pair(batch_first=False)
        x = torch.randn(7, 3, 16)  # (T, B, E)
        torch.testing.assert_close(ours(x, x, x)[0], reference(x, x, x)[0], atol=ATOL, rtol=0)

    def test_need_weights_false_returns_none(self) -> None:
        _, ours = _pair()
        x = torch.randn(2, 3, 16)
        assert ours(x, x, x, need_weights=False)[1] is None

    def test_gradients_match(self) -> None:
        reference, ours = _pair(kdim=6, vdim=10)
        padding = torch.tensor([[False] * 9, [False] * 6 + [True] * 3])
        inputs = [torch.randn(2, 5, 16), torch.randn(2, 9, 6), torch.randn(2, 9, 10)]
        grads = []
        for module in (reference, ours):
            leaves = [t.clone().requires_grad_() for t in inputs]
            out, weights = module(*leaves, key_padding_mask=padding)
            (out.square().sum() + weights.sum()).backward()
            grads.append(
                [t.grad for t in leaves] + [p.grad for _, p in sorted(module.named_parameters())]
            )
        for expected, actual in zip(*grads, strict=True):
            torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)

    def test_self_attention_is_permutation_equivariant(self) -> None:
        _, ours = _pair()
        x = torch.randn(2, 7, 16)
        perm = torch.randperm(7)
        out, weights = ours(x, x, x)
        out_perm, weights_perm = ours(x[:, perm], x[:, perm], x[:, perm])
        torch.testing.assert_close(out_perm, out[:, perm], atol=ATOL, rtol=0)
        torch.testing.assert_close(weights_perm, weights[:, perm][:, :, perm], atol=ATOL, rtol=0)

    def test_float_masks_are_added_to_the_scores_as_torch_does(self) -> None:
        # The mask every PyTorch tutorial builds: 0 on and below the diagonal, -inf above.
        reference, ours = _pair()
        x = torch.randn(2, 6, 16)
        float_causal = nn.Transformer.generate_square_subsequent_mask(6)
        expected = reference(x, x, x, attn_mask=float_causal)
        actual = ours(x, x, x, attn_mask=float_causal)
        torch.testing.assert_close(actual[0], expected[0], atol=ATOL, rtol=0)
        torch.testing.assert_close(actual[1], expected[1], atol=ATOL, rtol=0)
        torch.testing.assert_close(actual[0], ours(x, x, x, is_causal=True)[0], atol=ATOL, rtol=0)

    def test_integer_masks_are_refused_with_a_clear_error(self) -> None:
        _, ours = _pair()
        x = torch.randn(1, 3, 16)
        with pytest.raises(TypeError, match=r"key_padding_mask has dtype torch\.int64"):
            ours(x, x, x, key_padding_mask=torch.zeros(1, 3, dtype=torch.long))

    def test_heads_must_divide_the_width(self) -> None:
        with pytest.raises(ValueError, match="d_model=10 is not divisible by n_heads=4"):
            MultiHeadAttention(10, 4)


@pytest.mark.parametrize("kernel", ["fused", "flash"])
class TestFastKernels:
    """The named fast paths compute what the explicit path computes."""

    def _pair(self, kernel: str) -> tuple[MultiHeadAttention, MultiHeadAttention]:
        torch.manual_seed(0)
        explicit = MultiHeadAttention(16, 4, batch_first=True)
        fast = MultiHeadAttention(16, 4, batch_first=True, kernel=kernel)
        fast.load_state_dict(explicit.state_dict())
        return explicit, fast

    @pytest.mark.parametrize("padded", [True, False])
    @pytest.mark.parametrize("causal", ["mask", "is_causal"])
    def test_outputs_and_gradients_match_with_padding_and_causal_masks(
        self, kernel: str, causal: str, padded: bool
    ) -> None:
        explicit, fast = self._pair(kernel)
        padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2]) if padded else None
        masks = {"attn_mask": ~causal_mask(6)} if causal == "mask" else {"is_causal": True}
        x = torch.randn(2, 6, 16)
        results = []
        for module in (explicit, fast):
            leaf = x.clone().requires_grad_()
            out, _ = module(leaf, leaf, leaf, key_padding_mask=padding, need_weights=False, **masks)
            out.square().sum().backward()
            results.append([out, leaf.grad, module.in_proj_weight.grad])
        for expected, actual in zip(*results, strict=True):
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)

    def test_is_causal_alone_reaches_the_kernel_as_a_flag(
        self, kernel: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Without another mask, the kernel gets is_causal and no (T, T) mask to read.
        _, fast = self._pair(kernel)
        name = "scaled_dot_product_attention" if kernel == "fused" else "flash_attention"
        target = attention_module.F if kernel == "fused" else attention_module
        seen = []
        real = getattr(target, name)

        def spy(*args: object, **kwargs: object) -> Tensor:
            seen.append(kwargs)
            return real(*args, **kwargs)

        monkeypatch.setattr(target, name, spy)
        x = torch.randn(2, 6, 16)
        fast(x, x, x, need_weights=False, is_causal=True)
        flag = "is_causal" if kernel == "fused" else "causal"
        mask = seen[0]["attn_mask"] if kernel == "fused" else None
        assert seen[0][flag] is True and mask is None
        # With a padding mask beside it, PyTorch's kernel cannot take the flag: it gets the mask.
        seen.clear()
        fast(
            x,
            x,
            x,
            key_padding_mask=torch.zeros(2, 6, dtype=torch.bool),
            need_weights=False,
            is_causal=True,
        )
        if kernel == "fused":
            assert seen[0]["is_causal"] is False and seen[0]["attn_mask"] is not None

    def test_weights_when_asked_come_from_the_explicit_path(self, kernel: str) -> None:
        explicit, fast = self._pair(kernel)
        x = torch.randn(2, 5, 16)
        torch.testing.assert_close(fast(x, x, x)[1], explicit(x, x, x)[1])
        torch.testing.assert_close(
            fast(x, x, x, is_causal=True)[1], explicit(x, x, x, is_causal=True)[1]
        )


class TestBuildAttention:
    def test_kinds_have_equal_parameter_counts(self) -> None:
        kinds = ATTENTION_KINDS if triton_flash.available() is None else PORTABLE_KINDS
        modules = {
            kind: build_attention(kind, d_model=32, n_heads=4, dropout=0.1) for kind in kinds
        }
        for kind, kernel in [
            ("scratch", "explicit"),
            ("scratch_fused", "fused"),
            ("scratch_flash", "flash"),
            ("scratch_triton", "triton"),
        ]:
            if kind not in modules:  # no triton installed here (macOS)
                continue
            assert isinstance(modules[kind], MultiHeadAttention)
            assert modules[kind].kernel == kernel and modules[kind].batch_first
        assert isinstance(modules["torch"], nn.MultiheadAttention) and modules["torch"].batch_first
        counts = {kind: sum(p.numel() for p in m.parameters()) for kind, m in modules.items()}
        assert set(counts.values()) == {4 * 32 * 32 + 4 * 32}

    def test_unknown_kind_names_the_choices(self) -> None:
        choices = "scratch, scratch_fused, scratch_flash, scratch_triton, torch"
        with pytest.raises(ValueError, match=rf"attention='flash' .* {choices}"):
            build_attention("flash", d_model=8, n_heads=2)

    def test_unknown_kernel_and_bad_block_sizes_name_the_argument(self) -> None:
        with pytest.raises(ValueError, match="kernel='cuda' is not known"):
            MultiHeadAttention(8, 2, kernel="cuda")
        with pytest.raises(ValueError, match="block_q=0 must be a positive integer"):
            MultiHeadAttention(8, 2, kernel="flash", block_q=0)
