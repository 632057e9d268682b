"""Pretrained checkpoints in our modules give the reference implementations' outputs.

Hugging Face ``transformers`` (a test-only dependency) builds small random BERTs and saves them
as checkpoint directories; torchvision builds small ViTs. Our modules load them through the
code path users take (``attention_lab.pretrained``) and must reproduce outputs, gradients and
attention weights for every attention kind. No network: downloads are never attempted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from attention_lab.attention_maps import AttentionMap, plot_heads
from attention_lab.data.bert_tokenizer import BertTokenizer
from attention_lab.errors import ConfigError, WeightsMismatchError
from attention_lab.models import Bert, VisionTransformer
from attention_lab.nn import ATTENTION_KINDS, Encoder, EncoderSpec, keep_attention_weights
from attention_lab.optim import decay_groups
from attention_lab.pretrained import (
    bert_from_pretrained,
    bert_name_map,
    bert_sentiment_classifier,
    vit_from_pretrained,
    vit_name_map,
)

transformers = pytest.importorskip("transformers")
torchvision_models = pytest.importorskip("torchvision.models")

ATOL = 1e-5
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "film", "was", "great", "dull"]
VOCAB += ["not", "a", "##s", "movie", "!", ".", "it", "is", "fun", "plot"]


def tiny_bert_config(**overrides) -> transformers.BertConfig:
    """Two layers of width 32 with four heads: every part of BERT-base, at a small size."""
    settings = {
        "vocab_size": len(VOCAB),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 24,
    }
    return transformers.BertConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def bert_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A random HF BertModel (eager attention, so it can return its weights) saved as a
    checkpoint directory, with the model itself in eval mode."""
    torch.manual_seed(0)
    reference = transformers.BertModel(tiny_bert_config(attn_implementation="eager")).eval()
    folder = tmp_path_factory.mktemp("bert")
    reference.save_pretrained(folder)
    return folder, reference


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (3, 9) with two padded rows, HF's attention_mask (1 = token), two segments."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, len(VOCAB), (3, 9), generator=generator)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 3:] = 0
    ids[attention_mask == 0] = 0  # [PAD]
    token_types = torch.zeros_like(ids)
    token_types[:, 4:] = 1
    return ids, attention_mask, token_types


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_bert_outputs_equal_transformers(bert_checkpoint, kind: str) -> None:
    folder, reference = bert_checkpoint
    ids, attention_mask, token_types = padded_batch()
    ours = bert_from_pretrained(str(folder), attention=kind).eval()
    with torch.no_grad():
        expected = reference(
            input_ids=ids, attention_mask=attention_mask, token_type_ids=token_types
        )
        got = ours(ids, attention_mask == 0, token_types)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.pooled, expected.pooler_output, atol=ATOL, rtol=0)
    assert ours.encoder.blocks[0].norm1.eps == 1e-12
    assert ours.embedding_norm.eps == 1e-12


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_bert_gradients_equal_transformers(tmp_path: Path, kind: str) -> None:
    """One backward pass of the same loss: every parameter's gradient equals its source's."""
    torch.manual_seed(0)
    config = tiny_bert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    reference = transformers.BertModel(config).train()
    reference.save_pretrained(tmp_path)
    ours = bert_from_pretrained(str(tmp_path), attention=kind).train()
    ids, attention_mask, token_types = padded_batch()
    weights = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(2))

    def loss(hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return (hidden * weights).sum() + pooled.square().sum()

    loss(*reference(ids, attention_mask=attention_mask, token_type_ids=token_types)[:2]).backward()
    loss(*ours(ids, attention_mask == 0, token_types)).backward()
    their_grads = {name: p.grad for name, p in reference.named_parameters()}
    for name, param in ours.named_parameters():
        source = bert_name_map(2)[name]
        expected = torch.cat([their_grads[n] for n in source.names])
        torch.testing.assert_close(param.grad, expected, atol=ATOL, rtol=1e-5, msg=name)


def test_bert_with_tanh_gelu_equals_transformers(tmp_path: Path) -> None:
    """hidden_act=gelu_new (GPT-2's tanh approximation) maps onto our ``gelu_tanh``."""
    torch.manual_seed(0)
    reference = transformers.BertModel(tiny_bert_config(hidden_act="gelu_new")).eval()
    reference.save_pretrained(tmp_path)
    ours = bert_from_pretrained(str(tmp_path)).eval()
    ids, attention_mask, token_types = padded_batch()
    with torch.no_grad():
        expected = reference(ids, attention_mask=attention_mask, token_type_ids=token_types)
        got = ours(ids, attention_mask == 0, token_types)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=ATOL, rtol=0)


