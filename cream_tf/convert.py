"""Weights from the official PyTorch Cream models into our Keras child nets.

The official checkpoints (and timm's MobileNetV3) name parameters after the module tree
(`blocks.3.1.conv_dw.weight`, `bn1.running_var`, `classifier.bias`, ...); our layers carry
the same names with '_' for '.', so the mapping is by name, with only the layouts changed:
Conv2D OIHW -> HWIO, depthwise (C,1,k,k) -> (k,k,C,1), Dense (out,in) -> (in,out).
"""

from __future__ import annotations

from typing import Mapping

import keras
import numpy as np

_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def torch_module_name(layer_name: str) -> str:
    """'blocks_3_1_se_conv_reduce' -> 'blocks.3.1.se.conv_reduce'; 'conv_stem' -> 'conv_stem'."""
    if not layer_name.startswith("blocks_"):
        return layer_name
    _, stage, block, rest = layer_name.split("_", 3)
    return f"blocks.{stage}.{block}.{rest.replace('se_conv_', 'se.conv_')}"


def _expected(layer) -> dict[str, callable]:
    """Torch key -> function turning that tensor into the Keras layout, for one layer's weights."""
    prefix = torch_module_name(layer.name)
    if isinstance(layer, keras.layers.BatchNormalization):
        return {f"{prefix}.{field}": (lambda a: a) for field in _BN_FIELDS}
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = lambda a: np.transpose(a, (2, 3, 0, 1))  # noqa: E731
    elif isinstance(layer, keras.layers.Conv2D):
        kernel = lambda a: np.transpose(a, (2, 3, 1, 0))  # noqa: E731
    elif isinstance(layer, keras.layers.Dense):
        kernel = lambda a: np.transpose(a)  # noqa: E731
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
                mismatch = (f"{key}: checkpoint shape {tuple(np.asarray(state_dict[key]).shape)} "
                            f"does not fit layer {layer.name!r} weight of shape {tuple(variable.shape)} "
                            "(in Keras layout)")
            arrays.append(array)
        plan.append((layer, arrays))
    unexpected = sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))
    if missing or unexpected or mismatch:
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:20])}"
                            + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}"
                            + (" ..." if len(unexpected) > 20 else ""))
        if mismatch:
            problems.append(f"first shape mismatch: {mismatch}")
        raise ValueError(f"The checkpoint does not fit model {model.name!r}: " + "; ".join(problems))
    for layer, arrays in plan:
        layer.set_weights(arrays)
