"""google/automl EfficientDet checkpoints -> kdet ``EfficientDet`` weights.

automl (https://github.com/google/automl, ``efficientdet/``, Apache-2.0)
publishes COCO-trained D0-D7 as TF checkpoints (``efficientdet-dN.tar.gz``).
The converter reads them with ``tf.train.load_checkpoint`` and maps every
variable by name, using the ``/ExponentialMovingAverage`` copy of a variable
when the checkpoint has one (automl evaluates with the EMA weights).

Name map (kdet layer <- automl variable prefix):

* backbone: ``stem_conv`` / ``stem_bn`` <- ``efficientnet-bN/stem/conv2d`` /
  ``tpu_batch_normalization``; the K-th keras.applications block
  (``block1a``, ``block2a``, ``block2b``, ...) <- ``blocks_K``: expand conv +
  BN (``conv2d``, ``tpu_batch_normalization``) when the block expands, then
  depthwise conv + BN, SE reduce / expand (``se/conv2d``, ``se/conv2d_1``),
  project conv + BN (the next ``conv2d_*`` and ``tpu_batch_normalization_*``);
* BiFPN: ``bifpn_p6_resample_conv/_bn`` <- ``resample_p6/conv2d``, ``/bn``;
  ``bifpn_cell{c}_node{i}_in{k}_conv/_bn`` <-
  ``fpn_cells/cell_c/fnode{i}/resample_0_{k}_{L+i}`` (L pyramid levels);
  ``bifpn_cell{c}_node{i}_fuse`` <- the scalars ``WSM``, ``WSM_1``, ...;
  ``bifpn_cell{c}_node{i}_conv/_bn`` <- ``op_after_combine{L+i}/conv``, ``/bn``;
* heads: ``cls_conv{i}`` <- ``class_net/class-{i}``; ``cls_bn{i}_l{j}`` <-
  ``class_net/class-{i}-bn-{min_level+j}``; ``cls_pred`` <- ``class-predict``
  (``box_*`` <- ``box_net/box-*`` likewise).

Layouts: TF and Keras share kernel layouts (HWIO, depthwise HWCM), so no
kernel is transposed. Both heads are anchor-major (anchor ``a``'s outputs are
channels ``a * K .. a * K + K - 1``) with the same anchor order (scale-major,
automl's aspect ratios), so only the per-anchor channels change:

* boxes: automl regresses ``(ty, tx, th, tw)``, kdet ``(tx, ty, tw, th)``
  (both unweighted, anchor centres at stride / 2): columns ``(1, 0, 3, 2)``;
* classes: automl's 90 outputs are COCO category ids 1..90 (10 never used);
  an 80-class kdet model keeps ``COCO_CATEGORY_IDS - 1`` (kdet's contiguous
  COCO labels), a 90-class model keeps all of them.

Every kdet weight must be assigned and every automl model variable used, or
:class:`ValueError` lists the difference (optimizer slots and ``global_step``
are skipped).

Example:
    >>> from kdet.models import EfficientDet
    >>> model = EfficientDet(80, variant="d0")                        # doctest: +SKIP
    >>> convert_automl_efficientdet(model, "efficientdet-d0/")        # doctest: +SKIP
    >>> model = kdet.load("efficientdet_d0_coco")   # the same, downloaded and cached  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Callable, Sequence

import numpy as np

from kdet.zoo.coco_classes import COCO_CATEGORY_IDS
from kdet.zoo.converters import weighted_layers_by_name
from kdet.zoo.entries import AUTOML_POSTPROCESS  # noqa: F401 (re-exported)

# automl's COCO heads: one output per category id 1..90 (hparams_config.py, num_classes=90).
AUTOML_COCO_OUTPUTS = 90
# automl anchors.py / box_coder: regression outputs are (ty, tx, th, tw); kdet's are (tx, ty, tw, th).
AUTOML_TO_KDET_BOX = (1, 0, 3, 2)
EMA_SUFFIX = "/ExponentialMovingAverage"
# automl's inference post-processing as kdet settings: defined beside the entries that use it (the
# registry side imports no converter module), re-exported here.
# Checkpoint variables that belong to training, not to the model.
_TRAINING_ONLY = re.compile(r"(^global_step$|/Momentum$|/RMSProp(_1)?$|/Adam(_1)?$|^beta[12]_power)")
# Top-level scopes of automl's EfficientDet model variables.
_MODEL_SCOPES = ("efficientnet-", "resample_p", "fpn_cells/", "class_net/", "box_net/")
_BLOCK = re.compile(r"^block(\d+)([a-z]+)_")


class AutomlCheckpoint:
    """Name -> array access to an automl TF checkpoint, preferring EMA copies.

    Args:
        path: a checkpoint prefix (``.../model``), its ``.index`` file, or a
            directory holding one checkpoint (searched recursively, e.g. the
            extracted ``efficientdet-d0.tar.gz``).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        ValueError: several checkpoints and no ``checkpoint`` state file naming one.
    """

    def __init__(self, path: str | os.PathLike):
        import tensorflow as tf

        self.prefix = find_checkpoint(path)
        reader = tf.train.load_checkpoint(self.prefix)
        self._reader = reader
        self.shapes = reader.get_variable_to_shape_map()
        self.used: set[str] = set()

    def names(self) -> list[str]:
        """The model variables of the checkpoint (EMA copies and training state left out)."""
        return sorted(n for n in self.shapes if not n.endswith(EMA_SUFFIX) and not _TRAINING_ONLY.search(n))

    def __contains__(self, name: str) -> bool:
        return name in self.shapes or name + EMA_SUFFIX in self.shapes

    def get(self, name: str) -> np.ndarray:
        """The value of ``name``: its ``/ExponentialMovingAverage`` copy when present."""
        if name not in self:
            raise ValueError(f"The automl checkpoint {self.prefix} has no variable {name!r}; is it the "
                             f"checkpoint of this EfficientDet variant?")
        self.used.add(name)
        key = name + EMA_SUFFIX if name + EMA_SUFFIX in self.shapes else name
        return np.asarray(self._reader.get_tensor(key), np.float32)

    def unused(self) -> list[str]:
        """Model variables (under automl's model scopes) not read so far."""
        return [n for n in self.names() if n.startswith(_MODEL_SCOPES) and n not in self.used]


def find_checkpoint(path: str | os.PathLike) -> str:
    """Resolves a checkpoint prefix from a prefix, an ``.index`` file or a directory."""
    import tensorflow as tf

    path = pathlib.Path(path)
    if path.name.endswith(".index") and path.is_file():
        return str(path)[: -len(".index")]
    if not path.is_dir():
        if pathlib.Path(f"{path}.index").is_file():
            return str(path)
        raise FileNotFoundError(f"No automl checkpoint at {str(path)!r}: expected a directory, a checkpoint "
                                f"prefix or its .index file.")
    indexes = sorted(path.rglob("*.index"))
    if len(indexes) == 1:
        return str(indexes[0])[: -len(".index")]
    for folder in sorted({p.parent for p in indexes}):
        latest = tf.train.latest_checkpoint(str(folder))
        if latest and pathlib.Path(f"{latest}.index").is_file():
            return latest
    if not indexes:
        raise FileNotFoundError(f"No TF checkpoint (*.index) under {str(path)!r}.")
    raise ValueError(f"Several checkpoints under {str(path)!r} and no 'checkpoint' file naming one: "
                     f"{[str(p) for p in indexes[:5]]}.")


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}/{v}" for v in ("gamma", "beta", "moving_mean", "moving_variance")]


