"""Weights from the official PyTorch Cream models into our Keras child nets.

The official checkpoints (and timm's MobileNetV3) name parameters after the module tree
(`blocks.3.1.conv_dw.weight`, `bn1.running_var`, `classifier.bias`, ...); our layers carry
the same names with '_' for '.', so the mapping is by name, with only the layouts changed:
Conv2D OIHW -> HWIO, depthwise (C,1,k,k) -> (k,k,C,1), Dense (out,in) -> (in,out).

Reading the `.pth.tar` files themselves needs torch (`pip install cream_tf[torch]`); it is
imported only there, so the rest of cream_tf works without it.

Example (an official checkpoint, downloaded by the user from the microsoft/Cream README):

    from cream_tf import zoo
    checkpoint = read_checkpoint("287.pth.tar")       # state_dict_ema when present
    model, arch = build_from_checkpoint(zoo.arch_of("cream_287"), checkpoint, name="cream_287")

`zoo.build("cream_287", weights="287.pth.tar")` does the same.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np

from cream_tf.arch import Arch
from cream_tf.candidates import PRESETS
from cream_tf.childnet import build_child

CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt")
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def torch_module_name(layer_name: str) -> str:
    """'blocks_3_1_se_conv_reduce' -> 'blocks.3.1.se.conv_reduce'; 'conv_stem' -> 'conv_stem'."""
    if not layer_name.startswith("blocks_"):
        return layer_name
    _, stage, block, rest = layer_name.split("_", 3)
    return f"blocks.{stage}.{block}.{rest.replace('se_conv_', 'se.conv_').replace('downsample_', 'downsample.')}"


def _expected(layer) -> dict[str, callable]:
    """Torch key -> function turning that tensor into the Keras layout, for one layer's weights."""
    prefix = torch_module_name(layer.name)
    if isinstance(layer, keras.layers.BatchNormalization):
        return {f"{prefix}.{field}": (lambda a: a) for field in _BN_FIELDS}
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = lambda a: np.transpose(a, (2, 3, 0, 1))
    elif isinstance(layer, keras.layers.Conv2D):
        kernel = lambda a: np.transpose(a, (2, 3, 1, 0))
    elif isinstance(layer, keras.layers.Dense):
        kernel = lambda a: np.transpose(a)
    else:
        return {}
    expected = {f"{prefix}.weight": kernel}
    if layer.use_bias:
        expected[f"{prefix}.bias"] = lambda a: a
    return expected


