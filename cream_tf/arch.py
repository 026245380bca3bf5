"""The Cream search space and `Arch`, the one description of a network in it.

An `Arch` is a small immutable value: the choice index of every block in the five
choice stages, the candidate operations those indices choose from (cream_tf.candidates; the
paper's six by default), plus the few settings that shape the network around them (input size
and channels, class count, stem width and stride, dropout, drop-path). The FLOPs
counter, the child-net builder, the zoo, the exporter and the search all take an `Arch`,
and all of them decode it through `block_specs`, so there is one meaning of every
architecture.

Canonical string (what `str(arch)` returns and `Arch.parse` reads):

    [3][3,3][3,1,3][3,3,3,3][3,3,3]@224;in=3;classes=1000;stem=16/2;dropout=0.2;drop_path=0

Only the bracketed path is required; every `;key=value` after it is optional and
defaults to the ImageNet settings. `@224` gives the input size. An architecture of another
space than the paper's ends with `;space=NAME` (a preset of cream_tf.candidates) or
`;ops=TOKEN+TOKEN+...` (and `;fixed=...` when the fixed blocks differ): its indices choose
from those.

Example:

    >>> arch = Arch.parse("[3][3,3][3,1,3][3,3,3,3][3,3,3]@224")
    >>> arch.depths
    (1, 2, 3, 4, 3)
    >>> Arch.parse("[0][0,6][0,6][0][0]@32;space=depth").ops.ops[6].kind
    'skip'
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence

from cream_tf.candidates import PRESETS, Candidate, OpSet


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One choice stage: output channels and the stride of its first block."""

    channels: int
    stride: int


STAGES: tuple[StageSpec, ...] = (
    StageSpec(24, 2),
    StageSpec(40, 2),
    StageSpec(80, 2),
    StageSpec(96, 1),
    StageSpec(192, 2),
)
# The deepest stage of any published Cream model (cream_604 has six blocks in stages 4 and 5);
# the supernet a search trains is usually shallower (see flops.depths_for_flops_range).
MAX_BLOCKS = 6
DS_CHANNELS = 16  # fixed depthwise-separable stage 0
LAST_CHANNELS = 320  # fixed 1x1 conv stage 6
HEAD_CHANNELS = 1280


def _strided(size: int, stride: int) -> int:
    """A side after a stride, with symmetric dilation * (k//2) padding (PyTorch style) and odd kernels."""
    return (size - 1) // stride + 1