def _sep(prefix: str) -> list[str]:
    return [f"{prefix}/{v}" for v in ("depthwise_kernel", "pointwise_kernel", "bias")]


def _conv(prefix: str, bias: bool) -> list[str]:
    return [f"{prefix}/kernel"] + ([f"{prefix}/bias"] if bias else [])


def block_prefixes(layer_names: Sequence[str]) -> list[str]:
    """keras.applications EfficientNet block prefixes (``block1a`` ...) in automl's ``blocks_K`` order."""
    found = {m.group(0)[:-1]: (int(m.group(1)), m.group(2)) for m in map(_BLOCK.match, layer_names) if m}
    return sorted(found, key=lambda p: (found[p][0], len(found[p][1]), found[p][1]))


def backbone_key_map(layer_names: Sequence[str], scope: str) -> dict[str, list[str]]:
    """kdet EfficientNet layer -> automl variable names (``scope`` e.g. ``"efficientnet-b0"``)."""
    names = set(layer_names)
    mapping = {"stem_conv": _conv(f"{scope}/stem/conv2d", False),
               "stem_bn": _bn(f"{scope}/stem/tpu_batch_normalization")}
    for k, block in enumerate(block_prefixes(layer_names)):
        src = f"{scope}/blocks_{k}"
        bns = [f"{src}/tpu_batch_normalization{s}" for s in ("", "_1", "_2")]
        convs = [f"{src}/conv2d{s}" for s in ("", "_1")]
        if f"{block}_expand_conv" in names:
            mapping[f"{block}_expand_conv"] = _conv(convs.pop(0), False)
            mapping[f"{block}_expand_bn"] = _bn(bns.pop(0))
        mapping[f"{block}_dwconv"] = [f"{src}/depthwise_conv2d/depthwise_kernel"]
        mapping[f"{block}_bn"] = _bn(bns.pop(0))
        mapping[f"{block}_se_reduce"] = _conv(f"{src}/se/conv2d", True)
        mapping[f"{block}_se_expand"] = _conv(f"{src}/se/conv2d_1", True)
        mapping[f"{block}_project_conv"] = _conv(convs.pop(0), False)
        mapping[f"{block}_project_bn"] = _bn(bns.pop(0))
    return mapping