def test_bert_pretraining_checkpoint_with_old_names(tmp_path: Path) -> None:
    """A BertForPreTraining .bin (``bert.`` prefix, LayerNorm gamma/beta, the MLM and NSP heads)
    loads: the heads are dropped on purpose, the names normalised."""
    torch.manual_seed(0)
    pretraining = transformers.BertForPreTraining(tiny_bert_config()).eval()
    state = {
        name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): t
        for name, t in pretraining.state_dict().items()
    }
    assert any(name.startswith("cls.") for name in state)
    torch.save(state, tmp_path / "pytorch_model.bin")
    pretraining.config.to_json_file(tmp_path / "config.json")
    ours = bert_from_pretrained(str(tmp_path)).eval()
    ids, attention_mask, token_types = padded_batch()
    with torch.no_grad():
        expected = pretraining.bert(ids, attention_mask=attention_mask, token_type_ids=token_types)
        got = ours(ids, attention_mask == 0, token_types)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=ATOL, rtol=0)


def test_bert_mismatch_is_one_error_listing_names(tmp_path: Path, bert_checkpoint) -> None:
    from safetensors.torch import load_file, save_file

    folder, _ = bert_checkpoint
    state = load_file(folder / "model.safetensors")
    del state["encoder.layer.1.output.dense.bias"]
    state["encoder.layer.0.extra.weight"] = torch.zeros(2)
    state["pooler.dense.weight"] = torch.zeros(3, 3)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(WeightsMismatchError) as error:
        bert_from_pretrained(str(tmp_path))
    message = str(error.value)
    for name in ("encoder.layer.1.output.dense.bias", "encoder.layer.0.extra.weight"):
        assert name in message
    assert "pooler.weight (32, 32) <- pooler.dense.weight (3, 3)" in message