def allowed_at(op: Candidate, block_index: int) -> bool:
    """Whether `op` may stand at a stage's block `block_index`: a skip never at a stage's first
    block, which changes the stride or the channels."""
    return op.kind != "skip" or block_index > 0


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels as timm/the official code do: to a multiple of `divisor`, at most 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One block of the decoded network, with every width and stride resolved.

    kind: 'stem' (conv-bn-act), 'ds' (depthwise-separable), 'ir' (MBConv), 'bottleneck'
    (ResNet), 'skip' (identity), 'cn' (1x1 conv-bn-act). `stage` is the position in the
    official module tree (0 = ds stage, 1..5 = choice stages, 6 = cn stage; -1 = stem);
    `choice` is -1 for fixed blocks. `se_channels` 0: no squeeze-excite.
    """

    kind: str
    stage: int
    index: int
    choice: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    mid_channels: int
    se_channels: int
    in_size: int
    activation: str = "swish"
    dilation: int = 1

    @property
    def out_size(self) -> int:
        return _strided(self.in_size, self.stride)

    @property
    def subsampled(self) -> bool:
        """A dilated depthwise convolution at stride 2: it runs at stride 1 and every second row
        and column is kept after it (cream_tf.blocks), which the FLOPs counter counts."""
        return self.dilation > 1 and self.stride > 1

    @property
    def residual(self) -> bool:
        """An identity shortcut around the block's layers (a bottleneck that changes the shape
        has a projection shortcut instead)."""
        return self.kind in ("ds", "ir", "bottleneck") and self.stride == 1 and self.in_channels == self.out_channels

    @property
    def name(self) -> str:
        """Layer-name prefix, mirroring the official module tree (`blocks.2.1` -> `blocks_2_1`)."""
        return "stem" if self.kind == "stem" else f"blocks_{self.stage}_{self.index}"


_PATH_RE = re.compile(r"^\s*((?:\[\s*\d+(?:\s*,\s*\d+)*\s*\]\s*){5})(?:@\s*(\d+))?\s*$")
_KEYS = ("in", "classes", "stem", "dropout", "drop_path", "space", "ops", "fixed")


@dataclasses.dataclass(frozen=True)
class Arch:
    """A network of the Cream space: block choices per stage plus the settings around them.

    Attributes:
      choices: five tuples, one per choice stage, of indices into `ops.ops`.
      input_size: side of the square input image.
      in_channels: 3 for RGB, 1 for grayscale.
      num_classes: width of the classifier.
      stem_channels: width of the stem convolution.
      stem_stride: 2 as in the paper; 1 for small images such as 28x28.
      dropout: dropout rate before the classifier.
      drop_path: stochastic-depth rate of the last block; scaled linearly from 0 at the first.
      ops: the candidate operations and the fixed blocks' settings (default: the paper's).
    """

    choices: tuple[tuple[int, ...], ...]
    input_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    stem_channels: int = 16
    stem_stride: int = 2
    dropout: float = 0.2
    drop_path: float = 0.0
    ops: OpSet = PRESETS["paper"]

    def __post_init__(self):
        choices = tuple(tuple(int(c) for c in stage) for stage in self.choices)
        object.__setattr__(self, "choices", choices)
        if len(choices) != len(STAGES):
            raise ValueError(f"An architecture has {len(STAGES)} choice stages; got {len(choices)}: {choices}.")
        for i, (stage, spec) in enumerate(zip(choices, STAGES)):
            if not 1 <= len(stage) <= MAX_BLOCKS:
                raise ValueError(f"Stage {i + 1} (c{spec.channels}) has {len(stage)} blocks; valid is 1..{MAX_BLOCKS}.")
            for b, c in enumerate(stage):
                if not 0 <= c < len(self.ops.ops):
                    raise ValueError(
                        f"Choice index {c} in stage {i + 1} is out of range; valid is 0..{len(self.ops.ops) - 1}: "
                        + ", ".join(f"{k} {op.token}" for k, op in enumerate(self.ops.ops))
                        + "."
                    )
                if not allowed_at(self.ops.ops[c], b):
                    raise ValueError(
                        f"Choice index {c} (skip) at the first block of stage {i + 1}: a stage's first block "
                        "changes the stride or the channels, so it cannot be skipped."
                    )
        _check_int("in_channels", self.in_channels, 1)
        _check_int("num_classes", self.num_classes, 1)
        _check_int("stem_channels", self.stem_channels, 1)
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2; got {self.stem_stride!r}.")
        for name in ("dropout", "drop_path"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {value!r}.")
        _check_int("input_size", self.input_size, 1)
        min_size = self.total_stride
        if self.input_size < min_size:
            raise ValueError(
                f"input_size {self.input_size} is too small for this network: its strides reduce "
                f"the image by {self.total_stride}x, so the input must be at least {min_size} pixels "
                f"(or use stem_stride=1 for small images)."
            )

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(stage) for stage in self.choices)

    @property
    def total_stride(self) -> int:
        stride = self.stem_stride
        for spec in STAGES:
            stride *= spec.stride
        return stride

    @property
    def path(self) -> str:
        """The bracketed choices alone, e.g. '[3][3,3][3,1,3][3,3,3,3][3,3,3]'."""
        return "".join("[" + ",".join(str(c) for c in stage) + "]" for stage in self.choices)

    def __str__(self) -> str:
        return (
            f"{self.path}@{self.input_size};in={self.in_channels};classes={self.num_classes};"
            f"stem={self.stem_channels}/{self.stem_stride};dropout={self.dropout:g};"
            f"drop_path={self.drop_path:g}{self.ops.to_string()}"
        )

    def replace(self, **changes) -> Arch:
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, text: str, **defaults) -> Arch:
        """Reads the canonical string; keyword arguments fill settings the string leaves out."""
        if not isinstance(text, str):
            raise ValueError(f"An architecture string must be a str; got {type(text).__name__}.")
        head, *options = text.split(";")
        match = _PATH_RE.match(head)
        if not match:
            raise ValueError(
                f"Malformed architecture string {text!r}: expected five bracketed lists of choice "
                "indices with an optional input size and settings, e.g. "
                "'[3][3,3][3,1,3][3,3,3,3][3,3,3]@224;in=3;classes=1000'."
            )
        fields = dict(defaults)
        space = {}
        fields["choices"] = [
            tuple(int(c) for c in group.split(",")) for group in re.findall(r"\[([^\]]*)\]", match.group(1))
        ]
        if match.group(2):
            fields["input_size"] = int(match.group(2))
        for option in options:
            key, sep, value = (part.strip() for part in option.partition("="))
            if not sep or key not in _KEYS:
                raise ValueError(
                    f"Malformed setting {option!r} in architecture string {text!r}; valid keys are "
                    f"{', '.join(_KEYS)} as key=value."
                )
            try:
                if key == "stem":
                    width, _, stride = value.partition("/")
                    fields["stem_channels"] = int(width)
                    if stride:
                        fields["stem_stride"] = int(stride)
                elif key in ("dropout", "drop_path"):
                    fields[key] = float(value)
                elif key in ("space", "ops", "fixed"):
                    space[key] = value
                else:
                    fields[{"in": "in_channels", "classes": "num_classes"}[key]] = int(value)
            except ValueError:
                raise ValueError(
                    f"Setting {option!r} in architecture string {text!r} has a value that is not a number."
                ) from None
        if space:
            fields["ops"] = OpSet.from_strings(space.get("space"), space.get("ops"), space.get("fixed"))
        return cls(**fields)

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ops"}
        data["choices"] = [list(stage) for stage in self.choices]
        if self.ops != PRESETS["paper"]:
            data["ops"] = [op.token for op in self.ops.ops]
            data["fixed"] = self.ops.fixed_token
        data["string"] = str(self)
        return data

    @classmethod
    def from_json(cls, data: dict | str) -> Arch:
        if isinstance(data, str):
            data = json.loads(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known - {"string", "fixed"}
        if unknown:
            raise ValueError(f"Unknown architecture field(s) {sorted(unknown)}; valid are {sorted(known)}.")
        fields = {k: v for k, v in data.items() if k in known and k != "ops"}
        if "ops" in data:
            fields["ops"] = OpSet.from_strings(None, "+".join(data["ops"]), data.get("fixed") or None)
        return cls(**fields)


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def block_specs(arch: Arch) -> list[BlockSpec]:
    """Decodes an architecture into its blocks, stem first, cn stage last (head excluded)."""
    specs = fixed_head_specs(arch)
    for stage_index, block_index, channels, size in _positions(arch):
        specs.append(
            choice_spec(arch.ops, stage_index, block_index, arch.choices[stage_index - 1][block_index], channels, size)
        )
    return [*specs, _cn_spec(arch)]


def fixed_head_specs(arch: Arch) -> list[BlockSpec]:
    """The stem and the depthwise-separable block."""
    act, size = arch.ops.fixed_activation, arch.input_size
    stem = BlockSpec("stem", -1, 0, -1, 3, arch.stem_stride, arch.in_channels, arch.stem_channels, 0, 0, size, act)
    se = make_divisible(arch.stem_channels * arch.ops.fixed_se) if arch.ops.fixed_se else 0
    ds = BlockSpec("ds", 0, 0, -1, 3, 1, arch.stem_channels, DS_CHANNELS, 0, se, stem.out_size, act)
    return [stem, ds]


def _cn_spec(arch: Arch) -> BlockSpec:
    size = fixed_head_specs(arch)[-1].out_size
    for spec in STAGES:
        size = _strided(size, spec.stride)
    return BlockSpec(
        "cn", len(STAGES) + 1, 0, -1, 1, 1, STAGES[-1].channels, LAST_CHANNELS, 0, 0, size, arch.ops.fixed_activation
    )


def _positions(arch: Arch):
    """(stage, block, input channels, input size) of every choice position, in network order.
    Widths and strides are the stages', so these do not depend on the choices."""
    channels, size = DS_CHANNELS, fixed_head_specs(arch)[-1].out_size
    for stage_index, (depth, spec) in enumerate(zip(arch.depths, STAGES), start=1):
        for block_index in range(depth):
            yield stage_index, block_index, channels, size
            if block_index == 0:
                size = _strided(size, spec.stride)
            channels = spec.channels