def load_state_dict(model: keras.Model, state_dict: Mapping[str, np.ndarray]) -> None:
    """Sets every weight of `model` from a PyTorch-style state dict of numpy arrays.

    Raises ValueError, before changing anything, listing missing and unexpected keys and
    the first shape mismatch.
    """
    plan = []  # (layer, [arrays in Keras layout])
    missing, mismatch = [], None
    used = set()
    for layer in model.layers:
        expected = _expected(layer)
        if not expected:
            continue
        arrays = []
        for (key, to_keras), variable in zip(expected.items(), layer.weights):
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            array = to_keras(np.asarray(state_dict[key]))
            if tuple(array.shape) != tuple(variable.shape) and mismatch is None:
                mismatch = (
                    f"{key}: checkpoint shape {tuple(np.asarray(state_dict[key]).shape)} "
                    f"does not fit layer {layer.name!r} weight of shape {tuple(variable.shape)} "
                    "(in Keras layout)"
                )
            arrays.append(array)
        plan.append((layer, arrays))
    unexpected = sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))
    if missing or unexpected or mismatch:
        problems = []
        if missing:
            problems.append(
                f"missing keys ({len(missing)}): {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else "")
            )
        if unexpected:
            problems.append(
                f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}"
                + (" ..." if len(unexpected) > 20 else "")
            )
        if mismatch:
            problems.append(f"first shape mismatch: {mismatch}")
        raise ValueError(f"The checkpoint does not fit model {model.name!r}: " + "; ".join(problems))
    for layer, arrays in plan:
        layer.set_weights(arrays)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One state dict read from a PyTorch checkpoint file, as numpy arrays under the official names.

    `weights` says which one was taken: 'state_dict_ema', 'state_dict' or 'bare state dict'.
    """

    path: str
    weights: str
    use_ema: bool
    state_dict: dict[str, np.ndarray]

    @property
    def num_classes(self) -> int | None:
        classifier = self.state_dict.get("classifier.weight")
        return None if classifier is None else int(classifier.shape[0])

    @property
    def description(self) -> str:
        return f"PyTorch checkpoint {self.path} ({self.weights})"

    def metadata(self) -> dict:
        return {"path": self.path, "weights": self.weights, "use_ema": self.use_ema}


def is_checkpoint_path(path) -> bool:
    return str(path).endswith(CHECKPOINT_SUFFIXES)


def _torch_load(path: Path):
    try:
        import torch
    except ImportError:
        raise ImportError(
            "Reading PyTorch checkpoints needs torch, an optional extra of cream_tf: "
            "pip install cream_tf[torch] (or pip install torch==2.14.1)."
        ) from None
    try:
        # timm's training scripts store their argparse options beside the weights; a Namespace
        # only holds plain values, so allowing it keeps weights_only loading safe.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for files that are not checkpoints
        raise ValueError(
            f"{str(path)!r} is not a PyTorch checkpoint that loads safely (torch.load with "
            f"weights_only=True failed: {type(error).__name__}: {error}). Give a file written by "
            "torch.save holding a state dict or a dict with 'state_dict' / 'state_dict_ema'; a "
            "trusted checkpoint that also holds other Python objects can be re-saved with only "
            "those entries."
        ) from None


def _pick_state_dict(loaded, path: Path, use_ema: bool) -> tuple[str, Mapping]:
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"{str(path)!r} holds a {type(loaded).__name__}; expected a state dict or "
            "a dict with 'state_dict' and/or 'state_dict_ema'."
        )
    wanted = ("state_dict_ema", "state_dict") if use_ema else ("state_dict",)
    for key in wanted:
        if isinstance(loaded.get(key), Mapping):
            return key, loaded[key]
    if "state_dict_ema" in loaded or "state_dict" in loaded:
        raise ValueError(
            f"{str(path)!r} has no {' or '.join(repr(k) for k in wanted)} (use_ema={use_ema}); "
            f"its entries are {sorted(loaded)}."
        )
    if loaded and all(hasattr(value, "shape") for value in loaded.values()):
        return "bare state dict", loaded
    raise ValueError(
        f"{str(path)!r} is not a state dict and has no 'state_dict' or "
        f"'state_dict_ema'; its entries are {sorted(loaded)[:20]}."
    )


def read_checkpoint(path, use_ema: bool = True) -> Checkpoint:
    """Reads an official Cream (or timm) checkpoint: a `.pth.tar` holding `state_dict` and/or
    `state_dict_ema`, or a bare state dict; a `module.` prefix (distributed training) is removed.

    use_ema: take `state_dict_ema` when the file has it (what the paper evaluates); False takes
      `state_dict`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"Checkpoint {str(path)!r} does not exist or is not a file; give the path of "
            f"a PyTorch checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})."
        )
    weights, state_dict = _pick_state_dict(_torch_load(path), path, use_ema)
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    arrays = {key: (value.float() if value.is_floating_point() else value).numpy() for key, value in state_dict.items()}
    return Checkpoint(str(path.resolve()), weights, use_ema, arrays)


def build_from_checkpoint(
    arch: Arch, checkpoint: Checkpoint, num_classes: int | None = None, name: str = "cream"
) -> tuple[keras.Model, Arch]:
    """The network `arch` with the checkpoint's weights; returns it and its Arch.

    num_classes: None takes the checkpoint's class count (classifier.weight); a number that
      disagrees with the checkpoint is an error.
    """
    if arch.ops != PRESETS["paper"]:
        raise ValueError(
            f"Official checkpoints hold networks of the paper's space; {arch} is of another "
            f"({arch.ops.name or 'custom'} candidates). Valid is an architecture without ';space=' or ';ops='."
        )
    found = checkpoint.num_classes
    if num_classes is not None and found is not None and num_classes != found:
        raise ValueError(
            f"num_classes={num_classes} disagrees with checkpoint {checkpoint.path!r}, whose "
            f"classifier.weight has {found} classes; pass {found} or leave num_classes out."
        )
    chosen = next((n for n in (num_classes, found) if n is not None), arch.num_classes)
    arch = arch.replace(num_classes=chosen)
    model = build_child(arch, name=name)
    load_state_dict(model, checkpoint.state_dict)
    return model, arch
