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


def load_weights_from(model: keras.Model, source) -> None:
    """Copies weights from a `.keras` file or an entry folder into `model`, layer by layer."""
    path = Path(source)
    if path.is_dir():
        path = path / "model.keras"
    if path.suffix != ".keras" or not path.is_file():
        raise ValueError(
            f"weights={str(source)!r} is not a .keras file or a zoo entry folder holding "
            "model.keras, nor a PyTorch checkpoint ("
            + ", ".join(convert.CHECKPOINT_SUFFIXES)
            + "); valid are None or such a path."
        )
    donor = keras.models.load_model(path, compile=False)
    if [tuple(w.shape) for w in donor.weights] != [tuple(w.shape) for w in model.weights]:
        raise ValueError(
            f"The weights in {str(path)!r} are for a different architecture than "
            f"{model.name!r} (input {model.input_shape}, output {model.output_shape})."
        )
    model.set_weights(donor.get_weights())
