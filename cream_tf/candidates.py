"""The operations a choice position may take, and the named sets of them (presets).

A search space offers the same candidates at every choice position; `Arch` carries the set, so
that one architecture string names one network whatever space it came from. The paper's six
(MBConv, kernel 3/5/7 x expansion 4/6, squeeze-excite 0.25, swish) are the default.

Kinds:
- `mbconv`: 1x1 expansion, k x k depthwise (optionally dilated), optional squeeze-excite, 1x1
  projection; residual when stride 1 and channels match. A dilated depthwise convolution at a
  stride-2 position runs at stride 1 and keeps every second row and column after its BatchNorm
  and activation (TensorFlow has no strided dilated convolution; in inference the result equals
  PyTorch's `Conv2d(stride=2, dilation=d)`, in training BatchNorm's batch statistics cover the
  stride-1 pixels), so it costs four times the multiply-adds of its strided output, and the
  FLOPs counter says so.
- `bottleneck`: the official code's ResNet bottleneck (`SUPERNET.RESUNIT`,
  microsoft/Cream lib/models/blocks/residual_block.py): 1x1 (out/4) -> BN -> ReLU -> 3x3
  (stride) -> BN -> ReLU -> 1x1 (out) -> BN, a 1x1 + BN projection shortcut when the shape
  changes, ReLU after the sum; its convolutions carry biases.
- `skip`: the identity, which makes depth searchable. Only where stride is 1 and the channels
  match, so never at a stage's first position.

Compact tokens (the architecture string's `ops=`): `k3_e4` is MBConv k3 e4 with SE 0.25 and swish;
suffixes `_d2` (dilation), `_se0.5` or `_nose`, and an activation `_relu`, `_relu6`, `_hswish`
change it; `bottleneck` and `skip` are the other kinds.

    >>> Candidate.parse("k5_e6_nose_relu6")
    Candidate(kind='mbconv', kernel=5, expansion=6.0, dilation=1, se=0.0, activation='relu6')
    >>> Candidate(kernel=3, expansion=6, dilation=2).token
    'k3_e6_d2'
"""

from __future__ import annotations

import dataclasses
import re

