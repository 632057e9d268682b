"""Pretrained checkpoints in our hand-written modules: Hugging Face BERT and torchvision ViTs.

Each source is mapped onto our parameter names by an explicit table (``bert_name_map``,
``vit_name_map``): every tensor of ours says which tensors of the checkpoint it is made of.
Hugging Face BERT keeps separate query, key and value projections, which are concatenated into
our ``in_proj_weight``; torchvision's ViT embeds patches with a convolution whose kernel equals
its stride, which is a linear map of each flattened patch, so its weight is reordered onto our
patch embedding. A checkpoint tensor that the table does not use, one it needs but the checkpoint
lacks, or a shape that does not fit, is one ``WeightsMismatchError`` listing all of them.
Tensors are read as tensors only: safetensors, or ``torch.load(weights_only=True)``.

Where the weights come from (``model.pretrained``):
- BERT: a local directory with ``config.json`` and ``model.safetensors`` (or
  ``pytorch_model.bin``), used as is; otherwise a Hugging Face hub id such as
  ``bert-base-uncased``, downloaded through ``huggingface_hub`` (or read from its cache).
- ViT: a torchvision architecture name (``vit_b_16``, ``vit_b_32``, ``vit_l_16``,
  ``vit_l_32``, ``vit_h_14``), whose ImageNet weights torchvision downloads (or has cached);
  or a local file holding such a state_dict.
Offline with neither, the run stops with one ``ConfigError`` naming ``model.pretrained``.

The BERT tokenizer is the checkpoint's own: ``attention_lab.data.bert_tokenizer``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from attention_lab.errors import ConfigError, WeightsMismatchError
from attention_lab.hub import BERT_FALLBACK_WEIGHTS, SETTING, resolve_bert_dir
from attention_lab.models.bert import Bert, BertSentimentClassifier, BertTagger
from attention_lab.models.vit import VisionTransformer

# Hugging Face activation names -> ours (blocks.ACTIVATIONS).
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
}
# Checkpoint tensors that are not part of our BERT and are dropped on purpose: the pre-training
# heads (masked LM, next sentence), other tasks' classifiers, and the position-id buffer.
BERT_IGNORED_PREFIXES = ("cls.", "classifier.", "qa_outputs.")
BERT_IGNORED_SUFFIXES = ("position_ids",)
# torchvision's ViTs, in our constructor's names (the image size is read off the weights).
TORCHVISION_VITS = {
    name: {"patch_size": p, "n_layers": layers, "n_heads": h, "d_model": e, "d_ff": f}
    for name, (p, layers, h, e, f) in {
        "vit_b_16": (16, 12, 12, 768, 3072),
        "vit_b_32": (32, 12, 12, 768, 3072),
        "vit_l_16": (16, 24, 16, 1024, 4096),
        "vit_l_32": (32, 24, 16, 1024, 4096),
        "vit_h_14": (14, 32, 16, 1280, 5120),
    }.items()
}
VIT_LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class Source:
    """The checkpoint tensors one of ours is made of: concatenated along dim 0, then
    ``transform`` applied (a named function, for the few that need reordering)."""

    names: tuple[str, ...]
    transform: Callable[[Tensor], Tensor] | None = None


NameMap = dict[str, Source]


def _renamed(pairs: dict[str, str], ours: str = "", theirs: str = "") -> NameMap:
    return {f"{ours}{mine}": Source((f"{theirs}{other}",)) for mine, other in pairs.items()}


def _weight_and_bias(pairs: dict[str, str]) -> dict[str, str]:
    return {f"{a}.{p}": f"{b}.{p}" for a, b in pairs.items() for p in ("weight", "bias")}


# --------------------------------------------------------------------------- mapping and checks


def map_state_dict(
    model: nn.Module,
    source: dict[str, Tensor],
    name_map: NameMap,
    *,
    ignored: Callable[[str], bool] | None = None,
    what: str,
    kept: tuple[str, ...] = (),
) -> dict[str, Tensor]:
    """Our state_dict built from ``source`` through ``name_map``, or one error listing every
    missing, unexpected, unmapped or misshapen tensor. Our tensors whose names start with one
    of ``kept`` keep their values (a new head)."""
    ours = model.state_dict()
    mapped = {name: t for name, t in ours.items() if kept and name.startswith(kept)}
    used = {name for entry in name_map.values() for name in entry.names}
    missing = sorted(used - source.keys())
    unexpected = sorted(n for n in source.keys() - used if not (ignored and ignored(n)))
    unmapped = sorted(ours.keys() - name_map.keys() - mapped.keys())
    misshapen = []
    for target, entry in name_map.items():
        if target not in ours or any(n not in source for n in entry.names):
            continue
        tensors = [source[n] for n in entry.names]
        try:
            tensor = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
            tensor = entry.transform(tensor) if entry.transform else tensor
        except RuntimeError as error:  # parts that do not concatenate or reshape
            misshapen.append(f"{target} <- {', '.join(entry.names)}: {error}")
            continue
        if tensor.shape != ours[target].shape:
            misshapen.append(
                f"{target} {tuple(ours[target].shape)} <- {', '.join(entry.names)} "
                f"{tuple(tensor.shape)}"
            )
        mapped[target] = tensor.to(ours[target].dtype)
    not_ours = sorted(name_map.keys() - ours.keys())
    problems = [
        (f"missing from the checkpoint ({len(missing)})", missing),
        (f"unexpected in the checkpoint ({len(unexpected)})", unexpected),
        (f"of our model, with no source ({len(unmapped)})", unmapped),
        (f"mapped, but not in our model ({len(not_ours)})", not_ours),
        (f"shape mismatch ({len(misshapen)})", misshapen),
    ]
    problems = [(title, names) for title, names in problems if names]
    if problems:
        lines = [f"{what} does not fit the model:"]
        for title, names in problems:
            lines.append(f"  {title}: " + "; ".join(names))
        raise WeightsMismatchError("\n".join(lines))
    return mapped


def load_mapped(
    model: nn.Module,
    source: dict[str, Tensor],
    name_map: NameMap,
    *,
    ignored: Callable[[str], bool] | None = None,
    what: str,
    kept: tuple[str, ...] = (),
) -> nn.Module:
    """Fill ``model`` from ``source`` through ``name_map`` (strictly; see ``map_state_dict``);
    returns the model."""
    state = map_state_dict(model, source, name_map, ignored=ignored, what=what, kept=kept)
    model.load_state_dict(state)
    return model


def read_tensors(path: Path) -> dict[str, Tensor]:
    """A file of tensors: safetensors, or a torch state_dict loaded with weights_only=True."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsMismatchError(f"{path} does not hold a state_dict of tensors")
    return state


