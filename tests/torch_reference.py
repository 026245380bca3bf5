"""An independent PyTorch build of Cream child nets with timm, for cross-checks.

The block strings are written out here from the search-space table of the paper / the
official code (shared/docs/cream-reference.md), not derived from cream_tf's decoder, so a
mistake in our decoding shows up as a difference.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.mobilenetv3 import MobileNetV3

KERNEL_EXPANSION = {0: (3, 4), 1: (3, 6), 2: (5, 4), 3: (5, 6), 4: (7, 4), 5: (7, 6)}
STAGES = ((24, 2), (40, 2), (80, 2), (96, 1), (192, 2))  # (channels, stride of first block)


def block_strings(choices):
    arch_def = [["ds_r1_k3_s1_e1_c16_se0.25"]]
    for stage, (channels, stride) in zip(choices, STAGES):
        strings = []
        for i, choice in enumerate(stage):
            k, e = KERNEL_EXPANSION[choice]
            strings.append(f"ir_r1_k{k}_s{stride if i == 0 else 1}_e{e}_c{channels}_se0.25")
        arch_def.append(strings)
    arch_def.append(["cn_r1_k1_s1_c320"])
    return arch_def


def timm_cream(choices, num_classes=1000, in_chans=3):
    se = functools.partial(
        SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=torch.nn.ReLU, rd_round_fn=round_channels
    )
    model = MobileNetV3(
        decode_arch_def(block_strings(choices)),
        num_classes=num_classes,
        in_chans=in_chans,
        stem_size=16,
        num_features=1280,
        head_bias=True,
        act_layer=torch.nn.SiLU,
        se_layer=se,
    )
    return model.eval()


def randomize_bn(model, seed=0):
    """Random BatchNorm statistics and affine parameters, so eval-mode BN is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


def numpy_state_dict(model):
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def macs_and_params(model, input_size, in_chans=3):
    """Multiply-adds of Conv2d and Linear layers counted by forward hooks; parameters() summed."""
    total = [0]

    def conv_hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        total[0] += output[0].numel() * k * module.in_channels // module.groups

    def linear_hook(module, inputs, output):
        total[0] += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    with torch.no_grad():
        model(torch.zeros(1, in_chans, input_size, input_size))
    for handle in handles:
        handle.remove()
    return total[0], sum(p.numel() for p in model.parameters())


def logits(model, images_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(np.transpose(images_nhwc, (0, 3, 1, 2)))).numpy()
