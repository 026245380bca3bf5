"""The child-net builder: numerics equal to the timm PyTorch build, built-in layers only."""

import keras
import numpy as np
import pytest
from torch_reference import logits, numpy_state_dict, randomize_bn, timm_cream

from cream_tf import zoo
from cream_tf.arch import Arch
from cream_tf.childnet import build_child, drop_path_rates
from cream_tf.convert import load_state_dict


def _assert_matches_timm(arch, reference):
    randomize_bn(reference)
    model = build_child(arch)
    load_state_dict(model, numpy_state_dict(reference))
    images = (
        np.random.default_rng(0).normal(size=(2, arch.input_size, arch.input_size, arch.in_channels)).astype("float32")
    )
    expected = logits(reference, images)
    got = model(images, training=False).numpy()
    assert np.abs(expected).max() > 1e-2  # logits large enough for the comparison to mean something
    assert np.abs(got - expected).max() <= 1e-5


@pytest.mark.parametrize("name", ["cream_14", "cream_43"])
def test_outputs_equal_timm_with_the_same_weights(name):
    arch = zoo.arch_of(name)
    _assert_matches_timm(arch, timm_cream(arch.choices))


def test_grayscale_stride_one_stem_equals_timm():
    arch = Arch.parse("[0][5,4][1,2,3][4,4][2]@28;in=1;classes=10;stem=16/1")
    reference = timm_cream(arch.choices, num_classes=10, in_chans=1)
    reference.conv_stem.stride = (1, 1)
    _assert_matches_timm(arch, reference)


def test_model_is_made_of_built_in_keras_layers_only():
    model = build_child(Arch.parse("[3][3,3][3,3][3][3]@64;drop_path=0.2"))
    for layer in model.layers:
        assert type(layer).__module__.startswith("keras.src.layers"), layer
        assert hasattr(keras.layers, type(layer).__name__), layer


def test_drop_path_grows_linearly_and_acts_only_in_training():
    arch = Arch.parse("[3][3,3][3,3][3][3]@64;classes=10;dropout=0;drop_path=0.3")
    rates = drop_path_rates(arch)
    assert rates[0] == 0 and rates == sorted(rates) and max(rates) < 0.3
    keras.utils.set_random_seed(3)  # before the build: the layers' seed generators start from it
    model = build_child(arch)
    drops = [layer for layer in model.layers if layer.name.endswith("_drop_path")]
    # Residual blocks only: the ds block (rate 0 is skipped) and the second block of each 2-block stage.
    assert {layer.name for layer in drops} == {"blocks_2_1_drop_path", "blocks_3_1_drop_path"}
    # 32 images: with rates near 0.1 and 0.2, three passes that all drop nothing (and so agree)
    # have a chance below 1e-7; with the 4 images this test once used it was a few percent.
    images = np.random.default_rng(1).normal(size=(32, 64, 64, 3)).astype("float32")
    inference = [model(images, training=False).numpy() for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    training = [model(images, training=True).numpy() for _ in range(3)]
    assert any(not np.allclose(training[0], t) for t in training[1:])


def test_fused_batchnorm_trains_as_pytorch_does_and_copies_to_the_portable_model():
    """The training model of a retrain (fused BatchNorm) against timm in train mode: batch
    statistics in the forward pass, and running statistics updated with PyTorch's unbiased
    variance and momentum; its weights then copy one to one into the portable child."""
    import torch

    arch = Arch.parse("[0][5,4][1,2,3][4,4][2]@28;in=1;classes=10;stem=16/1;dropout=0")
    reference = timm_cream(arch.choices, num_classes=10, in_chans=1)
    reference.conv_stem.stride = (1, 1)
    randomize_bn(reference)
    fused = build_child(arch, fused_bn=True)
    load_state_dict(fused, numpy_state_dict(reference))
    images = np.random.default_rng(2).normal(size=(8, 28, 28, 1)).astype("float32")
    reference.train()
    with torch.no_grad():
        expected = reference(torch.from_numpy(np.transpose(images, (0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(fused(images, training=True).numpy(), expected, atol=1e-4)
    portable = build_child(arch)
    portable.set_weights(fused.get_weights())
    reference.eval()
    assert np.abs(portable(images, training=False).numpy() - logits(reference, images)).max() <= 1e-4