def bifpn_key_map(layer_names: Sequence[str], num_levels: int, name: str = "bifpn") -> dict:
    """kdet BiFPN layer -> automl variable names; fusion layers map to ``("fuse", fnode scope)``."""
    mapping: dict = {}
    extra = re.compile(rf"^{name}_p(\d+)_resample_(conv|bn)$")
    node = re.compile(rf"^{name}_cell(\d+)_node(\d+)_(?:in(\d+)_)?(conv|bn|fuse)$")
    for layer in layer_names:
        if m := extra.match(layer):  # P6/P7 from the backbone's coarsest map
            base = f"resample_p{m.group(1)}"
            mapping[layer] = _conv(f"{base}/conv2d", True) if m.group(2) == "conv" else _bn(f"{base}/bn")
        elif m := node.match(layer):
            cell, index, offset, kind = m.group(1), int(m.group(2)), m.group(3), m.group(4)
            fnode = f"fpn_cells/cell_{cell}/fnode{index}"
            if kind == "fuse":
                mapping[layer] = ("fuse", fnode)
            elif offset is not None:  # input resampling: 1x1 conv (bias) + BN
                base = f"{fnode}/resample_0_{offset}_{num_levels + index}"
                mapping[layer] = _conv(f"{base}/conv2d", True) if kind == "conv" else _bn(f"{base}/bn")
            else:  # after fusion: separable conv (bias) + BN
                base = f"{fnode}/op_after_combine{num_levels + index}"
                mapping[layer] = _sep(f"{base}/conv") if kind == "conv" else _bn(f"{base}/bn")
    return mapping


def head_key_map(layer_names: Sequence[str], min_level: int) -> dict[str, list[str]]:
    """kdet ``cls_*`` / ``box_*`` layers -> automl ``class_net`` / ``box_net`` variables."""
    mapping = {}
    for tower, net, short in (("cls", "class_net", "class"), ("box", "box_net", "box")):
        for layer in layer_names:
            conv = re.match(rf"^{tower}_conv(\d+)$", layer)
            bn = re.match(rf"^{tower}_bn(\d+)_l(\d+)$", layer)
            if conv:
                mapping[layer] = _sep(f"{net}/{short}-{conv.group(1)}")
            elif bn:
                mapping[layer] = _bn(f"{net}/{short}-{bn.group(1)}-bn-{min_level + int(bn.group(2))}")
        mapping[f"{tower}_pred"] = _sep(f"{net}/{short}-predict")
    return mapping


def class_channels(num_classes: int) -> np.ndarray:
    """automl class outputs (category id - 1) feeding a kdet head of ``num_classes`` classes."""
    if num_classes == len(COCO_CATEGORY_IDS):
        return np.asarray(COCO_CATEGORY_IDS) - 1
    if num_classes == AUTOML_COCO_OUTPUTS:
        return np.arange(AUTOML_COCO_OUTPUTS)
    raise ValueError(f"An automl COCO checkpoint converts into an EfficientDet with 80 classes (kdet's COCO "
                     f"labels) or {AUTOML_COCO_OUTPUTS} (automl's category ids); received num_classes={num_classes}.")


