"""keras.applications conventions and feature maps (cream_tf.applications), and the tf_keras backbone
Model Garden builds (cream_tf.detection.garden)."""

import numpy as np
import pytest

from cream_tf import applications, zoo
from cream_tf.arch import Arch

IMAGES = np.random.default_rng(0).normal(size=(2, 96, 64, 3)).astype("float32")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A cream_14 classifier of 10 classes saved as .keras (what a zoo entry holds)."""
    path = tmp_path_factory.mktemp("entry") / "model.keras"
    model = zoo.build("cream_14", num_classes=10)
    model.save(path)
    return model, path


def test_without_top_each_pooling_and_any_input_size(classifier):
    _, path = classifier
    for pooling, rank in ((None, 4), ("avg", 2), ("max", 2)):
        model = applications.CreamNet(
            "cream_14", include_top=False, weights=path, input_shape=(None, None, 3), pooling=pooling
        )
        for size in ((64, 64), (96, 128)):
            out = model(np.zeros((1, *size, 3), "float32"))
            expected = (1, size[0] // 32, size[1] // 32, 320) if rank == 4 else (1, 320)
            assert tuple(out.shape) == expected, (pooling, size)
    top = applications.CreamNet("cream_14", classes=10, weights=path)
    assert top.output_shape == (None, 10) and top.layers[-1].name == "predictions"
    np.testing.assert_allclose(np.asarray(top(IMAGES[:, :64])).sum(axis=1), 1.0, rtol=1e-5)  # softmax


def test_weights_trained_with_the_top_give_the_same_maps_without_it(classifier):
    import keras

    model, path = classifier
    inner = keras.Model(model.input, model.get_layer("blocks_6_0_act").output)
    images = IMAGES[:, :64]
    headless = applications.CreamNet("cream_14", include_top=False, weights=path)
    assert np.abs(np.asarray(headless(images)) - np.asarray(inner(images))).max() <= 1e-6
    maps = applications.features("cream_14", weights=path, input_shape=(None, None, 3))(images)
    assert np.abs(np.asarray(maps["last"]) - np.asarray(inner(images))).max() <= 1e-6
    block = applications.endpoints(zoo.arch_of("cream_14"))["4"].block
    last_layer = next(layer for layer in reversed(model.layers) if layer.name.startswith(block + "_"))
    stage_4 = keras.Model(model.input, last_layer.output)
    assert np.abs(np.asarray(maps["4"]) - np.asarray(stage_4(images))).max() <= 1e-6


@pytest.mark.parametrize("name", zoo.names())
def test_endpoint_strides_and_channels_of_every_zoo_model(name):
    arch = zoo.arch_of(name)
    ends = applications.endpoints(arch)
    assert [(e.level, e.stride, e.channels) for e in ends.values()] == [
        (2, 4, 24),
        (3, 8, 40),
        (4, 16, 96),
        (5, 32, 192),
    ]
    # The block of each endpoint is its stage's last (stage 3 shares stage 4's stride).
    assert [e.block for e in ends.values()] == [f"blocks_{s}_{arch.depths[s - 1] - 1}" for s in (1, 2, 4, 5)]
    model = applications.features(name, input_shape=(None, None, 3))
    maps = model(np.zeros((1, 64, 96, 3), "float32"))
    for key, end in ends.items():
        assert tuple(maps[key].shape) == (1, 64 // end.stride, 96 // end.stride, end.channels), (name, key)
    assert model.get_layer(ends["5"].block + "_bn3") is not None  # a real block of this network
    small = applications.endpoints(arch.replace(stem_stride=1, input_size=32))
    assert [e.level for e in small.values()] == [1, 2, 3, 4]


def test_feature_maps_run_at_any_size():
    model = applications.features("cream_14", input_shape=(None, None, 3))
    maps = model(IMAGES)
    for key, stride in (("2", 4), ("3", 8), ("4", 16), ("5", 32), ("last", 32)):
        assert tuple(maps[key].shape)[1:3] == (96 // stride, 64 // stride), key
    three = applications.features("cream_14", input_shape=(None, None, 3), min_level=3, max_level=4)
    assert sorted(three.output) == ["3", "4", "last"]


def test_preprocess_input_is_the_zoo_normalization():
    pixels = np.array([[[[0, 128, 255]]]], np.uint8)
    expected = (pixels / 255.0 - np.array(zoo.IMAGENET_PREPROCESSING["mean"])) / np.array(
        zoo.IMAGENET_PREPROCESSING["std"]
    )
    np.testing.assert_allclose(applications.preprocess_input(pixels), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model": "cream_99"}, r"model='cream_99' is neither a zoo name nor an architecture string"),
        ({"pooling": "mean", "include_top": False}, r"pooling='mean' is not valid; valid are None, 'avg' and 'max'"),
        ({"input_shape": (None, None, 3)}, r"None side with include_top=True"),
        ({"input_shape": (16, 16, 3), "include_top": False}, r"below the network's total stride 32"),
        ({"model": 14}, r"model=14 is not valid"),
    ],
)
def test_bad_arguments_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        applications.CreamNet(**kwargs)


def test_levels_a_network_does_not_have_are_refused():
    with pytest.raises(ValueError, match=r"Levels 2\.\.6 asked of .* which has levels 2\.\.5 \(strides 4\.\.32\)"):
        applications.features("cream_14", max_level=6)
    small = str(Arch.parse("[0][0][0][0][0]@32;stem=16/1"))
    with pytest.raises(ValueError, match=r"which has levels 1\.\.4"):
        applications.features(small, min_level=2, max_level=5)


def test_weights_of_another_network_are_refused(classifier):
    _, path = classifier
    with pytest.raises(ValueError, match=r"different architecture .* layer 'classifier'"):
        applications.CreamNet("cream_14", classes=7, weights=path)
    with pytest.raises(ValueError, match=r"different architecture"):
        applications.CreamNet("cream_43", include_top=False, weights=path)


def test_the_tf_keras_backbone_equals_the_keras_3_one(classifier):
    import tf_keras

    from cream_tf.detection.garden import CreamFeatures

    _, path = classifier
    ours = applications.features("cream_14", weights=path, input_shape=(None, None, 3))
    theirs = CreamFeatures("cream_14", tf_keras.layers.InputSpec(shape=(None, None, None, 3)), weights=str(path))
    assert isinstance(theirs, tf_keras.Model)
    assert {k: tuple(v)[1:] for k, v in theirs.output_specs.items()} == {
        "2": (None, None, 24),
        "3": (None, None, 40),
        "4": (None, None, 96),
        "5": (None, None, 192),
    }
    expected, got = ours(IMAGES), theirs(IMAGES, training=False)
    for key in theirs.output_specs:
        assert np.abs(np.asarray(expected[key]) - got[key].numpy()).max() <= 1e-5, key
