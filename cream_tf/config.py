"""Typed experiment configuration: dataclasses, YAML files and `--params_override`.

Every option lives here with its default and a comment; YAML files under `configs/` set the
ones that differ, and `--params_override` ("train.epochs=2,data.batch_size=64" or an inline
YAML/JSON mapping) changes single values on the command line, as in Model Garden
(cream_tf.typed_yaml reads and writes them). Unknown keys and values of the wrong type are
errors that name the key and what is valid; each section's `validate()` checks the values.
"""

from __future__ import annotations

import dataclasses
import functools

from cream_tf.candidates import PAPER, Candidate, OpSet

# Reading and writing configs (re-exported: `config.load(SearchConfig, file, overrides)`).
from cream_tf.typed_yaml import (
    describe,
    flatten,
    from_dict,
    load,
    merge,
    parse_override,
    read_files,
    read_yaml,
    save,
    to_dict,
    to_yaml,
)

__all__ = [
    "describe",
    "flatten",
    "from_dict",
    "load",
    "merge",
    "parse_override",
    "read_yaml",
    "save",
    "to_dict",
    "to_yaml",
]

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


def require(config, key: str, condition, valid: str, prefix: str = "") -> None:
    """Raises `invalid` for `key` (a dotted path into `config`; named `prefix + key` in the
    error) unless `condition(value)` holds."""
    value = functools.reduce(getattr, key.split("."), config)
    if not condition(value):
        raise invalid(prefix + key, value, valid)


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
    # What every choice position may take (cream_tf.candidates: kinds, settings; presets in configs/spaces).
    candidates: tuple[Candidate, ...] = PAPER
    fixed_activation: str = "swish"  # the stem's, the separable block's, the last conv's and the head's
    fixed_se: float = 0.25  # the separable block's squeeze-excite (0 = none)
    # [min, max] predicted LiteRT latency of sampled paths, ms (cream_tf.latency); [] = FLOPs alone.
    latency_ms: tuple[float, ...] = ()
    latency_table: str = ""  # its table file; "" = this host's, the space's blocks measured first
    latency_precision: str = "float32"  # or int8: which TFLite file the bounds are for
    latency_threads: int = 1
    latency_calibration: int = 10  # whole networks measured to calibrate the table's sum (cream_tf.latency)

    def opset(self) -> OpSet:
        """The candidates and fixed-block settings as one value (checked: ValueError naming what is wrong)."""
        return OpSet(self.candidates, self.fixed_activation, self.fixed_se)


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
    prior: tuple[float, ...] = (0.05, 0.2, 0.05, 0.5, 0.05, 0.15)  # per candidate; empty = uniform
    max_sampling_tries: int = 10000  # rejection sampling to the FLOPs range


@dataclasses.dataclass
class Checkpointing:
    """Mid-epoch checkpoints, beside the ones at epoch ends, so a preempted run loses minutes, not
    an epoch; SIGTERM and SIGINT always write one before the run stops. Both `train` sections
    (search and retrain) have these keys."""

    checkpoint_every_steps: int = 0  # also every N steps within an epoch (0 = off)
    checkpoint_every_minutes: float = 0.0  # also every N minutes within an epoch (0 = off)

    def validate_checkpointing(self, prefix: str) -> None:
        """`prefix`: how the error names the section ("train.")."""
        for key in ("checkpoint_every_steps", "checkpoint_every_minutes"):
            require(self, key, lambda v: v >= 0, "0 (off) or more", prefix=prefix)


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
    jit_compile: bool = False  # XLA; slower on CPUs (benchmarks/RESULTS.md): measure before enabling


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
        self.train.validate_checkpointing("train.")
        ops = [op.token for op in self.space.opset().ops]
        valid = f"[] (uniform) or one probability per candidate ({len(ops)}: {', '.join(ops)})"
        require(self, "cream.prior", lambda v: len(v) in (0, len(ops)), valid)
        valid = "[] (no latency bound) or [min, max] ms with 0 <= min <= max"
        require(self, "space.latency_ms", lambda v: not v or (len(v) == 2 and 0 <= v[0] <= v[1]), valid)
        require(self, "space.latency_precision", lambda v: v in ("float32", "int8"), "float32 or int8")
        require(self, "space.latency_threads", lambda v: v >= 1, "an integer >= 1")
        require(self, "space.latency_calibration", lambda v: v >= 0, "an integer >= 0")


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
    lr: float = 0.0001  # peak; larger rates lose more top-1 in the fine-tune (benchmarks/RESULTS.md)
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
    # by TFMOT's moving average of each training batch's min and max (compared in RESULTS.md).
    freeze_ranges: bool = True
    # How the activation ranges are calibrated (cream_tf.qat.calibrate_ranges): 'batch_mean', the
    # mean of each batch's min and max, or 'minmax' over all the calibration images, as
    # post-training quantization does; minmax takes in the calibration sample's outliers
    # (compared in benchmarks/RESULTS.md).
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
        self.validate_checkpointing("")  # validate() names the section


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
        self.train.validate_checkpointing("train.")
        self.qat.validate()
        if self.qat.enabled:
            require(self, "export.enabled", bool, "true when qat.enabled (QAT fine-tunes the exported entry)")


def config_class_of(config_file: str, params_override: str = "") -> type:
    """Which config a file (with its overrides) is: RetrainConfig when it names a section or a
    `train` key only a retrain has (export, qat; optimizer, lr_schedule, ...), SearchConfig
    otherwise (the default command's), so `--mode=config` shows a file as the mode that reads it."""
    try:
        given = merge(read_files(config_file), parse_override(params_override))
    except ValueError:
        return SearchConfig  # load() names the problem

    def own(cls, other):
        return {f.name for f in dataclasses.fields(cls)} - {f.name for f in dataclasses.fields(other)}

    sections = set(given)
    train = set(given.get("train") or {}) if isinstance(given.get("train"), dict) else set()
    retrain_only = sections & own(RetrainConfig, SearchConfig) or train & own(RecipeConfig, TrainConfig)
    return RetrainConfig if retrain_only else SearchConfig