# --------------------------------------------------------------------------------------- BERT


def bert_name_map(n_layers: int, *, pooler: bool = True) -> NameMap:
    """Our ``Bert`` parameter names -> Hugging Face ``BertModel``'s."""
    name_map = _renamed(
        {
            "token_embedding.weight": "embeddings.word_embeddings.weight",
            "positional.table": "embeddings.position_embeddings.weight",
            "token_type_embedding.weight": "embeddings.token_type_embeddings.weight",
            **_weight_and_bias({"embedding_norm": "embeddings.LayerNorm"}),
            **(_weight_and_bias({"pooler": "pooler.dense"}) if pooler else {}),
        }
    )
    for i in range(n_layers):
        ours, theirs = f"encoder.blocks.{i}.", f"encoder.layer.{i}."
        for param in ("weight", "bias"):
            name_map[f"{ours}self_attn.in_proj_{param}"] = Source(
                tuple(f"{theirs}attention.self.{p}.{param}" for p in ("query", "key", "value"))
            )
        pairs = {
            "self_attn.out_proj": "attention.output.dense",
            "norm1": "attention.output.LayerNorm",
            "ff.net.0": "intermediate.dense",
            "ff.net.3": "output.dense",
            "norm2": "output.LayerNorm",
        }
        name_map.update(_renamed(_weight_and_bias(pairs), ours, theirs))
    return name_map


def _bert_ignored(name: str) -> bool:
    return name.startswith(BERT_IGNORED_PREFIXES) or name.endswith(BERT_IGNORED_SUFFIXES)