def select_anchor_channels(arrays: list[np.ndarray], per_anchor: int, keep: Sequence[int]) -> list[np.ndarray]:
    """Keeps / reorders channels ``keep`` of every anchor of an anchor-major separable predictor."""
    depthwise, pointwise, bias = arrays
    keep = np.asarray(keep)
    anchors = bias.shape[0] // per_anchor
    index = (np.arange(anchors)[:, None] * per_anchor + keep[None, :]).reshape(-1)
    return [depthwise, pointwise[..., index], bias[index]]


def _backbone_scope(model) -> str:
    names = [m.name for m in model.network.layers if hasattr(m, "layers") and m.name.startswith("efficientnet_b")]
    if len(names) != 1:
        raise ValueError("convert_automl_efficientdet needs an EfficientDet with an EfficientNet backbone "
                         f"(efficientnet_b0..b7); the model's sub-models are "
                         f"{[m.name for m in model.network.layers if hasattr(m, 'layers')]}.")
    return names[0].replace("_", "-")


def automl_key_map(model) -> dict:
    """kdet layer name -> automl variable names for a kdet ``EfficientDet``."""
    layers = list(weighted_layers_by_name(model))
    cfg = model.get_config()
    num_levels = cfg["max_level"] - cfg["min_level"] + 1
    return {**backbone_key_map(layers, _backbone_scope(model)), **bifpn_key_map(layers, num_levels),
            **head_key_map(layers, cfg["min_level"])}


def _fusion_weights(ckpt: AutomlCheckpoint, fnode: str, count: int) -> list[np.ndarray]:
    names = [f"{fnode}/WSM"] + [f"{fnode}/WSM_{j}" for j in range(1, count)]
    return [np.stack([ckpt.get(n).reshape(()) for n in names])]


def convert_automl_efficientdet(model, path: str | os.PathLike, entry=None):
    """Loads an automl EfficientDet checkpoint into a kdet ``EfficientDet``.

    Args:
        model: ``EfficientDet`` of the checkpoint's variant (``variant="dN"``),
            80 or 90 classes, any image size.
        path: the extracted ``efficientdet-dN.tar.gz`` directory, or a
            checkpoint prefix / ``.index`` file.
        entry: the zoo entry (unused; the registry passes it).

    Returns:
        None: the weights are set on ``model`` (the registry's converter contract).

    Raises:
        ValueError: the checkpoint and the model disagree (missing or unused
            variables, shapes).
    """
    del entry
    ckpt = AutomlCheckpoint(path)
    layers = weighted_layers_by_name(model)
    key_map = automl_key_map(model)
    unmapped = sorted(set(layers) - set(key_map))
    unknown = sorted(set(key_map) - set(layers))
    if unmapped or unknown:
        raise ValueError(f"kdet layers without an automl name {unmapped[:5]} ({len(unmapped)}); mapped names "
                         f"that are not kdet layers {unknown[:5]} ({len(unknown)}).")
    keep = class_channels(model.num_classes)
    transforms: dict[str, Callable] = {
        "cls_pred": lambda a: select_anchor_channels(a, AUTOML_COCO_OUTPUTS, keep),
        "box_pred": lambda a: select_anchor_channels(a, 4, AUTOML_TO_KDET_BOX),
    }
    # Read and check everything first: a mismatch leaves the model untouched.
    assignments = []
    for name, layer in layers.items():
        sources = key_map[name]
        if isinstance(sources, tuple):  # ("fuse", fnode): one scalar per fused input
            arrays = _fusion_weights(ckpt, sources[1], int(layer.weights[0].shape[0]))
        else:
            arrays = [ckpt.get(n) for n in sources]
        if name in transforms:
            arrays = transforms[name](arrays)
        expected = [tuple(w.shape) for w in layer.weights]
        received = [tuple(a.shape) for a in arrays]
        if expected != received:
            raise ValueError(f"{sources} -> {name}: kdet expects shapes {expected}; the checkpoint gives {received}.")
        assignments.append((layer, arrays))
    unused = ckpt.unused()
    if unused:
        raise ValueError(f"automl variables not converted: {unused[:5]} ({len(unused)}); is the model the "
                         f"checkpoint's variant?")
    for layer, arrays in assignments:
        layer.set_weights(arrays)
