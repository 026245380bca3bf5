"""Multiply-adds and parameters of any architecture, computed from its description alone.

"FLOPs" here means multiply-adds of convolution and dense layers, the quantity the paper's
model names round (BatchNorm, activations and pooling are not counted). Parameters count
what PyTorch's `parameters()` would: weights, biases and BatchNorm scale and shift, not the
BatchNorm moving statistics.

Example:

    >>> from cream_tf import arch, flops
    >>> cost = flops.cost_of(arch.Arch.parse("[3][3,3][3,1,3][3,3,3,3][3,3,3]@224"))
    >>> round(cost.macs / 1e6, 1), round(cost.params / 1e6, 3)
    (290.8, 6.05)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from cream_tf.arch import HEAD_CHANNELS, STAGES, Arch, BlockSpec, SearchSpace, block_specs


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One convolution or dense layer: its name, kind, shapes (H, W, C), multiply-adds, parameters."""

    name: str
    kind: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    macs: int
    params: int


@dataclasses.dataclass(frozen=True)
class Cost:
    layers: tuple[LayerCost, ...]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    def table(self) -> str:
        """A per-layer table with totals, for `main.py --mode=describe`."""
        header = f"{'layer':<28}{'kind':<10}{'input':>16}{'output':>16}{'MACs':>14}{'params':>12}"
        lines = [header, "-" * len(header)]
        for layer in self.layers:
            lines.append(
                f"{layer.name:<28}{layer.kind:<10}{_shape(layer.in_shape):>16}"
                f"{_shape(layer.out_shape):>16}{layer.macs:>14,}{layer.params:>12,}"
            )
        lines.append("-" * len(header))
        lines.append(f"{'total':<70}{self.macs:>14,}{self.params:>12,}")
        lines.append(f"{self.macs / 1e6:.1f}M multiply-adds, {self.params / 1e6:.3f}M parameters")
        return "\n".join(lines)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def _conv(name, size_in, size_out, cin, cout, kernel, groups=1, bias=False, bn=True):
    macs = size_out * size_out * kernel * kernel * (cin // groups) * cout
    params = kernel * kernel * (cin // groups) * cout + (cout if bias else 0) + (2 * cout if bn else 0)
    kind = "dwconv" if groups > 1 else "conv"
    return LayerCost(name, kind, (size_in, size_in, cin), (size_out, size_out, cout), macs, params)


def _se(prefix, channels, reduced):
    return [
        _conv(f"{prefix}.se.conv_reduce", 1, 1, channels, reduced, 1, bias=True, bn=False),
        _conv(f"{prefix}.se.conv_expand", 1, 1, reduced, channels, 1, bias=True, bn=False),
    ]


def block_cost(spec: BlockSpec) -> list[LayerCost]:
    """The conv layers of one block, named after the official module tree. A dilated depthwise
    convolution at stride 2 counts what runs: stride 1, then every second pixel kept
    (cream_tf.blocks)."""
    p, s_in, s_out = spec.name.replace("_", "."), spec.in_size, spec.out_size
    if spec.kind == "skip":
        return []
    if spec.kind == "bottleneck":
        mid, cin, cout = spec.mid_channels, spec.in_channels, spec.out_channels
        layers = [
            _conv(f"{p}.conv1", s_in, s_in, cin, mid, 1, bias=True),
            _conv(f"{p}.conv2", s_in, s_out, mid, mid, spec.kernel, bias=True),
            _conv(f"{p}.conv3", s_out, s_out, mid, cout, 1, bias=True),
        ]
        return layers if spec.residual else [*layers, _conv(f"{p}.downsample", s_in, s_out, cin, cout, 1, bias=True)]
    if spec.kind == "stem":
        return [_conv("conv_stem", s_in, s_out, spec.in_channels, spec.out_channels, spec.kernel)]
    if spec.kind == "cn":
        return [_conv(f"{p}.conv", s_in, s_out, spec.in_channels, spec.out_channels, 1)]
    if spec.kind == "ds":
        c = spec.in_channels
        return [
            _conv(f"{p}.conv_dw", s_in, s_out, c, c, spec.kernel, groups=c),
            *(_se(p, c, spec.se_channels) if spec.se_channels else []),
            _conv(f"{p}.conv_pw", s_out, s_out, c, spec.out_channels, 1),
        ]
    mid = spec.mid_channels
    dw = _conv(f"{p}.conv_dw", s_in, s_out, mid, mid, spec.kernel, groups=mid)
    if spec.subsampled:
        dw = dataclasses.replace(dw, macs=s_in * s_in * spec.kernel * spec.kernel * mid)
    return [
        _conv(f"{p}.conv_pw", s_in, s_in, spec.in_channels, mid, 1),
        dw,
        *(_se(p, mid, spec.se_channels) if spec.se_channels else []),
        _conv(f"{p}.conv_pwl", s_out, s_out, mid, spec.out_channels, 1),
    ]


def head_cost(in_channels: int, num_classes: int) -> list[LayerCost]:
    """The MobileNetV3 head after global pooling: conv_head (with bias) and the classifier."""
    conv_head = _conv("conv_head", 1, 1, in_channels, HEAD_CHANNELS, 1, bias=True, bn=False)
    classifier = LayerCost(
        "classifier",
        "dense",
        (1, 1, HEAD_CHANNELS),
        (1, 1, num_classes),
        HEAD_CHANNELS * num_classes,
        HEAD_CHANNELS * num_classes + num_classes,
    )
    return [conv_head, classifier]


def cost_of(arch: Arch) -> Cost:
    specs = block_specs(arch)
    layers = [layer for spec in specs for layer in block_cost(spec)]
    layers += head_cost(specs[-1].out_channels, arch.num_classes)
    return Cost(tuple(layers))


def flops_of(arch: Arch) -> int:
    """Multiply-adds of conv and dense layers."""
    return cost_of(arch).macs


def choice_block_macs(arch: Arch) -> int:
    """Multiply-adds of the choice blocks only (stages 1-5), the quantity the official code
    budgets when it sizes the supernet."""
    return sum(layer.macs for spec in block_specs(arch) if spec.choice >= 0 for layer in block_cost(spec))


# The official order in which stages (0-based over the five choice stages) grow, and the
# block count each step may reach (microsoft/Cream, lib/utils/search_structure_supernet.py).
# The c80 stage's last entry there is `ir_r2`, so its step to four entries adds two blocks.
_R2_STAGE = 2
_GROWTH_ORDER = (2, 3, 4, 1, 0, 2, 3, 4, 1, 0)
_GROWTH_LIMIT = (3, 3, 3, 2, 2, 4, 4, 4, 4, 4)


def _depths(entries: Sequence[int]) -> tuple[int, ...]:
    return tuple(n + (1 if i == _R2_STAGE and n == 4 else 0) for i, n in enumerate(entries))


def depths_for_flops_range(min_mflops: float, max_mflops: float, **settings) -> tuple[int, ...]:
    """Blocks per choice stage for a FLOPs range, derived as in the official code.

    Starting from one block per stage, stages grow in the official order while the
    choice-block multiply-adds of the largest net (the most expensive candidate at every
    position; every block k7 e6 in the paper's space) stay within
    `max_mflops`; when even that is below `min_mflops`, growing continues until it reaches
    it. `settings` are the other `Arch` fields (input size, channels, stem stride, ...).
    With the paper's 0..600 at 224x224 this gives (4, 4, 5, 4, 4).

    Raises ValueError when no architecture of any depth meets the range, with the
    reachable range in the message. (The official code then shrinks the input resolution;
    here the input size is the user's choice, so we say which range is reachable instead.)
    """
    if min_mflops > max_mflops or min_mflops < 0:
        raise ValueError(
            f"FLOPs range [{min_mflops}, {max_mflops}] MFLOPs is not a valid range (need 0 <= min <= max)."
        )

    def mflops(entries, pick=max):
        """The choice blocks' MFLOPs with the most (`pick=min`: least) expensive candidate at every
        position: with the paper's six, every block k7 e6 (k3 e4), as the official rule."""
        rows = SearchSpace.create(_depths(entries), **settings).choice_specs()
        return sum(pick(_macs(spec) for spec in row if spec) for row in rows) / 1e6

    full = [1] * len(STAGES)
    for stage, limit in zip(_GROWTH_ORDER, _GROWTH_LIMIT):
        full[stage] = max(full[stage], limit)
    smallest, largest = mflops([1] * len(STAGES), min), mflops(full)
    if smallest > max_mflops or largest < min_mflops:
        raise ValueError(
            f"No architecture meets the FLOPs range [{min_mflops:g}, {max_mflops:g}] MFLOPs at "
            f"these settings ({settings or 'defaults'}): the choice blocks can cost from "
            f"{smallest:.1f} to {largest:.1f} MFLOPs. Widen the range or change the input size."
        )

    entries = [1] * len(STAGES)
    for stage, limit in zip(_GROWTH_ORDER, _GROWTH_LIMIT):
        while entries[stage] < limit:
            grown = list(entries)
            grown[stage] += 1
            # Grow while the largest net is below the minimum, then while it stays within the
            # maximum; the first step over the maximum ends the growth, as in the official code.
            if mflops(entries) >= min_mflops and mflops(grown) > max_mflops:
                return _depths(entries)
            entries = grown
    return _depths(entries)


class FlopsTable:
    """Multiply-adds of every path of a search space by table look-up.

    A block's cost depends only on its position and choice (the widths of each stage are
    fixed), so a path's cost is the fixed part plus one entry per position: exact, and fast
    enough for rejection sampling.
    """

    def __init__(self, space):
        # None where the candidate is not allowed at that position.
        self.table = [[spec and _macs(spec) for spec in row] for row in space.choice_specs()]
        template = [c for stage in space.template.choices for c in stage]
        self.fixed = cost_of(space.template).macs - sum(row[c] for row, c in zip(self.table, template))

    def macs(self, flat_path: Sequence[int]) -> int:
        return self.fixed + sum(row[c] for row, c in zip(self.table, flat_path))

    def range(self) -> tuple[int, int]:
        allowed = [[m for m in row if m is not None] for row in self.table]
        return (self.fixed + sum(min(row) for row in allowed), self.fixed + sum(max(row) for row in allowed))


def _macs(spec: BlockSpec) -> int:
    return sum(layer.macs for layer in block_cost(spec))


def build_space(config) -> SearchSpace:
    """A search config's supernet space: its data's image size, channels and classes, its space
    settings, and its depths (given, or derived from its FLOPs range as the official code does)."""
    d, s = config.data, config.space
    settings = dict(
        input_size=d.image_size,
        in_channels=d.channels,
        num_classes=d.num_classes,
        stem_channels=s.stem_channels,
        stem_stride=s.stem_stride,
        dropout=s.dropout,
        drop_path=s.drop_path,
        ops=s.opset(),
    )
    depths = tuple(s.depths) or depths_for_flops_range(s.flops_min, s.flops_max, **settings)
    return SearchSpace.create(depths, **settings)