def _normalise_bert_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Strip the ``bert.`` prefix of task models (BertForPreTraining, ...) and rename the
    LayerNorm ``gamma``/``beta`` of old checkpoints to ``weight``/``bias``."""
    renamed = {}
    for name, tensor in state.items():
        name = name.removeprefix("bert.")
        if "LayerNorm." in name:
            name = name.replace("LayerNorm.gamma", "LayerNorm.weight")
            name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        renamed[name] = tensor
    return renamed


def _bert_weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", BERT_FALLBACK_WEIGHTS):
        if (folder / name).exists():
            return folder / name
    raise ConfigError(
        f"{SETTING}={folder} has no model.safetensors or {BERT_FALLBACK_WEIGHTS}; point it at "
        f"a Hugging Face BERT checkpoint directory"
    )


def bert_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Our ``Bert`` constructor arguments from a Hugging Face BERT ``config.json``."""
    if config.get("model_type", "bert") != "bert":
        raise ConfigError(f"{SETTING} holds a {config['model_type']!r} model, not a BERT")
    position_kind = config.get("position_embedding_type", "absolute")
    if position_kind != "absolute":
        raise ConfigError(
            f"{SETTING}: position_embedding_type={position_kind!r} is not supported (absolute)"
        )
    activation = config.get("hidden_act", "gelu")
    if activation not in HF_ACTIVATIONS:
        raise ConfigError(
            f"{SETTING}: hidden_act={activation!r} is not supported; "
            f"choose a checkpoint with one of {', '.join(HF_ACTIVATIONS)}"
        )
    needed = ("vocab_size", "max_position_embeddings", "type_vocab_size", "hidden_size")
    needed += ("num_attention_heads", "num_hidden_layers", "intermediate_size")
    lacking = [key for key in needed if key not in config]
    if lacking:
        raise ConfigError(f"{SETTING}: config.json lacks {', '.join(lacking)}: not a BERT config")
    return {
        "vocab_size": config["vocab_size"],
        "max_len": config["max_position_embeddings"],
        "type_vocab_size": config["type_vocab_size"],
        "d_model": config["hidden_size"],
        "n_heads": config["num_attention_heads"],
        "n_layers": config["num_hidden_layers"],
        "d_ff": config["intermediate_size"],
        "dropout": config.get("hidden_dropout_prob", 0.1),
        "activation": HF_ACTIVATIONS[activation],
        "layer_norm_eps": config.get("layer_norm_eps", 1e-12),
        "pad_id": config.get("pad_token_id") or 0,
    }


def read_bert_config(folder: Path, pretrained: str) -> dict[str, Any]:
    """The checkpoint's ``config.json``, or one error naming ``model.pretrained``."""
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"{SETTING}={pretrained} has no config.json: not a Hugging Face checkpoint directory"
        )
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{SETTING}={pretrained}: {path} is not JSON ({error})") from error
    if not isinstance(config, dict):
        raise ConfigError(f"{SETTING}={pretrained}: {path} is not a JSON object")
    return config


def read_bert_weights(folder: Path, pretrained: str) -> dict[str, Tensor]:
    """The checkpoint's tensors, names normalised; a torn or foreign file is one error."""
    weights = _bert_weights_file(folder)
    try:
        return _normalise_bert_names(read_tensors(weights))
    except WeightsMismatchError:
        raise
    except Exception as error:  # safetensors' and torch's errors for a truncated/corrupt file
        raise ConfigError(
            f"{SETTING}={pretrained}: {weights.name} cannot be read ({type(error).__name__}: "
            f"{error}); the file is truncated or not a checkpoint: download it again"
        ) from error


def bert_from_pretrained(
    pretrained: str,
    *,
    attention: str = "scratch",
    dropout: float | None = None,
    pooler: bool = True,
    architecture: dict[str, Any] | None = None,
) -> Bert:
    """Our ``Bert`` with the weights of a Hugging Face checkpoint (directory, packaged or hub id).

    ``dropout`` None keeps the checkpoint's ``hidden_dropout_prob`` (attention dropout too).
    ``architecture``: ``Bert.settings`` saved in a run's checkpoint; the model is then built
    from it without reading ``pretrained`` at all (the run's checkpoint holds the weights).
    """
    if architecture is not None:
        settings = dict(architecture)
    else:
        folder = resolve_bert_dir(pretrained)
        settings = bert_settings(read_bert_config(folder, pretrained))
    if dropout is not None:
        settings["dropout"] = dropout
    model = Bert(**settings, pooler=pooler, attention=attention)
    if architecture is not None:
        return model
    state = read_bert_weights(folder, pretrained)

    def ignored(name: str) -> bool:
        return _bert_ignored(name) or (not pooler and name.startswith("pooler."))

    name_map = bert_name_map(settings["n_layers"], pooler=pooler)
    return load_mapped(model, state, name_map, ignored=ignored, what=f"{SETTING}={pretrained}")


