"""The Cream supernet built from timm's blocks, and weights copied from and to cream_tf's.

The candidate block for choice c at every position is taken from a timm MobileNetV3 built with
choice c everywhere (the block strings written out here from the paper's search-space table,
shared/docs/cream-reference.md, not from cream_tf's decoder); the stem, the ds and cn stages and
the head are those of the choice-0 network. Stage widths do not depend on the choices, so any
candidate fits any path, and the module names (`blocks.3.1.conv_dw`, `bn1`, `conv_head`, ...)
are the official module tree's, which cream_tf's layer names mirror with '_' for '.'.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from timm.layers.activations import HardSigmoid
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.mobilenetv3 import MobileNetV3
from torch import nn

KERNEL_EXPANSION = ((3, 4), (3, 6), (5, 4), (5, 6), (7, 4), (7, 6))  # choice index -> (kernel, expansion)
STAGES = ((24, 2), (40, 2), (80, 2), (96, 1), (192, 2))  # choice stages: (channels, stride of the first block)
NUM_CHOICES = len(KERNEL_EXPANSION)


def uniform_block_strings(depths, choice):
    """timm block strings of the network with `choice` in every choice block."""
    kernel, expansion = KERNEL_EXPANSION[choice]
    strings = [["ds_r1_k3_s1_e1_c16_se0.25"]]
    for depth, (channels, stride) in zip(depths, STAGES):
        strings.append(
            [f"ir_r1_k{kernel}_s{stride if i == 0 else 1}_e{expansion}_c{channels}_se0.25" for i in range(depth)]
        )
    strings.append(["cn_r1_k1_s1_c320"])
    return strings


def _timm_network(depths, choice, num_classes, in_chans, stem_channels, stem_stride):
    # timm's relu6(x + 3) / 6 module rather than torch's hardsigmoid, which has no second derivative
    # (the meta update differentiates through a gradient).
    se = functools.partial(SqueezeExcite, gate_layer=HardSigmoid, force_act_layer=nn.ReLU, rd_round_fn=round_channels)
    network = MobileNetV3(
        decode_arch_def(uniform_block_strings(depths, choice)),
        num_classes=num_classes,
        in_chans=in_chans,
        stem_size=stem_channels,
        fix_stem=True,
        num_features=1280,
        head_bias=True,
        act_layer=nn.SiLU,
        se_layer=se,
    )
    network.conv_stem.stride = (stem_stride, stem_stride)  # its padding is k//2 either way
    return network


class TimmSupernet(nn.Module):
    """Six timm candidate blocks at every choice position; `forward(images_nchw, path)` runs the
    stem, the ds block, the chosen candidate at each position, the cn block and the head."""

    def __init__(self, depths, num_classes, in_chans, stem_channels, stem_stride):
        super().__init__()
        networks = [
            _timm_network(depths, c, num_classes, in_chans, stem_channels, stem_stride) for c in range(NUM_CHOICES)
        ]
        base = networks[0]
        self.depths = tuple(depths)
        self.positions = [(s, i) for s, depth in enumerate(depths, start=1) for i in range(depth)]
        self.conv_stem, self.bn1 = base.conv_stem, base.bn1  # bn1 applies the swish itself
        self.ds, self.cn = base.blocks[0][0], base.blocks[len(depths) + 1][0]
        self.candidates = nn.ModuleList(
            nn.ModuleList(network.blocks[s][i] for network in networks) for s, i in self.positions
        )
        self.global_pool, self.conv_head, self.act2 = base.global_pool, base.conv_head, base.act2
        self.classifier = base.classifier

    def blocks_of(self, path) -> list[nn.Module]:
        """The modules `path` runs, shared parts included (the official `rand_parameters` order:
        the shared parts, then the blocks in network order)."""
        shared = [self.conv_stem, self.bn1, self.conv_head, self.classifier]
        return [*shared, self.ds, *[row[int(c)] for row, c in zip(self.candidates, path)], self.cn]

    def path_parameters(self, path) -> list[nn.Parameter]:
        return [p for module in self.blocks_of(path) for p in module.parameters()]

    def forward(self, images, path):
        x = self.ds(self.bn1(self.conv_stem(images)))
        for row, choice in zip(self.candidates, path):
            x = row[int(choice)](x)
        x = self.act2(self.conv_head(self.global_pool(self.cn(x))))
        return self.classifier(x.flatten(1))


def nchw(images_nhwc) -> torch.Tensor:
    return torch.from_numpy(np.array(np.transpose(np.asarray(images_nhwc, np.float32), (0, 3, 1, 2))))


def macs_of_path(net: TimmSupernet, path, input_size: int, in_chans: int) -> int:
    """Multiply-adds of the convolutions and dense layers `path` runs, counted by forward hooks."""
    total = [0]

    def conv(module, inputs, output):
        total[0] += (
            output[0].numel() * module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        )

    def dense(module, inputs, output):
        total[0] += module.in_features * module.out_features

    hooks = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else dense)
        for m in net.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    training = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, in_chans, input_size, input_size), path)
    net.train(training)
    for hook in hooks:
        hook.remove()
    return total[0]


# --- weights between cream_tf (Keras layouts) and the timm supernet (PyTorch layouts) ------------


def _torch_module_name(layer_name: str) -> str:
    """'blocks_3_1_se_conv_reduce' -> 'blocks.3.1.se.conv_reduce' (the official module tree)."""
    if not layer_name.startswith("blocks_"):
        return layer_name
    _, stage, index, rest = layer_name.split("_", 3)
    return f"blocks.{stage}.{index}.{rest.replace('se_conv_', 'se.conv_')}"


def _module_of(net: TimmSupernet, name: str, position: int | None, choice: int | None) -> nn.Module:
    """The timm module a cream_tf layer of the given block corresponds to."""
    if name.startswith("blocks."):
        _, stage, _, rest = name.split(".", 3)
        stage = int(stage)
        if stage == 0:
            block = net.ds
        elif stage == len(net.depths) + 1:
            block = net.cn
        else:
            block = net.candidates[position][choice]
        return block.get_submodule(rest)
    return getattr(net, name)


class WeightMap:
    """Every cream_tf supernet variable with its timm tensor (parameter or BatchNorm buffer) and
    the layout change between them: Conv2D HWIO <-> OIHW, depthwise (k,k,C,1) <-> (C,1,k,k),
    Dense (in,out) <-> (out,in); BatchNorm gamma, beta, moving mean, moving variance <-> weight,
    bias, running_mean, running_var."""

    def __init__(self, supernet, net: TimmSupernet):
        import keras  # here, not at import: this module is imported before TensorFlow

        self.pairs = []  # (keras variable, torch tensor, name, kind)
        owners = [(supernet.stem, None, None), (supernet.ds, None, None)]
        owners += [(block, p, c) for p, row in enumerate(supernet.choice_blocks) for c, block in enumerate(row)]
        owners += [(supernet.last, None, None), (supernet.head, None, None)]
        for block, position, choice in owners:
            for layer in block.parts:
                if not layer.weights:
                    continue
                name = _torch_module_name(layer.name)
                module = _module_of(net, name, position, choice)
                if isinstance(layer, keras.layers.BatchNormalization):
                    fields = ("weight", "bias", "running_mean", "running_var")
                    kinds = ("vector",) * 4
                else:
                    fields = ("weight", "bias")[: len(layer.weights)]
                    kind = {
                        keras.layers.DepthwiseConv2D: "depthwise",
                        keras.layers.Conv2D: "conv",
                        keras.layers.Dense: "dense",
                    }[type(layer)]
                    kinds = (kind, "vector")
                for variable, field, kind in zip(layer.weights, fields, kinds):
                    tensor = getattr(module, field)
                    where = f"candidate {position}/{choice} " if position is not None else ""
                    self.pairs.append((variable, tensor, f"{where}{name}.{field}", kind))
        if len({id(v) for v, *_ in self.pairs}) != len(supernet.weights):
            raise AssertionError("the weight map misses some of the supernet's variables")

    @staticmethod
    def to_torch(array, kind):
        if kind == "conv":
            return np.transpose(array, (3, 2, 0, 1))
        if kind == "depthwise":
            return np.transpose(array, (2, 3, 0, 1))
        if kind == "dense":
            return np.transpose(array)
        return array

    @staticmethod
    def to_keras(array, kind):
        if kind == "conv":
            return np.transpose(array, (2, 3, 1, 0))
        if kind == "depthwise":
            return np.transpose(array, (2, 3, 0, 1))
        if kind == "dense":
            return np.transpose(array)
        return array

    def copy_to_torch(self):
        with torch.no_grad():
            for variable, tensor, _, kind in self.pairs:
                value = torch.from_numpy(np.ascontiguousarray(self.to_torch(np.asarray(variable), kind)))
                if value.shape != tensor.shape:
                    raise AssertionError(f"{variable.path} {tuple(value.shape)} does not fit {tuple(tensor.shape)}")
                tensor.copy_(value)

    def torch_values(self, tensors=None):
        """Per variable (keyed by its path): the timm tensor in Keras layout; `tensors` maps a timm
        tensor to another of its shape (an optimizer's momentum), zeros when it has none."""
        values = {}
        for variable, tensor, _, kind in self.pairs:
            if tensors is not None:
                tensor = tensors.get(tensor)
                if tensor is None:
                    tensor = torch.zeros(tuple(self.to_torch(np.zeros(variable.shape), kind).shape))
            values[variable.path] = self.to_keras(tensor.detach().numpy(), kind)
        return values

    def names(self):
        return {variable.path: name for variable, _, name, _ in self.pairs}


def copy_meta_to_torch(dense, linear: nn.Linear) -> None:
    """cream_tf's meta dense layer (kernel [slice*classes, 1]) into an nn.Linear(slice*classes, 1)."""
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.asarray(dense.kernel).T.copy()))
        linear.bias.copy_(torch.from_numpy(np.asarray(dense.bias).copy()))
