"""The six published Cream architectures, and building them.

The architectures, their input sizes and the paper's ImageNet accuracies are data, in
`zoo/published.json` at the top of the repository.

Example:

    >>> from cream_tf import zoo
    >>> model = zoo.build("cream_14", num_classes=10)
    >>> model.input_shape, model.output_shape
    ((None, 64, 64, 3), (None, 10))
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import keras

from cream_tf import convert
from cream_tf.arch import Arch
from cream_tf.childnet import build_child
from cream_tf.data.pipeline import IMAGENET_MEAN, IMAGENET_STD

ZOO_FILE = Path(__file__).resolve().parents[1] / "zoo" / "published.json"

# Preprocessing of the published ImageNet models (official retrain settings): RGB scaled to
# [0, 1], then normalized per channel; evaluation resizes and center-crops 0.875.
IMAGENET_PREPROCESSING = {
    "color": "RGB",
    "scale": "x / 255",
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "eval_resize": "resize shorter side to input_size / 0.875 (bilinear), center crop input_size",
}


@functools.cache
def _published() -> dict:
    data = json.loads(ZOO_FILE.read_text())
    return {name: entry for name, entry in data.items() if not name.startswith("_")}


def names() -> list[str]:
    return list(_published())


def entry(name: str) -> dict:
    """The zoo record of `name`: its architecture string and published accuracies."""
    published = _published()
    if name not in published:
        raise ValueError(f"Unknown zoo model {name!r}; valid names are {', '.join(published)}.")
    return published[name]


def arch_of(name: str, **settings) -> Arch:
    """The architecture of a zoo model; `settings` override Arch fields (num_classes, ...)."""
    return Arch.parse(entry(name)["arch"]).replace(**settings)


def build(
    name: str, num_classes: int | None = None, weights: str | None = None, use_ema: bool = True, **settings
) -> keras.Model:
    """Builds zoo model `name` as a functional Keras model.

    Args:
      name: one of `names()`.
      num_classes: classifier width; None means the checkpoint's when `weights` is a PyTorch
        checkpoint, else 1000.
      weights: None for fresh weights; the path of a `.keras` file or a zoo entry folder holding
        one, for the same architecture; or an official PyTorch checkpoint (`.pth.tar`, `.pth`,
        `.pt`; needs torch).
      use_ema: for a PyTorch checkpoint, take its `state_dict_ema` when it has one.
      settings: other Arch fields to override (in_channels, dropout, drop_path, ...).
    """
    if weights is not None and convert.is_checkpoint_path(weights):
        checkpoint = convert.read_checkpoint(weights, use_ema=use_ema)
        model, _ = convert.build_from_checkpoint(arch_of(name, **settings), checkpoint, num_classes, name=name)
        return model
    arch = arch_of(name, num_classes=1000 if num_classes is None else num_classes, **settings)
    model = build_child(arch, name=name)
    if weights is not None:
        load_weights_from(model, weights)
    return model


def weights_file(source, checkpoints: bool = False) -> Path:
    """The file weights `source` names: a `.keras` file, an entry folder's model.keras, or (when
    `checkpoints`) an official PyTorch checkpoint; ValueError naming it otherwise."""
    path = Path(source)
    if checkpoints and convert.is_checkpoint_path(source) and path.is_file():
        return path
    path = path / "model.keras" if path.is_dir() else path
    if path.suffix != ".keras" or not path.is_file():
        options = f"a PyTorch checkpoint ({', '.join(convert.CHECKPOINT_SUFFIXES)})"
        raise ValueError(
            f"weights={str(source)!r} is not a .keras file or a zoo entry folder holding model.keras, "
            f"{'or' if checkpoints else 'nor'} {options}; valid are None or such a path."
        )
    return path


def load_weights_from(model: keras.Model, source, arch: Arch | None = None) -> None:
    """Copies weights into `model`, layer by name, from a `.keras` file, an entry folder holding
    one, or (given the model's `arch`) an official checkpoint. The source may hold layers `model`
    lacks (a classifier): a model without its top takes weights trained with it."""
    path = weights_file(source, checkpoints=arch is not None)
    if convert.is_checkpoint_path(path):
        donor, _ = convert.build_from_checkpoint(arch, convert.read_checkpoint(path))
    else:
        donor = keras.models.load_model(path, compile=False)
    theirs = {layer.name: layer for layer in donor.layers if layer.weights}
    for layer in (layer for layer in model.layers if layer.weights):
        given = theirs.get(layer.name)
        if given is None or [tuple(w.shape) for w in given.weights] != [tuple(w.shape) for w in layer.weights]:
            found = [tuple(w.shape) for w in given.weights] if given is not None else "no such layer"
            raise ValueError(
                f"The weights in {str(source)!r} are for a different architecture than {model.name!r} (input "
                f"{model.input_shape}): its layer {layer.name!r} has weights of shapes "
                f"{[tuple(w.shape) for w in layer.weights]}, the source {found}. Valid are weights of the same "
                "architecture (and class count, with the classifier)."
            )
        layer.set_weights(given.get_weights())
