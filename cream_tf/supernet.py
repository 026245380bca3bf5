"""The weight-sharing supernet: every candidate block at every choice position.

The path is an integer tensor (one choice per position) and `tf.switch_case` runs only the
chosen block at each position, so one traced graph serves every path and a step costs about
what its path costs. The candidate blocks are the same `Block` layers the child-net builder
uses, with the same sublayer names, so a child net extracted for a path inherits its weights
one to one.

Example:

    >>> space = SearchSpace.create((2, 2, 2, 2, 2), input_size=32, num_classes=10)
    >>> net = Supernet(space)
    >>> logits = net(tf.zeros((1, 32, 32, 3)), tf.zeros((10,), tf.int32), training=False)
"""

from __future__ import annotations

import functools

import keras
import tensorflow as tf

from cream_tf.arch import HEAD_CHANNELS, SearchSpace
from cream_tf.blocks import Block, Head
from cream_tf.childnet import build_child, drop_path_rates


class Supernet(keras.Model):
    """All paths of `space` in one network; `call(images, path, training)`."""

    def __init__(self, space: SearchSpace, **kwargs):
        super().__init__(name=kwargs.pop("name", "supernet"), **kwargs)
        self.space = space
        stem, ds, cn = space.fixed_specs()
        rates = drop_path_rates(space.template)  # per block after the stem, in network order
        self.stem = Block(stem, fused_bn=True)
        self.ds = Block(ds, drop_path=rates[0], fused_bn=True)
        # None where a candidate is not allowed (a skip at a stage's first position).
        self.choice_blocks = [
            [
                spec and Block(spec, drop_path=rates[1 + position], fused_bn=True, name=f"{spec.name}_choice{choice}")
                for choice, spec in enumerate(row)
            ]
            for position, row in enumerate(space.choice_specs())
        ]
        self.last = Block(cn, drop_path=rates[-1], fused_bn=True)
        t = space.template
        self.head = Head(t.num_classes, HEAD_CHANNELS, t.dropout, t.ops.fixed_activation)
        self._build_every_block()

    def _build_every_block(self):
        """Creates every variable now: variables must not be born inside a switch_case branch."""
        t = self.space.template
        x = tf.zeros((1, t.input_size, t.input_size, t.in_channels))
        x = self.ds(self.stem(x))
        for row in self.choice_blocks:
            x = [block(x) for block in row if block][0]
        self.head(self.last(x))
        self.built = True

    @property
    def blocks(self) -> list:
        """Every block, in network order: stem, ds, each position's candidates, last, head."""
        return [
            self.stem,
            self.ds,
            *[block for row in self.choice_blocks for block in row if block],
            self.last,
            self.head,
        ]

    @property
    def num_positions(self) -> int:
        return len(self.choice_blocks)

    def call(self, images, path, training=None):
        x = self.ds(self.stem(images, training=training), training=training)
        for position, row in enumerate(self.choice_blocks):
            # A branch no valid path takes (None: a candidate not allowed here) gives zeros of the
            # position's shape. Calling an allowed block again there would put one layer in two
            # branches, which TensorFlow refuses inside the train step's cond.
            spec = next(block for block in row if block).spec
            shape = [tf.shape(x)[0], spec.out_size, spec.out_size, spec.out_channels]
            unused = functools.partial(tf.zeros, shape, x.dtype)
            branches = [functools.partial(block, x, training=training) if block else unused for block in row]
            x = tf.switch_case(path[position], branches)
        return self.head(self.last(x, training=training), training=training)

    # --- which variables a path uses ------------------------------------------------------

    @functools.cached_property
    def _owner(self) -> dict[int, tuple[int, int]]:
        """id(variable) -> (position, choice) for candidate-block variables."""
        return {
            id(v): (p, c)
            for p, row in enumerate(self.choice_blocks)
            for c, block in enumerate(row)
            if block
            for v in block.weights
        }

    def groups(self, variables) -> tuple[list[list[int]], list]:
        """Splits `variables` by the block they belong to: (index groups, owner per group),
        owner (position, choice) for a candidate block and None for the shared parts."""
        by_owner: dict = {}
        for i, v in enumerate(variables):
            by_owner.setdefault(self._owner.get(id(v)), []).append(i)
        owners = list(by_owner)
        return [by_owner[o] for o in owners], owners

    @staticmethod
    def used(path, owners) -> list:
        """Per owner, does `path` use it (a boolean tensor; True for the shared parts)?"""
        return [tf.constant(True) if o is None else tf.equal(path[o[0]], o[1]) for o in owners]

    # --- child nets -----------------------------------------------------------------------

    def blocks_of(self, path) -> list[Block]:
        """The blocks `path` (one choice per position) runs, in network order."""
        path = [int(c) for c in path]
        return [self.stem, self.ds, *[row[c] for row, c in zip(self.choice_blocks, path)], self.last, self.head]

    def extract_child(self, path, name: str = "cream") -> keras.Model:
        """A functional child net for `path` carrying the supernet's weights for it."""
        child = build_child(self.space.arch(path), name=name)
        parts = {layer.name: layer for block in self.blocks_of(path) for layer in block.parts if layer.weights}
        for layer in child.layers:
            if layer.weights:
                layer.set_weights(parts[layer.name].get_weights())
        return child