def bert_sentiment_classifier(
    pretrained: str,
    *,
    attention: str = "scratch",
    num_classes: int = 2,
    freeze_body: bool = True,
    body_lr_scale: float = 1.0,
    dropout: float | None = None,
    head_dropout: float = 0.0,
    pooling: str = "cls_tanh",
    architecture: dict[str, Any] | None = None,
) -> BertSentimentClassifier:
    """The course's model over a pretrained BERT (``experiment=sst2_bert``, ``sst2_minilm*``);
    ``pooling="mean"`` reads the mean of the tokens instead of tanh of [CLS]."""
    return _with_pretrained_body(
        BertSentimentClassifier,
        pretrained,
        attention=attention,
        dropout=dropout,
        architecture=architecture,
        num_classes=num_classes,
        head_dropout=head_dropout,
        freeze_body=freeze_body,
        body_lr_scale=body_lr_scale,
        pooling=pooling,
    )


def bert_tagger(
    pretrained: str,
    *,
    attention: str = "scratch",
    num_tags: int,
    word_pooling: str = "first",
    freeze_body: bool = False,
    body_lr_scale: float = 1.0,
    dropout: float | None = None,
    head_dropout: float = 0.0,
    architecture: dict[str, Any] | None = None,
) -> BertTagger:
    """A tag per word over a pretrained BERT (``experiment=ud_pos_minilm``)."""
    return _with_pretrained_body(
        BertTagger,
        pretrained,
        attention=attention,
        dropout=dropout,
        architecture=architecture,
        num_tags=num_tags,
        word_pooling=word_pooling,
        head_dropout=head_dropout,
        freeze_body=freeze_body,
        body_lr_scale=body_lr_scale,
    )


def _with_pretrained_body(
    head: type[nn.Module],
    pretrained: str,
    *,
    attention: str,
    dropout: float | None,
    architecture: dict[str, Any] | None,
    head_dropout: float,
    **settings: Any,
) -> nn.Module:
    """``head(body=<the pretrained Bert, no pooler>, dropout=head_dropout, **settings)``."""
    body = bert_from_pretrained(
        pretrained, attention=attention, dropout=dropout, pooler=False, architecture=architecture
    )
    return head(body=body, dropout=head_dropout, **settings)


# ---------------------------------------------------------------------------------------- ViT


def conv_to_linear(weight: Tensor) -> Tensor:
    """A patch convolution's kernel (E, C, p, p) as our linear patch embedding (E, p*p*C),
    in the order ``(p1 p2 c)`` in which ``VisionTransformer`` flattens a patch."""
    return weight.permute(0, 2, 3, 1).flatten(1)  # (E, p, p, C) -> (E, p*p*C)


def drop_batch_dim(table: Tensor) -> Tensor:
    """torchvision's position table (1, N+1, E) as ours (N+1, E)."""
    return table.squeeze(0)  # (N+1, E)


def vit_name_map(n_layers: int) -> NameMap:
    """Our ``VisionTransformer`` parameter names -> torchvision ``VisionTransformer``'s."""
    name_map = {
        "to_patch_embedding.1.weight": Source(("conv_proj.weight",), conv_to_linear),
        "to_patch_embedding.1.bias": Source(("conv_proj.bias",)),
        "cls_token": Source(("class_token",)),
        "positional.table": Source(("encoder.pos_embedding",), drop_batch_dim),
        **_renamed(
            _weight_and_bias({"encoder.final_norm": "encoder.ln", "mlp_head": "heads.head"})
        ),
    }
    for i in range(n_layers):
        ours, theirs = f"encoder.blocks.{i}.", f"encoder.layers.encoder_layer_{i}."
        attention = {
            f"self_attn.{p}": f"self_attention.{p}"
            for p in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
        }
        pairs = _weight_and_bias(
            {"norm1": "ln_1", "norm2": "ln_2", "ff.net.0": "mlp.0", "ff.net.3": "mlp.3"}
        )
        name_map.update(_renamed({**attention, **pairs}, ours, theirs))
    return name_map