def test_offline_hub_id_names_the_setting(monkeypatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match=r"model\.pretrained=bert-base-uncased"):
        bert_from_pretrained("bert-base-uncased")


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_bert_attention_maps_equal_output_attentions(bert_checkpoint, kind: str) -> None:
    """keep_attention_weights gives what the course reads from ``output_attentions``."""
    folder, reference = bert_checkpoint
    ids, attention_mask, token_types = padded_batch()
    ours = bert_from_pretrained(str(folder), attention=kind).eval()
    with torch.no_grad():
        expected = reference(
            ids, attention_mask=attention_mask, token_type_ids=token_types, output_attentions=True
        ).attentions
        with keep_attention_weights(ours) as blocks:
            ours(ids, attention_mask == 0, token_types)
            layers = [block.attention_weights for block in blocks]
    assert len(layers) == len(expected) == 2
    for got, want in zip(layers, expected, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    labels = [[VOCAB[i] for i in row] for row in ids.tolist()]
    figure = plot_heads(
        AttentionMap("layer1", layers[-1], labels, labels).weights[0],
        labels[0],
        labels[0],
        "last layer",
    )
    assert len(figure.axes) >= 4  # one heat map per head


def test_tokenizer_from_vocab_and_tokenizer_json_match_transformers(tmp_path: Path) -> None:
    """Both files give the ids transformers' BertTokenizerFast gives, specials as the vocab has
    them (here [PAD] is 0 but [CLS] 2, not our own tokenizer's fixed ids)."""
    vocab_dir, json_dir = tmp_path / "vocab", tmp_path / "json"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    reference = transformers.BertTokenizerFast(str(vocab_dir / "vocab.txt"), do_lower_case=True)
    reference.save_pretrained(json_dir)
    assert (json_dir / "tokenizer.json").exists()
    texts = ["The film was great!", "It is not a fun movie.", "Plots dull"]
    expected = reference(texts, padding=True, return_tensors="pt")
    for folder in (vocab_dir, json_dir):
        tokenizer = BertTokenizer.from_pretrained(str(folder))
        assert (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id) == (0, 2, 3)
        ids, padding = tokenizer.encode(texts)
        assert torch.equal(ids, expected["input_ids"])
        assert torch.equal(padding, expected["attention_mask"] == 0)
        assert tokenizer.tokens(ids[0].tolist()) == reference.convert_ids_to_tokens(ids[0])
        short, _ = tokenizer.encode(texts, max_len=4)
        assert short.shape == (3, 4) and short[:, 0].eq(2).all() and short[:, -1].eq(3).all()


def test_sentiment_classifier_is_the_course_model(bert_checkpoint) -> None:
    """A linear layer on tanh of the last [CLS] state (not the pooler); frozen body by default,
    and unfrozen with a lower learning rate for the body."""
    folder, reference = bert_checkpoint
    ids, attention_mask, _ = padded_batch()
    model = bert_sentiment_classifier(str(folder), num_classes=2).eval()
    assert model.body.pooler is None
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        "head.weight",
        "head.bias",
    ]
    with torch.no_grad():
        cls_state = reference(ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        torch.testing.assert_close(model(ids), model.head(torch.tanh(cls_state)), atol=ATOL, rtol=0)
    unfrozen = bert_sentiment_classifier(str(folder), freeze_body=False, body_lr_scale=0.1)
    groups = decay_groups(unfrozen, 0.01, lr=1e-3)
    head = {id(p) for p in unfrozen.head.parameters()}
    body_lrs = [g.get("lr", 1e-3) for g in groups if any(id(p) not in head for p in g["params"])]
    assert body_lrs == pytest.approx([1e-4, 1e-4])  # matrices and vectors
    head_lrs = [g.get("lr", 1e-3) for g in groups if any(id(p) in head for p in g["params"])]
    assert head_lrs == [1e-3, 1e-3]
    assert sum(len(g["params"]) for g in groups) == len(list(unfrozen.parameters()))


def test_sentiment_model_builds_from_a_model_config(bert_checkpoint) -> None:
    """What ``experiment=sst2_bert`` will compose: ``model.pretrained`` is a plain setting."""
    from omegaconf import OmegaConf

    from attention_lab.run.training import build_model

    folder, _ = bert_checkpoint
    model_cfg = {
        "_target_": "attention_lab.pretrained.bert_sentiment_classifier",
        "pretrained": str(folder),
        "attention": "scratch_fused",
        "num_classes": 2,
        "freeze_body": False,
        "body_lr_scale": 0.1,
        "compile": False,
    }
    net = build_model(OmegaConf.create({"model": model_cfg}))
    assert net.lr_scales == {"body": 0.1} and net(padded_batch()[0]).shape == (3, 2)
    model_cfg["pretrained"] = str(folder / "missing")
    with pytest.raises(ConfigError, match=r"model\.pretrained"):
        build_model(OmegaConf.create({"model": model_cfg}))


def torchvision_vit(**sizes) -> nn.Module:
    """A torchvision ViT with a random (not zero) head, so that logits differ between images."""
    torch.manual_seed(0)
    model = torchvision_models.VisionTransformer(**sizes)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


SMALL_VIT = {
    "image_size": 32,
    "patch_size": 8,
    "num_layers": 2,
    "num_heads": 4,
    "hidden_dim": 32,
    "mlp_dim": 64,
    "num_classes": 5,
}


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_vit_logits_and_gradients_equal_torchvision(tmp_path: Path, kind: str) -> None:
    reference = torchvision_vit(**SMALL_VIT).train()  # dropout 0: train mode is deterministic
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    ours = vit_from_pretrained(str(tmp_path / "vit.pth"), n_heads=4, attention=kind).train()
    assert isinstance(ours, VisionTransformer) and ours.encoder.final_norm.eps == 1e-6
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected, got = reference(images), ours(images)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    expected.square().sum().backward()
    got.square().sum().backward()
    their = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        source = vit_name_map(2)[name]
        want = their[source.names[0]].grad
        want = source.transform(want) if source.transform else want
        torch.testing.assert_close(param.grad, want, atol=ATOL, rtol=1e-5, msg=name)


def test_vit_with_a_new_head_keeps_the_body(tmp_path: Path) -> None:
    """num_classes other than the checkpoint's: a fresh head over the pretrained features."""
    reference = torchvision_vit(**SMALL_VIT).eval()
    torch.save(reference.state_dict(), tmp_path / "vit.pth")
    ours = vit_from_pretrained(str(tmp_path / "vit.pth"), n_heads=4, num_classes=3).eval()
    assert ours.mlp_head.out_features == 3
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    features = {}
    reference.heads.register_forward_hook(lambda m, args, out: features.update(ref=args[0]))
    ours.mlp_head.register_forward_hook(lambda m, args, out: features.update(ours=args[0]))
    with torch.no_grad():
        reference(images)
        ours(images)
    torch.testing.assert_close(features["ours"], features["ref"], atol=ATOL, rtol=0)


def test_pretrained_vit_attention_maps_through_the_image_task(tmp_path: Path) -> None:
    """The image task's attention maps (the callback's source) work on a pretrained ViT: one
    map per layer, rows that are distributions, and the rollout over the 4x4 patch grid."""
    from functools import partial

    from attention_lab.attention_maps import attention_rollout, plot_rollout
    from attention_lab.tasks import ImageClassificationTask

    torch.save(torchvision_vit(**SMALL_VIT).state_dict(), tmp_path / "vit.pth")
    net = vit_from_pretrained(str(tmp_path / "vit.pth"), n_heads=4).eval()
    task = ImageClassificationTask(net, partial(torch.optim.AdamW), num_classes=5)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    snapshot = task.attention_maps((images, torch.zeros(2, dtype=torch.long)))
    assert [m.weights.shape for m in snapshot.maps] == [(2, 4, 17, 17)] * 2
    for attention_map in snapshot.maps:
        torch.testing.assert_close(attention_map.weights.sum(-1), torch.ones(2, 4, 17))
    assert snapshot.patch_grid == (4, 4) and snapshot.maps[0].key_labels[0][0] == "cls"
    rollout = attention_rollout([m.weights for m in snapshot.maps])  # (2, 17, 17)
    assert plot_rollout(images[0], rollout[0], snapshot.patch_grid, "rollout").axes


@pytest.mark.slow  # about 25 s on two shared CPU cores, mostly building two ViT-B/16s
def test_vit_b_16_logits_equal_torchvision(tmp_path: Path) -> None:
    """Full size once (random weights: no download)."""
    reference = torchvision_models.vit_b_16(weights=None).eval()
    nn.init.normal_(reference.heads.head.weight, std=0.02)
    torch.save(reference.state_dict(), tmp_path / "vit_b_16.pth")
    ours = vit_from_pretrained(str(tmp_path / "vit_b_16.pth"), arch="vit_b_16").eval()
    assert ours.image_size == 224 and ours.patch_size == 16 and len(ours.encoder.blocks) == 12
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), atol=ATOL, rtol=0)


def test_vit_name_offline_and_bad_names_are_clear(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torch.hub.load_state_dict_from_url", no_network)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network)
    with pytest.raises(ConfigError, match=r"model\.pretrained=vit_b_16"):
        vit_from_pretrained("vit_b_16")
    with pytest.raises(ConfigError, match=r"model\.pretrained=vit_z_99"):
        vit_from_pretrained("vit_z_99")


def test_defaults_unchanged() -> None:
    """The options for pretrained models leave today's models as they were."""
    encoder = Encoder(EncoderSpec(n_layers=1, d_model=8, n_heads=2, d_ff=16))
    assert encoder.final_norm.eps == encoder.blocks[0].norm1.eps == 1e-5
    assert VisionTransformer().encoder.final_norm.eps == 1e-5
    assert isinstance(
        Bert(vocab_size=10, d_model=8, n_heads=2, n_layers=1, d_ff=16).pooler, nn.Linear
    )
