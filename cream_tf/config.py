"""Typed experiment configuration: dataclasses, YAML files and `--params_override`.

Every option lives here with its default and a comment; YAML files under `configs/` set the
ones that differ, and `--params_override` ("search.epochs=2,data.batch_size=64" or an inline
YAML/JSON mapping) changes single values on the command line, as in Model Garden. Unknown keys
and values of the wrong type are errors that name the key and what is valid.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cream_tf import atomic

T = TypeVar("T")

SOURCES = ("fashion_mnist", "folder", "tfrecord", "tfds")
SPLITS = ("train", "validation", "test", "train_full")  # train_full = train + validation
AUGMENTS = ("none", "basic", "randaugment")
PICK_METHODS = ("meta", "top1", "none")
OPTIMIZERS = ("rmsprop", "sgd")
SCHEDULES = ("step", "cosine")
INT8_INPUTS = ("normalized", "pixels")
TRAIN_SPLITS = ("train", "train_full")
RANGE_STATISTICS = ("batch_mean", "minmax")  # how QAT calibrates activation ranges (cream_tf.qat)
EXPORT_PATHS = ("winner", "pareto", "all")  # which board paths a search exports (cream_tf.search.selection)


def invalid(key: str, value, valid: str) -> ValueError:
    """The one form of a bad-setting error: the key, the value received and what is valid."""
    return ValueError(f"{key}={value!r} is not valid; valid: {valid}.")


def require(config, key: str, condition, valid: str) -> None:
    """Raises `invalid` for `key` (a dotted path into `config`) unless `condition(value)` holds."""
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    if not condition(value):
        raise invalid(key, value, valid)


def _positive(config, keys, valid="an integer >= 1"):
    for key in keys:
        require(config, key, lambda v: v >= 1, valid)


@dataclasses.dataclass
class DataConfig:
    """Where images come from and how they are prepared.

    name: 'fashion_mnist' (Debian's dataset-fashion-mnist, then the Keras cache), 'folder'
      (one sub-folder of images per class), 'tfrecord' (ImageNet-format TFRecords) or 'tfds'.
    """

    name: str = "fashion_mnist"
    data_dir: str = ""  # folder/tfrecord: the root; fashion_mnist: override the search path
    tfds_name: str = ""  # tfds: the dataset name, e.g. 'imagenette/320px-v2'
    image_size: int = 28  # side of the square image the network sees
    channels: int = 1  # 1 grayscale, 3 RGB
    num_classes: int = 10
    validation_size: int = 5000  # images of the training split held out for selection
    batch_size: int = 128  # global batch, split over replicas
    seed: int = 0  # fixes which training images are held out as the validation split
    mean: tuple[float, ...] = ()  # per-channel; empty = the dataset's default
    std: tuple[float, ...] = ()
    label_offset: int = 0  # tfrecord: added to stored labels; -1 for classic 1-based ImageNet TFRecords
    # Training-time augmentation (see cream_tf.data.augment); evaluation never augments.
    augment: str = "basic"  # 'none', 'basic' (crop + flip) or 'randaugment' (basic, then RandAugment)
    randaugment_layers: int = 2  # ops per image (timm's n)
    randaugment_magnitude: float = 9.0  # 0..10 (timm's m); the paper: 9
    randaugment_magnitude_std: float = 0.5  # Gaussian noise on the magnitude per op (timm's mstd)
    random_erasing: float = 0.0  # probability per image, per-pixel noise fill; the paper: 0.2
    mixup_alpha: float = 0.0  # > 0 turns labels into float32 [B, num_classes] soft labels
    cutmix_alpha: float = 0.0  # as mixup; with both > 0 each batch uses one of the two

    def validate(self, split: str | None = None) -> None:
        """Raises ValueError naming the first setting (or the split) that is not valid; every
        public function of cream_tf.data calls it first, so a wrong setting fails before tf.data."""

        def bad(key, value, valid):
            raise invalid(f"data.{key}", value, valid)

        if self.name not in SOURCES:
            bad("name", self.name, ", ".join(SOURCES))
        if split is not None and split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; valid splits are {', '.join(SPLITS)}.")
        if split == "validation" and self.validation_size == 0:
            raise ValueError(
                "The validation split is empty: data.validation_size=0 holds nothing out; set it "
                "to the number of training images to hold out."
            )
        if self.name in ("folder", "tfrecord") and not self.data_dir:
            bad("data_dir", self.data_dir, f"the root folder of the {self.name} dataset")
        if self.name == "tfds" and not self.tfds_name:
            bad("tfds_name", self.tfds_name, "a TFDS dataset name such as 'imagenette/320px-v2'")
        if self.channels not in (1, 3):
            bad("channels", self.channels, "1 (grayscale) or 3 (RGB)")
        if self.image_size < 1:
            bad("image_size", self.image_size, "a positive number of pixels")
        if self.num_classes < 1:
            bad("num_classes", self.num_classes, "at least 1")
        if self.validation_size < 0:
            bad("validation_size", self.validation_size, "0 or more images")
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (0, self.channels):
                bad(
                    key,
                    getattr(self, key),
                    f"empty (the dataset's default) or {self.channels} "
                    f"value(s), one per channel (channels={self.channels})",
                )
        if any(s <= 0 for s in self.std):
            bad("std", self.std, "positive values")
        if self.augment not in AUGMENTS:
            bad("augment", self.augment, ", ".join(AUGMENTS))
        if self.randaugment_layers < 1:
            bad("randaugment_layers", self.randaugment_layers, "1 or more")
        if not 0 <= self.randaugment_magnitude <= 10:
            bad("randaugment_magnitude", self.randaugment_magnitude, "0..10")
        if self.randaugment_magnitude_std < 0:
            bad("randaugment_magnitude_std", self.randaugment_magnitude_std, "0 or more")
        if not 0 <= self.random_erasing <= 1:
            bad("random_erasing", self.random_erasing, "a probability in 0..1")
        for key in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                bad(key, getattr(self, key), "0 (off) or a positive Beta distribution parameter")


@dataclasses.dataclass
class SpaceConfig:
    """The supernet around the data's image size, channels and classes."""

    flops_min: float = 0.0  # MFLOPs (conv+dense multiply-adds of the whole net) of sampled paths
    flops_max: float = 600.0
    depths: tuple[int, ...] = ()  # blocks per choice stage; empty = derived from flops_max (official rule)
    stem_channels: int = 16
    stem_stride: int = 2  # 1 for small images such as 28x28
    dropout: float = 0.0  # before the classifier
    drop_path: float = 0.0


@dataclasses.dataclass
class CreamConfig:
    """The Cream algorithm (see shared cream-algorithm notes and the README)."""

    pick_method: str = "meta"  # meta: meta network picks the teacher; top1: best board path; none: SPOS
    board_size: int = 10  # prioritized paths kept
    slice: int = 4  # images stored per board entry; also the meta update's mini-batches
    accuracy_gap: float = 5.0  # percentage points a path must beat the weakest entry by
    warmup_epochs: int = 20  # plain single-path training (and an empty board) before distillation
    meta_update_every: int = 200  # steps between meta network updates
    meta_lr: float = 1e-4
    meta_momentum: float = 0.9
    # Learning rate of the meta step's simulated student step; 0 = the supernet's current lr.
    # (The official code takes the meta lr here, which scales the meta gradient down with it.)
    simulated_step_lr: float = 0.0
    prior: tuple[float, ...] = (0.05, 0.2, 0.05, 0.5, 0.05, 0.15)  # per choice; empty = uniform
    max_sampling_tries: int = 10000  # rejection sampling to the FLOPs range


@dataclasses.dataclass
class Checkpointing:
    """Mid-epoch checkpoints, beside the ones at epoch ends, so a preempted run loses minutes, not
    an epoch; SIGTERM and SIGINT always write one before the run stops. Both `train` sections
    (search and retrain) have these keys."""

    checkpoint_every_steps: int = 0  # also every N steps within an epoch (0 = off)
    checkpoint_every_minutes: float = 0.0  # also every N minutes within an epoch (0 = off)

    KEYS = ("checkpoint_every_steps", "checkpoint_every_minutes")


@dataclasses.dataclass
class TrainConfig(Checkpointing):
    """Supernet optimization: SGD with Nesterov momentum, linear decay to zero."""

    epochs: int = 120
    steps_per_epoch: int = 0  # 0 = one pass over the training split
    lr: float = 1.0  # for the global batch
    warmup_lr_epochs: float = 0.0  # linear ramp from 0 before the decay
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4  # not on BatchNorm parameters and biases
    label_smoothing: float = 0.1
    seed: int = 42
    deterministic: bool = False  # TF op determinism (slower; exact resume)
    jit_compile: bool = False  # XLA made a CPU training step ~10x slower here; measure before enabling


@dataclasses.dataclass
class SelectionConfig:
    """Choosing the result among the board's paths on held-out data."""

    recalibrate_bn: bool = True  # recompute BatchNorm statistics per path first
    recalibrate_batches: int = 10  # training batches used to recompute them
    eval_batches: int = 0  # held-out batches per path; 0 = the whole validation split
    export: bool = True  # write zoo entry folders, one per board path that export_paths names
    export_paths: str = "pareto"  # winner; pareto: the winner and the paths no cheaper one is as accurate as; all


@dataclasses.dataclass
class SearchConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    space: SpaceConfig = dataclasses.field(default_factory=SpaceConfig)
    cream: CreamConfig = dataclasses.field(default_factory=CreamConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)

    def validate(self) -> None:
        """Everything that can be checked before any data is read, with what would be valid."""
        self.data.validate()
        require(self, "cream.pick_method", lambda v: v in PICK_METHODS, ", ".join(PICK_METHODS))
        _positive(self, ("data.batch_size", "train.epochs", "cream.meta_update_every", "cream.board_size"))
        require(
            self,
            "cream.slice",
            lambda v: v >= 1 and 2 * v <= self.data.batch_size,
            f">= 1 and at most half the batch ({self.data.batch_size}): the meta step uses two slices of a batch",
        )
        require(self, "train.lr", lambda v: v > 0, "a number > 0")
        require(self, "selection.export_paths", lambda v: v in EXPORT_PATHS, ", ".join(EXPORT_PATHS))
        require(self, "train.steps_per_epoch", lambda v: v >= 0, "0 (one pass over the split) or more")
        for key in Checkpointing.KEYS:
            require(self, f"train.{key}", lambda v: v >= 0, "0 (off) or more")


@dataclasses.dataclass
class RecipeConfig(Checkpointing):
    """Retraining one architecture: the paper's recipe (official retrain settings) by default.

    The learning rate follows the step: linear warm-up from warmup_lr to the peak over
    warmup_epochs, then either x decay_rate every decay_epochs counted from the first step
    ('step', as timm's StepLRScheduler) or a cosine to zero at the last step ('cosine').
    """

    epochs: int = 500
    steps_per_epoch: int = 0  # 0 = one pass over train_split
    train_split: str = "train_full"  # the held-out validation images are the search's, not needed here
    optimizer: str = "rmsprop"  # 'rmsprop' (TF-style, as the paper) or 'sgd' (Nesterov momentum)
    lr: float = 0.064  # peak, for a global batch of lr_batch_size; scaled linearly to data.batch_size
    lr_batch_size: int = 1024  # the paper: 8 GPUs x 128
    lr_schedule: str = "step"  # 'step' or 'cosine'
    warmup_epochs: float = 3.0
    warmup_lr: float = 1e-6
    decay_epochs: float = 2.4  # 'step' only
    decay_rate: float = 0.973  # 'step' only
    momentum: float = 0.9
    rmsprop_rho: float = 0.9
    rmsprop_epsilon: float = 1e-3  # inside the square root, as TF1 and timm's RMSpropTF
    weight_decay: float = 1e-5  # L2 on conv and dense kernels only, not on BatchNorm parameters or biases
    label_smoothing: float = 0.1
    dropout: float = 0.2  # before the classifier; replaces the architecture's own
    drop_path: float = 0.0  # stochastic depth of the last block (linear from 0); replaces the architecture's own
    ema_decay: float = 0.9999  # EMA of all weights (BatchNorm statistics too), exported; 0 = off
    # Decay min(ema_decay, (1 + step) / (10 + step)), as TF's ExponentialMovingAverage with
    # num_updates: short runs otherwise carry the random initial weights for thousands of steps.
    ema_warmup: bool = False
    # Averaged BatchNorm statistics fit the averaged kernels only when the weights move slowly
    # over the EMA's window (0.9999 over ImageNet's 500 epochs); in short runs they do not, and
    # the EMA model can fall to chance. N > 0 recomputes them on N training batches (no
    # augmentation) in the copy that is evaluated and exported; 0 keeps them, as timm does.
    ema_recalibrate_batches: int = 0
    mixed_precision: bool = True  # float16 compute on GPUs; CPUs always train in float32
    seed: int = 42
    deterministic: bool = False  # TF op determinism (slower)
    checkpoint_every_epochs: int = 1  # a run resumes from the last of these
    eval_split: str = "test"  # reported while training, never used to pick weights
    eval_every_epochs: int = 1  # 0 = only at the end
    eval_batches: int = 0  # 0 = the whole split


@dataclasses.dataclass
class ExportConfig:
    """The zoo entry written after retraining, and `--mode=export` when a config gives data."""

    enabled: bool = True  # retrain: write the entry folder at the end
    int8: bool = True  # also write model_int8.tflite (full-integer post-training quantization)
    calibration_images: int = 256  # training images that set the int8 ranges
    # What model_int8.tflite takes: "normalized" images quantized with the input's scale and zero
    # point (as the float files take them), or "pixels": raw uint8 pixels 0..255, the
    # normalization folded into the model, so a camera frame goes in as it is.
    int8_input: str = "normalized"
    eval_split: str = "test"  # where each format's top-1 is measured for metadata.json
    eval_batches: int = 0  # batches of data.batch_size measured; 0 = the whole split


@dataclasses.dataclass
class QatConfig(Checkpointing):
    """Quantization-aware fine-tuning of an entry's float model (`--mode=qat`, cream_tf.qat).

    The entry's network is rebuilt in tf_keras (TFMOT's QAT takes tf_keras models only), fake
    quantization is inserted as TFLite's int8 kernels quantize, and the weights are fine-tuned
    on the entry's training data for `steps` steps of SGD with Nesterov momentum, the learning
    rate falling from `lr` to zero along a cosine. Calibration images and the evaluation split
    are the export section's.
    """

    enabled: bool = False  # retrain: fine-tune the retrained entry with QAT into model_dir/entry_qat
    steps: int = 300  # fine-tuning steps
    # Peak learning rate. On the Fashion-MNIST winner (benchmarks/RESULTS.md) 0.001 with no label
    # smoothing cost the fake-quantized model 0.44 points of test top-1; 0.0001 with 0.1, 0.05.
    lr: float = 0.0001
    momentum: float = 0.9
    batch_size: int = 0  # images per step; 0 = the entry's data.batch_size
    train_split: str = "train_full"  # of the entry's data
    label_smoothing: float = 0.1  # as the retrain recipe: a fine-tune keeps the objective it was trained on
    # Weight of the float model's softmax in each image's target (the rest: its smoothed label).
    distill: float = 1.0
    # BatchNorm statistics kept as trained (BatchNorm runs on them): a short fine-tune in small
    # batches would otherwise replace the statistics the float model was measured with. Its scale
    # and offset train with the weights either way.
    freeze_batchnorm: bool = True
    # Activation ranges kept as calibrated on the export's calibration images, rather than moved
    # by TFMOT's moving average of each training batch's min and max. On the Fashion-MNIST winner
    # over 5 seeds (benchmarks/RESULTS.md) moving ranges once cost 0.63 points against PTQ; kept, at
    # worst 0.02.
    freeze_ranges: bool = True
    # How the activation ranges are calibrated (cream_tf.qat.calibrate_ranges): 'batch_mean', the
    # mean of each batch's min and max, or 'minmax' over all the calibration images, as
    # post-training quantization. On the Fashion-MNIST winner (benchmarks/RESULTS.md) minmax
    # inherited the calibration sample's outliers (5 seeds: QAT 92.62-92.82, float 92.91);
    # batch_mean kept 92.82-92.95 on the same seeds, 92.73-92.95 (mean 92.85) over 10.
    range_statistic: str = "batch_mean"
    seed: int = 42

    def validate(self) -> None:
        """Raises ValueError naming the first bad key as a config file spells it (qat.steps, ...)."""
        try:
            self._validate()
        except ValueError as error:
            raise ValueError(f"qat.{error}") from None

    def _validate(self) -> None:
        require(self, "steps", lambda v: v >= 1, "an integer >= 1 (fine-tuning steps)")
        require(self, "lr", lambda v: v > 0, "a number > 0")
        require(self, "momentum", lambda v: 0 <= v < 1, "a number in [0, 1)")
        require(self, "batch_size", lambda v: v >= 0, "0 (the data's batch size) or more")
        require(self, "train_split", lambda v: v in TRAIN_SPLITS, ", ".join(TRAIN_SPLITS))
        require(self, "range_statistic", lambda v: v in RANGE_STATISTICS, ", ".join(RANGE_STATISTICS))
        require(self, "label_smoothing", lambda v: 0 <= v < 1, "a number in [0, 1)")
        require(self, "distill", lambda v: 0 <= v <= 1, "a number in [0, 1]")
        for key in Checkpointing.KEYS:
            require(self, key, lambda v: v >= 0, "0 (off) or more")


@dataclasses.dataclass
class RetrainConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: RecipeConfig = dataclasses.field(default_factory=RecipeConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    qat: QatConfig = dataclasses.field(default_factory=QatConfig)

    def validate(self) -> None:
        """Everything that can be checked before any data is read, with what would be valid."""
        self.data.validate()
        require(self, "train.optimizer", lambda v: v in OPTIMIZERS, ", ".join(OPTIMIZERS))
        require(self, "train.lr_schedule", lambda v: v in SCHEDULES, ", ".join(SCHEDULES))
        require(self, "train.train_split", lambda v: v in TRAIN_SPLITS, ", ".join(TRAIN_SPLITS))
        require(self, "export.int8_input", lambda v: v in INT8_INPUTS, ", ".join(INT8_INPUTS))
        for key in ("train.eval_split", "export.eval_split"):
            require(self, key, lambda v: v in SPLITS, ", ".join(SPLITS))
        if self.train.train_split == "train_full":
            require(
                self,
                "train.eval_split",
                lambda v: v == "test",
                "'test' when train.train_split is 'train_full' (the other splits are trained on)",
            )
        _positive(
            self,
            (
                "data.batch_size",
                "train.epochs",
                "train.lr_batch_size",
                "train.checkpoint_every_epochs",
                "export.calibration_images",
            ),
        )
        for key in (
            "steps_per_epoch",
            "eval_every_epochs",
            "eval_batches",
            "ema_recalibrate_batches",
            *Checkpointing.KEYS,
        ):
            require(self, f"train.{key}", lambda v: v >= 0, "0 or more")
        for key in ("lr", "decay_epochs", "rmsprop_epsilon"):
            require(self, f"train.{key}", lambda v: v > 0, "a number > 0")
        for key in ("warmup_epochs", "warmup_lr", "weight_decay", "momentum"):
            require(self, f"train.{key}", lambda v: v >= 0, "a number >= 0")
        require(self, "train.decay_rate", lambda v: 0 < v <= 1, "a factor in (0, 1]")
        for key in ("ema_decay", "label_smoothing", "rmsprop_rho"):
            require(self, f"train.{key}", lambda v: 0 <= v < 1, "a number in [0, 1)")
        require(self, "export.eval_batches", lambda v: v >= 0, "0 (the whole split) or more")
        self.qat.validate()
        if self.qat.enabled:
            require(self, "export.enabled", bool, "true when qat.enabled (QAT fine-tunes the exported entry)")


def from_dict(cls: type[T], data: dict | None, path: str = "") -> T:
    """Builds dataclass `cls` from a mapping, recursing into nested dataclasses, strictly."""
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"Config section {path or cls.__name__!r} must be a mapping; got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            raise ValueError(f"Unknown config key {where!r}; valid keys here are {', '.join(fields)}.")
        values[key] = _coerce(hints[key], value, where)
    return cls(**values)


def _coerce(hint, value, where):
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"Config key {where!r} must be a list; got {value!r}.")
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_coerce(item, v, where) for v in value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads 1e4 (no dot) as a string; Python's float syntax is what users mean.
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint in (int, float, str, bool):
        raise ValueError(f"Config key {where!r} must be {hint.__name__}; got {value!r}.")
    return value


def to_dict(config) -> dict:
    def plain(value):
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def parse_override(text: str) -> dict:
    """'a.b=1,c=x' or a YAML mapping -> nested dict."""
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("{") or "\n" in text:
        parsed = _yaml(text, "--params_override")
        if not isinstance(parsed, dict):
            raise ValueError(f"--params_override {text!r} is not a mapping.")
        return parsed
    result: dict = {}
    for item in _split_top_level(text):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Malformed override {item!r}; expected key.subkey=value pairs separated by commas.")
        node = result
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _yaml(raw, f"--params_override {key.strip()}")
    return result


def _yaml(text: str, where: str):
    """yaml.safe_load, its syntax errors as one line with the line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{where} is not valid YAML{at}: {problem}.") from None


def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside brackets, so 'a=[1,2],b=3' keeps the list whole."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(cls: type[T], config_file: str | None = None, params_override: str = "") -> T:
    """Defaults of `cls`, then the YAML file, then the overrides."""
    data: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ValueError(f"Config file {config_file!r} does not exist.")
        data = _yaml(path.read_text(), f"Config file {config_file!r}") or {}
        if not isinstance(data, dict):
            raise ValueError(f"Config file {config_file!r} is not a mapping of sections (data:, train:, ...).")
    data = merge(data, parse_override(params_override))
    return from_dict(cls, data)


def describe(config) -> str:
    """Every key of `config`, as YAML that loads back, each with its type, default and the
    comment beside its field in this file: `python main.py --mode=config` prints it."""
    lines = []
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        cls = type(value)
        hints, defaults, comments = typing.get_type_hints(cls), cls(), _field_comments(cls)
        lines.append(f"{section.name}:")
        for field in dataclasses.fields(value):
            hint = hints[field.name]
            kind = f"list of {typing.get_args(hint)[0].__name__}" if typing.get_origin(hint) is tuple else hint.__name__
            note = f"{kind}, default {_inline(getattr(defaults, field.name))}"
            if field.name in comments:
                note += f"; {comments[field.name]}"
            lines.append(f"  {field.name}: {_inline(getattr(value, field.name))}  # {note}")
    return "\n".join(lines)


def _inline(value) -> str:
    plain = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(plain, default_flow_style=True).splitlines()[0]


def _field_comments(cls) -> dict[str, str]:
    """The `# ...` comment on each field's line of `cls`'s source."""
    comments = {}
    for line in "\n".join(inspect.getsource(c) for c in cls.__mro__[-2::-1]).splitlines():  # bases first
        match = re.match(r"\s+(\w+):[^=]*=.*?#\s*(.+)$", line)
        if match:
            comments[match.group(1)] = match.group(2)
    return comments


def to_yaml(config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save(config, path) -> None:
    atomic.write_text(path, to_yaml(config))