KINDS = ("mbconv", "bottleneck", "skip")
ACTIVATIONS = ("swish", "relu", "relu6", "hard_swish")
_TOKEN_ACTIVATIONS = {"swish": "swish", "relu": "relu", "relu6": "relu6", "hswish": "hard_swish"}
DEFAULT_SE = 0.25


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One operation of a space. `kernel`, `expansion`, `dilation`, `se` and `activation` apply
    to `mbconv` only; `se` is the squeeze-excite width as a share of the middle channels (0: none)."""

    kind: str = "mbconv"
    kernel: int = 3
    expansion: float = 4.0
    dilation: int = 1
    se: float = DEFAULT_SE
    activation: str = "swish"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Unknown candidate kind {self.kind!r}; valid are {', '.join(KINDS)}.")
        if self.kind != "mbconv":  # the other kinds have no settings: one value each
            object.__setattr__(self, "kernel", 3)
            object.__setattr__(self, "expansion", 4.0 if self.kind == "bottleneck" else 1.0)
            object.__setattr__(self, "dilation", 1)
            object.__setattr__(self, "se", 0.0)
            object.__setattr__(self, "activation", "relu" if self.kind == "bottleneck" else "swish")
            return
        object.__setattr__(self, "expansion", float(self.expansion))
        object.__setattr__(self, "se", float(self.se))
        if not isinstance(self.kernel, int) or self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"Candidate kernel must be an odd integer >= 1; got {self.kernel!r} in {self}.")
        if not self.expansion >= 1.0:
            raise ValueError(f"Candidate expansion must be >= 1; got {self.expansion!r} in {self}.")
        if not isinstance(self.dilation, int) or self.dilation < 1:
            raise ValueError(f"Candidate dilation must be an integer >= 1; got {self.dilation!r} in {self}.")
        if not 0.0 <= self.se < 1.0:
            raise ValueError(f"Candidate se must be in [0, 1) (0: no squeeze-excite); got {self.se!r} in {self}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Unknown candidate activation {self.activation!r}; valid are {', '.join(ACTIVATIONS)}.")

    @property
    def token(self) -> str:
        if self.kind != "mbconv":
            return self.kind
        parts = [f"k{self.kernel}", f"e{self.expansion:g}"]
        if self.dilation != 1:
            parts.append(f"d{self.dilation}")
        if self.se == 0:
            parts.append("nose")
        elif self.se != DEFAULT_SE:
            parts.append(f"se{self.se:g}")
        if self.activation != "swish":
            parts.append({v: k for k, v in _TOKEN_ACTIVATIONS.items()}[self.activation])
        return "_".join(parts)

    @classmethod
    def parse(cls, token: str) -> Candidate:
        token = token.strip()
        if token in ("bottleneck", "skip"):
            return cls(kind=token)
        match = re.fullmatch(r"k(\d+)_e(\d+(?:\.\d+)?)(?:_d(\d+))?(?:_(nose|se\d*\.?\d+))?(?:_(\w+))?", token)
        if not match or (match.group(5) and match.group(5) not in _TOKEN_ACTIVATIONS):
            raise ValueError(
                f"Malformed candidate {token!r}: valid are 'bottleneck', 'skip' and MBConv tokens such as "
                f"k3_e4, k3_e6_d2, k5_e6_nose_relu6, k3_e4_se0.5_hswish (activations: "
                f"{', '.join(_TOKEN_ACTIVATIONS)})."
            )
        kernel, expansion, dilation, se, activation = match.groups()
        return cls(
            kernel=int(kernel),
            expansion=float(expansion),
            dilation=int(dilation or 1),
            se=0.0 if se == "nose" else float(se[2:]) if se else DEFAULT_SE,
            activation=_TOKEN_ACTIVATIONS[activation or "swish"],
        )


def _mbconvs(kernels, expansions, **settings) -> tuple[Candidate, ...]:
    return tuple(Candidate(kernel=k, expansion=e, **settings) for k in kernels for e in expansions)


PAPER = _mbconvs((3, 5, 7), (4, 6))  # choice index -> (kernel, expansion), as the paper and official code


@dataclasses.dataclass(frozen=True)
class OpSet:
    """A space's candidates plus what the fixed blocks (stem, the depthwise-separable block, the
    last 1x1 conv, the head) use: their activation and the separable block's squeeze-excite."""

    ops: tuple[Candidate, ...] = PAPER
    fixed_activation: str = "swish"
    fixed_se: float = DEFAULT_SE

    def __post_init__(self):
        ops = tuple(Candidate(**op) if isinstance(op, dict) else op for op in self.ops)
        object.__setattr__(self, "ops", ops)
        object.__setattr__(self, "fixed_se", float(self.fixed_se))
        if not ops:
            raise ValueError("A space needs at least one candidate operation; got none.")
        if all(op.kind == "skip" for op in ops):
            raise ValueError(
                "A space of only 'skip' candidates has no operation for a stage's first position (which "
                "changes the stride or the channels); add an mbconv or bottleneck candidate."
            )
        if len(set(ops)) != len(ops):
            raise ValueError(f"The candidates repeat an operation: {[op.token for op in ops]}.")
        if self.fixed_activation not in ACTIVATIONS:
            raise ValueError(f"Unknown fixed_activation {self.fixed_activation!r}; valid are {', '.join(ACTIVATIONS)}.")
        if not 0.0 <= self.fixed_se < 1.0:
            raise ValueError(f"fixed_se must be in [0, 1) (0: no squeeze-excite); got {self.fixed_se!r}.")

    @property
    def name(self) -> str | None:
        """The preset this set is, if any."""
        return next((name for name, preset in PRESETS.items() if preset == self), None)

    @property
    def fixed_token(self) -> str:
        return Candidate(kernel=3, expansion=1, se=self.fixed_se, activation=self.fixed_activation).token[6:]

    def to_string(self) -> str:
        """The architecture string's suffix: '' for the paper's, ';space=NAME' for another preset,
        ';ops=A+B+...' (and ';fixed=...' when the fixed blocks differ) otherwise."""
        name = self.name
        if name == "paper":
            return ""
        if name:
            return f";space={name}"
        fixed = f";fixed={self.fixed_token}" if self.fixed_token else ""
        return ";ops=" + "+".join(op.token for op in self.ops) + fixed

    @classmethod
    def from_strings(cls, space: str | None, ops: str | None, fixed: str | None) -> OpSet:
        if space is not None:
            if ops is not None or fixed is not None:
                raise ValueError("An architecture string names its space (space=) or lists it (ops=), not both.")
            if space not in PRESETS:
                raise ValueError(f"Unknown space {space!r}; valid are {', '.join(PRESETS)}.")
            return PRESETS[space]
        if ops is None:
            if fixed is not None:
                raise ValueError("fixed= needs ops= beside it in an architecture string.")
            return PRESETS["paper"]
        settings = {}
        if fixed:
            gate = Candidate.parse("k3_e1_" + fixed)
            settings = {"fixed_activation": gate.activation, "fixed_se": gate.se}
        return cls(tuple(Candidate.parse(token) for token in ops.split("+")), **settings)


PRESETS: dict[str, OpSet] = {
    # The paper's six: what every published model and official checkpoint uses.
    "paper": OpSet(),
    # The official code's extra switches as they were meant (generality notes): dilated k3/k5
    # depthwise (dilation 2, expansion 6) and the ResNet bottleneck, beside the paper's six.
    "extended": OpSet(
        (
            *PAPER,
            Candidate(kernel=3, expansion=6, dilation=2),
            Candidate(kernel=5, expansion=6, dilation=2),
            Candidate("bottleneck"),
        )
    ),
    # Depth search: a position may be skipped (not a stage's first).
    "depth": OpSet((*PAPER, Candidate("skip"))),
    # Integer-friendly for NPUs, DSPs and the Edge TPU: no squeeze-excite, ReLU6 or hard-swish
    # (no LOGISTIC in an int8 file), k3/k5 x e3/e6; the fixed blocks hard-swish, no SE.
    "npu": OpSet(
        _mbconvs((3, 5), (3, 6), se=0.0, activation="relu6")
        + _mbconvs((3, 5), (3, 6), se=0.0, activation="hard_swish"),
        fixed_activation="hard_swish",
        fixed_se=0.0,
    ),
}