def choice_spec(ops: OpSet, stage_index: int, block_index: int, choice: int, in_channels: int, size: int) -> BlockSpec:
    """The block at a choice position taking candidate `choice`."""
    spec = STAGES[stage_index - 1]
    op: Candidate = ops.ops[choice]
    stride = spec.stride if block_index == 0 else 1
    common = dict(stage=stage_index, index=block_index, choice=choice, stride=stride, in_channels=in_channels)
    common.update(out_channels=spec.channels, in_size=size)
    if op.kind == "bottleneck":
        return BlockSpec(
            "bottleneck", kernel=3, mid_channels=spec.channels // 4, se_channels=0, activation="relu", **common
        )
    if op.kind == "skip":
        return BlockSpec("skip", kernel=1, mid_channels=0, se_channels=0, **common)
    mid = make_divisible(in_channels * op.expansion)
    se = make_divisible(mid * op.se) if op.se else 0
    return BlockSpec(
        "ir",
        kernel=op.kernel,
        mid_channels=mid,
        se_channels=se,
        activation=op.activation,
        dilation=op.dilation,
        **common,
    )


def uniform_arch(depths: Iterable[int], choice: int, **settings) -> Arch:
    """The architecture with `choice` in every block, `depths` blocks per stage."""
    return Arch(tuple((choice,) * d for d in depths), **settings)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The supernet's space: a fixed number of blocks per stage, each free to take any choice.

    `template` carries the settings every path shares (input size, channels, classes, stem,
    dropout, drop-path) and the depths; a path is the tuple of choices, one per block.
    """

    template: Arch

    @classmethod
    def create(cls, depths: Sequence[int], **settings) -> SearchSpace:
        """`settings`: the other `Arch` fields; the template takes the first candidate that is
        not a skip everywhere."""
        ops = settings.get("ops", PRESETS["paper"])
        first = next(c for c, op in enumerate(ops.ops) if op.kind != "skip")
        return cls(uniform_arch(depths, first, **settings))

    @property
    def depths(self) -> tuple[int, ...]:
        return self.template.depths

    @property
    def positions(self) -> list[tuple[int, int]]:
        """(stage, block) of every choice position, in network order; stages count from 1."""
        return [(s, b) for s, depth in enumerate(self.depths, start=1) for b in range(depth)]

    def arch(self, path) -> Arch:
        """The architecture of a path: one choice per position, as any flat sequence of ints
        (a tuple, a list, a numpy or tensor vector)."""
        flat = [int(c) for c in path]
        if len(flat) != len(self.positions):
            raise ValueError(
                f"Path {flat} has {len(flat)} choices; this search space has "
                f"{len(self.positions)} positions (depths {self.depths})."
            )
        stages, start = [], 0
        for depth in self.depths:
            stages.append(tuple(flat[start : start + depth]))
            start += depth
        return self.template.replace(choices=tuple(stages))

    @property
    def ops(self) -> OpSet:
        return self.template.ops

    def fixed_specs(self) -> list[BlockSpec]:
        """The blocks every path shares: stem, ds block, cn block."""
        return [*fixed_head_specs(self.template), _cn_spec(self.template)]

    def choice_specs(self) -> list[list[BlockSpec | None]]:
        """[position][choice] -> the block at that position with that choice; None where the
        candidate is not allowed there (a skip at a stage's first position)."""
        return [
            [
                choice_spec(self.ops, s, b, c, channels, size) if allowed_at(op, b) else None
                for c, op in enumerate(self.ops.ops)
            ]
            for s, b, channels, size in _positions(self.template)
        ]

    def allowed(self) -> list[list[int]]:
        """Per position, the candidate indices a path may take there."""
        return [[c for c, spec in enumerate(row) if spec is not None] for row in self.choice_specs()]