def vit_settings(state: dict[str, Tensor], *, n_heads: int) -> dict[str, Any]:
    """Our ``VisionTransformer`` arguments read off a torchvision state_dict's shapes."""
    needed = ("conv_proj.weight", "encoder.pos_embedding", "heads.head.weight")
    if any(name not in state for name in needed):
        if "heads.pre_logits.weight" in state:
            raise WeightsMismatchError(
                "the checkpoint's ViT has a pre-logits layer (representation_size); ours has none"
            )
        lacking = ", ".join(name for name in needed if name not in state)
        raise WeightsMismatchError(f"not a torchvision ViT state_dict: it lacks {lacking}")
    d_model, in_channels, patch_size, _ = state["conv_proj.weight"].shape
    grid = round((state["encoder.pos_embedding"].size(1) - 1) ** 0.5)
    layers = {name.split(".")[2] for name in state if name.startswith("encoder.layers.")}
    return {
        "image_size": grid * patch_size,
        "in_channels": in_channels,
        "num_classes": state["heads.head.weight"].size(0),
        "patch_size": patch_size,
        "d_model": d_model,
        "n_heads": n_heads,
        "n_layers": len(layers),
        "d_ff": state["encoder.layers.encoder_layer_0.mlp.0.weight"].size(0),
    }


def _torchvision_state(name: str) -> dict[str, Tensor]:
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(name).DEFAULT.get_state_dict(progress=False, weights_only=True)
    except Exception as error:  # offline, or a proxy in the way
        raise ConfigError(
            f"{SETTING}={name}: torchvision's ImageNet weights could not be downloaded "
            f"({type(error).__name__}: {error}). Download them where there is internet "
            f"(torchvision.models.get_model_weights('{name}').DEFAULT.get_state_dict()) into "
            f"$TORCH_HOME, or save that state_dict to a file and set {SETTING}=/path/to/file.pth"
        ) from error


def vit_from_pretrained(
    pretrained: str,
    *,
    arch: str = "vit_b_16",
    n_heads: int | None = None,
    attention: str = "scratch",
    dropout: float = 0.0,
    num_classes: int | None = None,
) -> VisionTransformer:
    """Our ``VisionTransformer`` with a torchvision ViT's weights.

    ``pretrained``: a torchvision name (``vit_b_16``, ...; downloaded) or a state_dict file of
    one. Sizes are read off the tensors, except the number of heads: ``n_heads``, or the one of
    ``arch`` (the name itself when ``pretrained`` is a name). ``num_classes`` other than the
    checkpoint's gives a new, randomly initialised head (for fine-tuning on other classes).
    """
    if pretrained in TORCHVISION_VITS:
        arch, state = pretrained, _torchvision_state(pretrained)
    elif Path(pretrained).expanduser().is_file():
        state = read_tensors(Path(pretrained).expanduser())
    else:
        raise ConfigError(
            f"{SETTING}={pretrained} is neither a torchvision ViT ({', '.join(TORCHVISION_VITS)}) "
            f"nor a state_dict file"
        )
    if n_heads is None:
        if arch not in TORCHVISION_VITS:
            raise ConfigError(f"model.arch={arch} is not one of {', '.join(TORCHVISION_VITS)}")
        n_heads = TORCHVISION_VITS[arch]["n_heads"]
    settings = vit_settings(state, n_heads=n_heads)
    new_head = num_classes is not None and num_classes != settings["num_classes"]
    if new_head:
        settings["num_classes"] = num_classes
        state = {name: t for name, t in state.items() if not name.startswith("heads.")}
    model = VisionTransformer(
        **settings,
        dropout=dropout,
        activation="gelu",
        positional="learned",
        class_token=True,
        pooling="cls",
        attention=attention,
        layer_norm_eps=VIT_LAYER_NORM_EPS,
    )
    name_map = vit_name_map(settings["n_layers"])
    kept = ("mlp_head.",) if new_head else ()
    if new_head:
        name_map = {name: src for name, src in name_map.items() if not name.startswith(kept)}
    return load_mapped(model, state, name_map, what=pretrained, kept=kept)
