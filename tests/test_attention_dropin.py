"""``MultiHeadAttention`` as a drop-in for ``torch.nn.MultiheadAttention``, case by case.

The cases follow PyTorch's own tests of ``nn.MultiheadAttention``
(test/nn/test_multihead_attention.py: add_bias_kv / add_zero_attn with key padding and kdim/vdim,
3-D attention masks, invalid shapes, dtypes, the eval fast path with two masks); the code is
ours. Every comparison builds torch's module and ours with the same arguments, gives one of them
random parameters (biases included) and loads its state_dict into the other, then asks both the
same question on every kernel.

Documented differences, tested as such: ``is_causal=True`` without ``attn_mask`` builds the causal
mask here (torch refuses); query rows with every key masked give zeros here (torch: NaN with
weights and in the eval fast path, pinned below so that a torch upgrade that changes it shows up);
float masks must have the query's dtype.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from attention_lab.nn import triton_flash
from attention_lab.nn.attention import MultiHeadAttention

# "triton" runs in Triton's CPU interpreter without CUDA (tests/conftest.py).
KERNELS = ("explicit", "fused", "flash", "triton")
E, H = 16, 4  # model width, heads
B, T, S = 3, 5, 7  # batch, query length, key length (cross-attention)
KDIM, VDIM = 6, 10
# The flash kernel's default blocks (256) would hold these short sequences in one block; small
# ones make it walk several query and key blocks (running softmax, causal block skipping).
FLASH_BLOCKS = {"block_q": 2, "block_k": 3}

# (atol, rtol) per dtype of parameters and inputs.
TOL = {
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.bfloat16: {"atol": 8e-2, "rtol": 5e-2},  # seen: 5.1e-2 (outputs of a few units)
    torch.float16: {"atol": 1e-2, "rtol": 1e-2},  # seen: 7.8e-3
}
GRAD_TOL = {"atol": 1e-4, "rtol": 1e-4}
MISMATCHED_MASKS = "Support for mismatched key_padding_mask and attn_mask is deprecated"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread is faster, and kind to a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# helpers


def make_pair(
    *args,
    kernel: str = "explicit",
    source: str = "torch",
    seed: int = 0,
    **kwargs,
) -> tuple[nn.MultiheadAttention, MultiHeadAttention]:
    """torch's module and ours, built with the same arguments; ``source`` gets random parameters
    (biases and bias_k/v included, so that none is trivially zero) and the other loads its
    state_dict, strictly."""
    reference = nn.MultiheadAttention(*args, **kwargs)
    blocks = FLASH_BLOCKS if kernel == "flash" else {}
    ours = MultiHeadAttention(*args, **kwargs, kernel=kernel, **blocks)
    src, dst = (reference, ours) if source == "torch" else (ours, reference)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(src.named_parameters()):
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float64)
            param.copy_(0.4 * noise)
    result = dst.load_state_dict(src.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return reference, ours


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)


def padding(batch: int, length: int) -> Tensor:
    """(batch, length) bool key_padding_mask, True = ignore: sequence b loses its last b keys."""
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        if b:
            mask[b, length - b :] = True
    return mask


def blocked(*shape: int, seed: int = 0) -> Tensor:
    """Random bool attn_mask, True = ignore, with key 0 always allowed (no fully masked row)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(*shape, generator=gen) > 0.6
    mask[..., 0] = False
    return mask


def additive(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The float form of a bool mask (True = ignore): -inf where ignored, 0 elsewhere; plus a
    small finite bias elsewhere, so that float masks are checked as added, not just as -inf."""
    bias = torch.linspace(-0.5, 0.5, mask.numel(), dtype=torch.float64).view(mask.shape)
    return bias.masked_fill(mask, -math.inf).to(dtype)


def bool_causal(length: int) -> Tensor:
    """(length, length) torch-convention causal mask: True above the diagonal (ignore)."""
    return torch.ones(length, length, dtype=torch.bool).triu(1)


def assert_match(actual: tuple, expected: tuple, dtype: torch.dtype = torch.float32) -> None:
    out, weights = actual
    out_ref, weights_ref = expected
    torch.testing.assert_close(out, out_ref, **TOL[dtype])
    if weights_ref is None:
        assert weights is None
    else:
        torch.testing.assert_close(weights, weights_ref, **TOL[dtype])


def no_warnings(fn: Callable, *args, **kwargs):
    """Call ``fn``, failing on any warning it raises (ours must not warn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def both(reference, ours, *inputs, torch_warns: str | None = None, **kwargs) -> tuple:
    """(ours(...), torch(...)) on the same inputs; torch's deprecation warning is expected and
    caught where ``torch_warns`` says, ours must not warn."""
    if torch_warns:
        with pytest.warns(UserWarning, match=torch_warns):
            expected = reference(*inputs, **kwargs)
    else:
        expected = reference(*inputs, **kwargs)
    actual = no_warnings(ours, *inputs, **kwargs)
    return actual, expected


def seq_first(x: Tensor) -> Tensor:
    return x.transpose(0, 1).contiguous()


COMBOS = [
    pytest.param(
        bias,
        bias_kv,
        zero_attn,
        dims,
        id=f"bias{int(bias)}-kv{int(bias_kv)}-zero{int(zero_attn)}-{'kvdim' if dims else 'same'}",
    )
    for bias, bias_kv, zero_attn, dims in itertools.product(
        (True, False), (False, True), (False, True), (None, (KDIM, VDIM))
    )
]


def combo_kwargs(bias: bool, bias_kv: bool, zero_attn: bool, dims) -> dict:
    kwargs = {"bias": bias, "add_bias_kv": bias_kv, "add_zero_attn": zero_attn}
    if dims:
        kwargs.update(kdim=dims[0], vdim=dims[1])
    return kwargs


# ---------------------------------------------------------------------------------------------
# constructor, parameters, state_dict


class TestConstructor:
    def test_positional_arguments_bind_like_torch(self) -> None:
        args = (32, 4, 0.0, True, False, False, 24, 40)
        reference, ours = nn.MultiheadAttention(*args), MultiHeadAttention(*args)
        for module in (reference, ours):
            assert (module.kdim, module.vdim, module.embed_dim) == (24, 40, 32)
            assert module.in_proj_weight is None
            assert module.k_proj_weight.shape == (32, 24)
            assert module.v_proj_weight.shape == (32, 40)
        more = (*args, True, "cpu", torch.float64)  # batch_first, device, dtype
        reference, ours = nn.MultiheadAttention(*more), MultiHeadAttention(*more)
        for module in (reference, ours):
            assert module.batch_first is True
            assert all(p.dtype == torch.float64 for p in module.parameters())
        positional = (16, 4, 0.1, False, True, True, None, None, False, None, None)
        reference, ours = nn.MultiheadAttention(*positional), MultiHeadAttention(*positional)
        for module in (reference, ours):
            assert module.dropout == 0.1
            assert module.in_proj_bias is None and module.out_proj.bias is None
            assert module.bias_k.shape == (1, 1, 16) and module.add_zero_attn

    def test_kernel_and_block_sizes_are_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            MultiHeadAttention(
                16, 4, 0.0, True, False, False, None, None, False, None, None, "flash"
            )
        module = MultiHeadAttention(16, 4, kernel="flash", block_q=2, block_k=3)
        assert (module.kernel, module.block_q, module.block_k) == ("flash", 2, 3)

    @pytest.mark.parametrize("bias, bias_kv, zero_attn, dims", COMBOS)
    def test_same_seed_gives_identical_parameters(self, bias, bias_kv, zero_attn, dims) -> None:
        kwargs = combo_kwargs(bias, bias_kv, zero_attn, dims)
        torch.manual_seed(123)
        reference = nn.MultiheadAttention(E, H, **kwargs)
        torch.manual_seed(123)
        ours = MultiHeadAttention(E, H, **kwargs)
        expected, actual = dict(reference.named_parameters()), dict(ours.named_parameters())
        assert list(actual) == list(expected)
        for name, param in expected.items():
            assert torch.equal(actual[name], param), name
        # Both draw as many numbers: what follows the construction draws alike too.
        after_ours = torch.rand(4)
        torch.manual_seed(123)
        nn.MultiheadAttention(E, H, **kwargs)
        assert torch.equal(after_ours, torch.rand(4))

    @pytest.mark.parametrize("bias, bias_kv, zero_attn, dims", COMBOS)
    @pytest.mark.parametrize("source", ["torch", "ours"], ids=["ours<-torch", "torch<-ours"])
    @pytest.mark.parametrize("kernel", KERNELS)
    def test_state_dict_loads_strictly_both_ways_and_outputs_match(
        self, kernel, source, bias, bias_kv, zero_attn, dims
    ) -> None:
        kwargs = combo_kwargs(bias, bias_kv, zero_attn, dims)
        reference, ours = make_pair(E, H, kernel=kernel, source=source, **kwargs)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in reference.state_dict().items()
        }
        assert list(ours.state_dict()) == list(reference.state_dict())
        query = randn(T, B, E, seed=1)
        key = randn(S, B, dims[0] if dims else E, seed=2)
        value = randn(S, B, dims[1] if dims else E, seed=3)
        for need_weights in (True, False):
            assert_match(*both(reference, ours, query, key, value, need_weights=need_weights))


# ---------------------------------------------------------------------------------------------
# add_bias_kv, add_zero_attn


EXTRAS = [
    pytest.param(True, False, id="bias_kv"),
    pytest.param(False, True, id="zero_attn"),
    pytest.param(True, True, id="bias_kv+zero_attn"),
]


def _extras_masks(case: str) -> dict:
    if case == "none":
        return {}
    if case == "padding":
        return {"key_padding_mask": padding(B, S)}
    if case == "attn_2d":
        return {"attn_mask": blocked(T, S, seed=4)}
    if case == "float_attn_3d":
        return {"attn_mask": additive(blocked(B * H, T, S, seed=5))}
    if case == "padding+attn_3d":
        return {"key_padding_mask": padding(B, S), "attn_mask": blocked(B * H, T, S, seed=6)}
    if case == "fully_padded":  # every source key of sequence 1 masked: only the extra keys left
        mask = padding(B, S)
        mask[1] = True
        return {"key_padding_mask": mask, "attn_mask": blocked(T, S, seed=7)}
    raise AssertionError(case)


@pytest.mark.parametrize("kernel", KERNELS)
class TestBiasKvAndZeroAttn:
    @pytest.mark.parametrize("dims", [None, (KDIM, VDIM)], ids=["same", "kvdim"])
    @pytest.mark.parametrize(
        "masks",
        ["none", "padding", "attn_2d", "float_attn_3d", "padding+attn_3d", "fully_padded"],
    )
    @pytest.mark.parametrize("bias_kv, zero_attn", EXTRAS)
    def test_outputs_and_weights_match(self, kernel, bias_kv, zero_attn, masks, dims) -> None:
        kwargs = combo_kwargs(True, bias_kv, zero_attn, dims)
        reference, ours = make_pair(E, H, kernel=kernel, batch_first=True, **kwargs)
        query = randn(B, T, E, seed=1)
        key = randn(B, S, dims[0] if dims else E, seed=2)
        value = randn(B, S, dims[1] if dims else E, seed=3) if dims else key  # key is value
        mask_kwargs = _extras_masks(masks)
        extra = int(bias_kv) + int(zero_attn)
        for need_weights, average in ((True, True), (True, False), (False, True)):
            actual, expected = both(
                reference,
                ours,
                query,
                key,
                value,
                need_weights=need_weights,
                average_attn_weights=average,
                **mask_kwargs,
            )
            assert_match(actual, expected)
            assert torch.isfinite(actual[0]).all()
            if need_weights:
                assert actual[1].shape[-1] == S + extra

    def test_self_attention_with_causal_mask_and_padding(self, kernel) -> None:
        reference, ours = make_pair(E, H, kernel=kernel, add_bias_kv=True, add_zero_attn=True)
        x = randn(T, B, E, seed=1)
        kwargs = {"key_padding_mask": padding(B, T), "attn_mask": bool_causal(T), "is_causal": True}
        for need_weights in (True, False):
            assert_match(*both(reference, ours, x, x, x, need_weights=need_weights, **kwargs))

    @pytest.mark.parametrize("bias_kv, zero_attn", EXTRAS)
    def test_is_causal_hint_with_bias_kv_or_zero_attn_honours_the_mask(
        self, kernel, bias_kv, zero_attn
    ) -> None:
        """is_causal=True with a causal attn_mask, no key_padding_mask, need_weights=False.

        torch (2.14) then drops the attn_mask and calls scaled_dot_product_attention with
        is_causal=True on the keys *after* bias_k / the zero key were appended, so those extra
        keys (columns S, S+1) fall right of the diagonal and no query of a T <= S sequence sees
        them; with need_weights=True, or without the hint, torch pads the attn_mask with visible
        columns instead. Ours does the latter on every path (a documented difference, listed in
        the README): the appended keys stay visible, whatever need_weights says.
        """
        reference, ours = make_pair(
            E, H, kernel=kernel, add_bias_kv=bias_kv, add_zero_attn=zero_attn
        )
        x = randn(T, B, E, seed=1)
        kwargs = {"attn_mask": bool_causal(T), "is_causal": True, "need_weights": False}
        honoured = reference(x, x, x, attn_mask=bool_causal(T), need_weights=False)[0]
        actual, expected = both(reference, ours, x, x, x, **kwargs)
        # torch's own two answers differ (pinned, so that a torch fix shows up) ...
        assert (expected[0] - honoured).abs().max() > 1.0, "torch changed: update this test"
        # ... and ours is the one that honours the mask.
        torch.testing.assert_close(actual[0], honoured, **TOL[torch.float32])


# ---------------------------------------------------------------------------------------------
# float masks, combined masks, is_causal


def _mask_case(case: str) -> tuple[dict, str | None, bool]:
    """(forward kwargs, torch's expected warning or None, self-attention?)"""
    pad = padding(B, S)
    attn2, attn3 = blocked(T, S, seed=8), blocked(B * H, T, S, seed=9)
    if case == "float_causal_2d":  # the mask every PyTorch tutorial builds
        return {"attn_mask": nn.Transformer.generate_square_subsequent_mask(T)}, None, True
    if case == "float_attn_2d":
        return {"attn_mask": additive(attn2)}, None, False
    if case == "float_attn_3d":
        return {"attn_mask": additive(attn3)}, None, False
    if case == "float_padding":
        return {"key_padding_mask": additive(pad)}, None, False
    if case == "float_padding+float_attn":
        return {"key_padding_mask": additive(pad), "attn_mask": additive(attn3)}, None, False
    if case == "bool_padding+float_attn":
        return ({"key_padding_mask": pad, "attn_mask": additive(attn2)}, MISMATCHED_MASKS, False)
    if case == "float_padding+bool_attn":
        return ({"key_padding_mask": additive(pad), "attn_mask": attn3}, MISMATCHED_MASKS, False)
    if case == "bool_padding+bool_attn_2d":
        return {"key_padding_mask": pad, "attn_mask": attn2}, None, False
    if case == "bool_padding+bool_attn_3d":
        return {"key_padding_mask": pad, "attn_mask": attn3}, None, False
    if case == "is_causal+bool_causal":
        return {"attn_mask": bool_causal(T), "is_causal": True}, None, True
    if case == "is_causal+float_causal":
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        return {"attn_mask": mask, "is_causal": True}, None, True
    if case == "is_causal+bool_causal+padding":
        kwargs = {"attn_mask": bool_causal(T), "is_causal": True, "key_padding_mask": padding(B, T)}
        return kwargs, None, True
    raise AssertionError(case)


MASK_CASES = [
    "float_causal_2d",
    "float_attn_2d",
    "float_attn_3d",
    "float_padding",
    "float_padding+float_attn",
    "bool_padding+float_attn",
    "float_padding+bool_attn",
    "bool_padding+bool_attn_2d",
    "bool_padding+bool_attn_3d",
    "is_causal+bool_causal",
    "is_causal+float_causal",
    "is_causal+bool_causal+padding",
]


@pytest.mark.parametrize("kernel", KERNELS)
class TestMasks:
    @pytest.mark.parametrize("need_weights", [True, False])
    @pytest.mark.parametrize("case", MASK_CASES)
    def test_outputs_and_weights_match(self, kernel, case, need_weights) -> None:
        kwargs, torch_warns, self_attention = _mask_case(case)
        reference, ours = make_pair(E, H, kernel=kernel, batch_first=True)
        query = randn(B, T, E, seed=1)
        if self_attention:
            key = value = query
        else:
            key, value = randn(B, S, E, seed=2), randn(B, S, E, seed=3)
        actual, expected = both(
            reference,
            ours,
            query,
            key,
            value,
            torch_warns=torch_warns,
            need_weights=need_weights,
            average_attn_weights=False,
            **kwargs,
        )
        assert_match(actual, expected)

    @pytest.mark.parametrize("need_weights", [True, False])
    def test_is_causal_alone_builds_the_mask_torch_insists_on(self, kernel, need_weights) -> None:
        reference, ours = make_pair(E, H, kernel=kernel, batch_first=True)
        x = randn(B, T, E, seed=1)
        with pytest.raises(RuntimeError, match="attn_mask"):  # documented difference
            reference(x, x, x, is_causal=True, need_weights=need_weights)
        expected = reference(x, x, x, attn_mask=bool_causal(T), need_weights=need_weights)
        assert_match(ours(x, x, x, is_causal=True, need_weights=need_weights), expected)
        expected = reference(
            x,
            x,
            x,
            key_padding_mask=padding(B, T),
            attn_mask=bool_causal(T),
            need_weights=need_weights,
        )
        actual = ours(
            x, x, x, key_padding_mask=padding(B, T), is_causal=True, need_weights=need_weights
        )
        assert_match(actual, expected)


# ---------------------------------------------------------------------------------------------
# layouts: batch-first, sequence-first, unbatched


LAYOUTS = ["batch_first", "seq_first", "unbatched/batch_first", "unbatched/seq_first"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("masks", [False, True], ids=["no_mask", "padding+3d_attn"])
@pytest.mark.parametrize(
    "need_weights, average",
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["weights-avg", "weights-per_head", "no_weights-avg", "no_weights-per_head"],
)
def test_layouts_match(kernel, layout, masks, need_weights, average) -> None:
    batch_first = layout.endswith("batch_first")
    unbatched = layout.startswith("unbatched")
    reference, ours = make_pair(E, H, kernel=kernel, batch_first=batch_first)
    batch = 1 if unbatched else B
    query, memory = randn(batch, T, E, seed=1), randn(batch, S, E, seed=2)
    pad, attn = padding(B, S)[2:3] if unbatched else padding(B, S), blocked(batch * H, T, S)
    if unbatched:
        query, memory, pad = query[0], memory[0], pad[0]  # (T, E), (S, E), (S,)
        assert attn.shape == (H, T, S)
    elif not batch_first:
        query, memory = seq_first(query), seq_first(memory)
    kwargs = {"key_padding_mask": pad, "attn_mask": attn} if masks else {}
    actual, expected = both(
        reference,
        ours,
        query,
        memory,
        memory,
        need_weights=need_weights,
        average_attn_weights=average,
        **kwargs,
    )
    assert_match(actual, expected)
    assert actual[0].shape == query.shape
    if need_weights:
        heads = () if average else (H,)
        lead = () if unbatched else (B,)
        assert actual[1].shape == (*lead, *heads, T, S)
    else:
        assert actual[1] is None


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_eval_with_dropout_matches_torch_eval_fast_and_slow_path(
    kernel, batch_first, need_weights
) -> None:
    # torch takes its fast path here (eval, no grad, batch-first self-attention, bool padding)
    # when batch_first, the slow path otherwise; dropout must be off in both and in ours.
    reference, ours = make_pair(E, H, 0.5, kernel=kernel, batch_first=batch_first)
    reference.eval(), ours.eval()
    x = randn(B, T, E, seed=1)
    x = x if batch_first else seq_first(x)
    with torch.no_grad():
        actual, expected = both(
            reference, ours, x, x, x, key_padding_mask=padding(B, T), need_weights=need_weights
        )
    assert_match(actual, expected)


# ---------------------------------------------------------------------------------------------
# dtypes


DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("config", ["self+float_causal+padding", "cross+kv_extras+kvdim"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_dtypes_match(kernel, dtype, config, need_weights) -> None:
    if kernel == "triton" and not need_weights:  # with weights, the explicit path runs
        if dtype == torch.float64:
            pytest.skip("scratch_triton computes in fp32, fp16 or bf16 (fp64 is refused)")
        if dtype == torch.bfloat16 and triton_flash.interpreted():
            pytest.skip("Triton's CPU interpreter multiplies bf16 blocks wrongly (GPU: test_gpu)")
    source = "ours" if dtype in (torch.float32, torch.float16) else "torch"
    if config.startswith("self"):
        reference, ours = make_pair(
            E, H, kernel=kernel, source=source, batch_first=True, dtype=dtype
        )
        query = key = value = randn(B, T, E, seed=1, dtype=dtype)
        kwargs = {
            "attn_mask": nn.Transformer.generate_square_subsequent_mask(T, dtype=dtype),
            "key_padding_mask": additive(padding(B, T), dtype),
        }
    else:
        reference, ours = make_pair(
            E,
            H,
            kernel=kernel,
            source=source,
            batch_first=True,
            dtype=dtype,
            add_bias_kv=True,
            add_zero_attn=True,
            kdim=KDIM,
            vdim=VDIM,
        )
        query = randn(B, T, E, seed=1, dtype=dtype)
        key, value = randn(B, S, KDIM, seed=2, dtype=dtype), randn(B, S, VDIM, seed=3, dtype=dtype)
        kwargs = {"key_padding_mask": padding(B, S), "attn_mask": blocked(T, S)}
    assert all(p.dtype == dtype for p in ours.parameters())
    actual, expected = both(reference, ours, query, key, value, need_weights=need_weights, **kwargs)
    assert actual[0].dtype == dtype
    if need_weights:
        assert actual[1].dtype == expected[1].dtype == dtype
    assert_match(actual, expected, dtype)


# ---------------------------------------------------------------------------------------------
# query rows with every key masked


FULL_MASKS = ["bool_padding", "float_padding", "bool_attn", "float_attn"]


def _fully_masked(kind: str, dtype: torch.dtype = torch.float32) -> tuple[dict, Tensor]:
    """Masks under which some (batch, query) rows see no key, and a (B, T) bool of those rows."""
    rows = torch.zeros(B, T, dtype=torch.bool)
    if kind.endswith("padding"):
        mask = padding(B, T)
        mask[1] = True  # every key of sequence 1
        rows[1] = True
        mask = additive(mask, dtype) if kind.startswith("float") else mask
        return {"key_padding_mask": mask}, rows
    mask = torch.zeros(T, T, dtype=torch.bool)
    mask[2] = True  # query 2 of every sequence
    rows[:, 2] = True
    mask = additive(mask, dtype) if kind.startswith("float") else mask
    return {"attn_mask": mask}, rows


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind", FULL_MASKS)
@pytest.mark.parametrize("need_weights", [True, False])
def test_fully_masked_rows_give_out_proj_bias_in_ours(kernel, mode, kind, need_weights) -> None:
    reference, ours = make_pair(E, H, 0.25, kernel=kernel, batch_first=True)
    reference.train(mode == "train"), ours.train(mode == "train")
    kwargs, rows = _fully_masked(kind)
    x = randn(B, T, E, seed=1).requires_grad_()
    out, weights = ours(x, x, x, need_weights=need_weights, **kwargs)
    assert torch.isfinite(out).all()
    bias = ours.out_proj.bias.detach()
    assert torch.equal(out[rows], bias.expand(int(rows.sum()), E))
    if need_weights:
        assert torch.equal(weights[rows], torch.zeros_like(weights[rows]))
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())
    if mode == "eval":  # no dropout: every other row as torch has it
        with torch.no_grad():
            expected, expected_weights = reference(x, x, x, need_weights=need_weights, **kwargs)
        torch.testing.assert_close(out[~rows], expected[~rows], **TOL[torch.float32])
        if need_weights:
            torch.testing.assert_close(
                weights[~rows], expected_weights[~rows], **TOL[torch.float32]
            )


def _torch_fully_masked_expectation(mode: str, grad: bool, kind: str, need_weights: bool) -> str:
    """What nn.MultiheadAttention (torch 2.14, CPU) gives for a fully masked row."""
    if need_weights:
        return "nan"  # softmax of an all -inf row, returned and multiplied
    if mode == "eval" and not grad and kind.startswith("bool"):
        return "nan"  # the fast path (_native_multi_head_attention); float masks skip it
    return "out_proj.bias"  # the slow path's scaled_dot_product_attention gives zeros


TORCH_PINNED = [
    pytest.param(
        mode,
        grad,
        kind,
        need_weights,
        _torch_fully_masked_expectation(mode, grad, kind, need_weights),
        id=f"{mode}-{'grad' if grad else 'no_grad'}-{kind}-"
        f"{'weights' if need_weights else 'no_weights'}-"
        f"{_torch_fully_masked_expectation(mode, grad, kind, need_weights)}",
    )
    for mode, grad, kind, need_weights in itertools.product(
        ("train", "eval"), (True, False), FULL_MASKS, (True, False)
    )
]


@pytest.mark.parametrize("mode, grad, kind, need_weights, expected", TORCH_PINNED)
def test_fully_masked_rows_in_torch_are_pinned(mode, grad, kind, need_weights, expected) -> None:
    reference, _ = make_pair(E, H, batch_first=True)
    reference.train(mode == "train")
    kwargs, rows = _fully_masked(kind)
    x = randn(B, T, E, seed=1)
    with torch.set_grad_enabled(grad):
        out, _ = reference(x, x, x, need_weights=need_weights, **kwargs)
    masked = out[rows]
    if expected == "nan":
        assert masked.isnan().all(), "torch no longer gives NaN here: update the docs and pins"
    else:
        assert torch.equal(masked, reference.out_proj.bias.detach().expand_as(masked)), (
            "torch no longer gives zeros here: update the docs and pins"
        )
    assert torch.isfinite(out[~rows]).all()


# ---------------------------------------------------------------------------------------------
# gradients


GRAD_CONFIGS = [
    "self+bool_masks",
    "cross_kv_same+float_masks",
    "kvdim+extras+padding",
    "self+extras+is_causal",
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("config", GRAD_CONFIGS)
@pytest.mark.parametrize("need_weights", [False, True])
def test_gradients_match(kernel, config, need_weights) -> None:
    if config == "self+bool_masks":
        reference, ours = make_pair(E, H, kernel=kernel, batch_first=True)
        inputs = [randn(B, T, E, seed=1)]
        kwargs = {"key_padding_mask": padding(B, T), "attn_mask": bool_causal(T)}
    elif config == "cross_kv_same+float_masks":
        reference, ours = make_pair(E, H, kernel=kernel)
        inputs = [randn(T, B, E, seed=1), randn(S, B, E, seed=2)]
        kwargs = {
            "key_padding_mask": additive(padding(B, S)),
            "attn_mask": additive(blocked(B * H, T, S)),
        }
    elif config == "kvdim+extras+padding":
        reference, ours = make_pair(
            E,
            H,
            kernel=kernel,
            batch_first=True,
            add_bias_kv=True,
            add_zero_attn=True,
            kdim=KDIM,
            vdim=VDIM,
        )
        inputs = [randn(B, T, E, seed=1), randn(B, S, KDIM, seed=2), randn(B, S, VDIM, seed=3)]
        kwargs = {"key_padding_mask": padding(B, S), "attn_mask": blocked(T, S)}
    else:
        # With a key_padding_mask torch keeps the attn_mask under is_causal; without one it
        # does not (see test_is_causal_hint_with_bias_kv_or_zero_attn_matches_torch).
        reference, ours = make_pair(E, H, kernel=kernel, add_bias_kv=True, add_zero_attn=True)
        inputs = [randn(T, B, E, seed=1), randn(T, B, E, seed=2), randn(T, B, E, seed=3)]
        kwargs = {"attn_mask": bool_causal(T), "is_causal": True, "key_padding_mask": padding(B, T)}

    results = []
    for module in (reference, ours):
        module.train()
        leaves = [t.clone().requires_grad_() for t in inputs]
        if len(leaves) == 1:  # self-attention: query is key is value
            args = leaves * 3
        elif len(leaves) == 2:  # key is value
            args = [leaves[0], leaves[1], leaves[1]]
        else:
            args = leaves
        out, weights = module(*args, need_weights=need_weights, **kwargs)
        loss = (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).square().sum()
        if need_weights:
            ramp = torch.linspace(0, 2, weights.numel()).view(weights.shape)
            loss = loss + (weights * ramp).sum()
        loss.backward()
        grads = {f"input{i}": t.grad for i, t in enumerate(leaves)}
        grads.update({name: p.grad for name, p in module.named_parameters()})
        results.append(grads)
    expected, actual = results
    assert list(actual) == list(expected)
    if "extras" in config:
        assert actual["bias_k"] is not None and actual["bias_v"] is not None
    for name, grad in expected.items():
        assert grad is not None and actual[name] is not None, name
        torch.testing.assert_close(
            actual[name], grad, **GRAD_TOL, msg=lambda m, n=name: f"{n}: {m}"
        )


# ---------------------------------------------------------------------------------------------
# bad input


def _bad_inputs(case: str) -> tuple[nn.MultiheadAttention, MultiHeadAttention, Callable]:
    """The two modules and a function that calls one of them with the bad input."""
    dims = {"kdim": KDIM, "vdim": VDIM} if case.startswith("kvdim") else {}
    reference, ours = make_pair(E, H, batch_first=True, **dims)
    q, k = randn(B, T, E, seed=1), randn(B, S, dims.get("kdim", E), seed=2)
    v = randn(B, S, dims.get("vdim", E), seed=3)
    q1, k1, v1 = q[0], k[0], v[0]
    calls = {
        "padding_wrong_length": lambda m: m(q, k, v, key_padding_mask=padding(B, S + 1)),
        "padding_wrong_batch": lambda m: m(q, k, v, key_padding_mask=padding(B + 1, S)),
        "padding_1d_batched": lambda m: m(q, k, v, key_padding_mask=padding(1, S)[0]),
        "padding_2d_unbatched": lambda m: m(q1, k1, v1, key_padding_mask=padding(1, S)),
        "attn_1d": lambda m: m(q, k, v, attn_mask=blocked(S)),
        "attn_2d_wrong": lambda m: m(q, k, v, attn_mask=blocked(T, S + 1)),
        "attn_3d_wrong_heads": lambda m: m(q, k, v, attn_mask=blocked(B * H + 1, T, S)),
        "attn_3d_batch_only": lambda m: m(q, k, v, attn_mask=blocked(B, T, S)),
        "attn_4d": lambda m: m(q, k, v, attn_mask=blocked(B, H, T, S)),
        "attn_3d_unbatched_wrong": lambda m: m(q1, k1, v1, attn_mask=blocked(H + 1, T, S)),
        "int_padding": lambda m: m(q, k, v, key_padding_mask=padding(B, S).long()),
        "int_attn": lambda m: m(q, k, v, attn_mask=blocked(T, S).int()),
        "query_3d_key_2d": lambda m: m(q, k1, v),
        "query_3d_value_2d": lambda m: m(q, k, v1),
        "query_2d_key_3d": lambda m: m(q1, k, v1),
        "query_4d": lambda m: m(q[None], k[None], v[None]),
        "query_width": lambda m: m(q[..., :8], k, v),
        "key_width": lambda m: m(q, k[..., :8], v),
        "value_width": lambda m: m(q, k, v[..., :8]),
        "kvdim_key_width": lambda m: m(q, k[..., :4], v),
        "kvdim_value_width": lambda m: m(q, k, v[..., :4]),
        "key_value_width": lambda m: m(q, k[..., :8], v[..., :8]),
        "key_value_length": lambda m: m(q, k, v[:, :-1]),
        "query_key_batch": lambda m: m(q[:2], k, v),
        "key_value_batch": lambda m: m(q, k, v[:2]),
    }
    return reference, ours, calls[case]


BAD_INPUTS = [
    ("padding_wrong_length", ValueError, r"key_padding_mask has shape \(3, 8\)"),
    ("padding_wrong_batch", ValueError, r"key_padding_mask has shape \(4, 7\)"),
    ("padding_1d_batched", ValueError, r"key_padding_mask has shape \(7,\)"),
    ("padding_2d_unbatched", ValueError, r"key_padding_mask has shape"),
    ("attn_1d", ValueError, r"attn_mask has shape \(7,\)"),
    ("attn_2d_wrong", ValueError, r"attn_mask has shape \(5, 8\)"),
    ("attn_3d_wrong_heads", ValueError, r"attn_mask has shape \(13, 5, 7\); expected \(12, 5, 7\)"),
    ("attn_3d_batch_only", ValueError, r"attn_mask has shape \(3, 5, 7\)"),
    ("attn_4d", ValueError, r"attn_mask has shape \(3, 4, 5, 7\)"),
    ("attn_3d_unbatched_wrong", ValueError, r"attn_mask has shape \(5, 5, 7\)"),
    ("int_padding", TypeError, "key_padding_mask has dtype torch.int64"),
    ("int_attn", TypeError, "attn_mask has dtype torch.int32"),
    ("query_3d_key_2d", ValueError, "query has 3 dims but key 2"),
    ("query_3d_value_2d", ValueError, "query has 3 dims but key 3 and value 2"),
    ("query_2d_key_3d", ValueError, "query has 2 dims but key 3"),
    ("query_4d", ValueError, "query has 4 dims"),
    ("query_width", ValueError, "query has width 8; this module takes 16"),
    ("key_width", ValueError, "key"),
    ("value_width", ValueError, "value"),
    ("kvdim_key_width", ValueError, "key"),
    ("kvdim_value_width", ValueError, "value"),
    ("key_value_width", ValueError, "key"),
    ("key_value_length", ValueError, r"key \(3, 7, 16\) and value \(3, 6, 16\) must agree"),
    ("query_key_batch", ValueError, "query holds 2 sequences but key 3"),
    ("key_value_batch", ValueError, r"key \(3, 7, 16\) and value \(2, 7, 16\) must agree"),
]


@pytest.mark.parametrize("case, error, match", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_where_torch_refuses(case, error, match) -> None:
    reference, ours, call = _bad_inputs(case)
    with pytest.raises((AssertionError, RuntimeError, ValueError, TypeError)):
        call(reference)
    with pytest.raises(error, match=match):
        call(ours)


def test_float_mask_of_another_dtype_is_refused_naming_the_argument() -> None:
    # A documented difference: float masks must have the query's dtype.
    _, ours = make_pair(E, H, batch_first=True)
    x = randn(B, T, E, seed=1)
    with pytest.raises(TypeError, match=r"attn_mask has dtype torch.float64.*torch.float32"):
        ours(x, x, x, attn_mask=additive(blocked(T, T), torch.float64))
    with pytest.raises(TypeError, match=r"key_padding_mask has dtype torch.float16"):
        ours(x, x, x, key_padding_mask=additive(padding(B, T), torch.float16))
