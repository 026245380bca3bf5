"""Specification of retraining, evaluation and export with data (cream_tf.retrain, cream_tf.evaluate,
cream_tf.export): the recipe's pieces, EMA weights exported, augmentation only while training,
deterministic evaluation, every format giving the same answers, resume after a stop.

Tiny networks and a few steps on Fashion-MNIST (Debian's dataset-fashion-mnist), so this runs in
about a minute and a half on two cores.
"""

import json
import math
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cream_tf import config as config_lib
from cream_tf import data, evaluate, export, optim, retrain, tflite_metadata
from cream_tf.arch import Arch
from cream_tf.config import RecipeConfig, RetrainConfig

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY = Arch.parse("[0][0][0][0][0]@28;in=1;classes=10;stem=8/1")


def fashion_mnist_installed():
    try:
        return data.num_examples(config_lib.DataConfig(), "test") > 0
    except FileNotFoundError:
        return False


pytestmark = pytest.mark.skipif(
    not fashion_mnist_installed(), reason="needs `sudo apt-get install dataset-fashion-mnist`"
)


def tiny_config(**override) -> RetrainConfig:
    """A few steps of batch 32; overrides as 'section.key' keyword pairs."""
    settings = {
        "data.batch_size": 32,
        "train.epochs": 1,
        "train.steps_per_epoch": 12,
        "train.optimizer": "sgd",
        "train.lr": 2.0,
        "train.warmup_epochs": 0.0,
        "train.lr_schedule": "cosine",
        "train.eval_every_epochs": 0,
        "train.eval_batches": 1,
        "export.eval_batches": 2,
        "export.calibration_images": 64,
    }
    settings.update(override)
    return config_lib.load(RetrainConfig, None, ",".join(f"{k}={v}" for k, v in settings.items()))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny retrain with EMA (decay 0.9 after TF's warm-up, so the average differs clearly from the
    last weights), ending in an entry folder; the calls into the input pipeline are recorded."""
    calls = []
    original = data.load

    def recording_load(config, split, *, training, **kwargs):
        calls.append((split, training))
        return original(config, split, training=training, **kwargs)

    model_dir = tmp_path_factory.mktemp("retrain")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load", recording_load)
        trainer = retrain.RetrainRun(
            tiny_config(**{"train.ema_decay": 0.9, "train.ema_warmup": "true"}), TINY, model_dir
        )
        result = trainer.run()
    return trainer, result, model_dir / "entry", calls


def test_the_exported_weights_are_the_ema_weights(trained):
    trainer, _, entry, _ = trained
    exported = keras.models.load_model(entry / "model.keras", compile=False).get_weights()
    ema, raw = trainer.ema_model.get_weights(), trainer.model.get_weights()
    assert all(np.array_equal(e, x) for e, x in zip(ema, exported))
    assert max(np.abs(r - x).max() for r, x in zip(raw, exported)) > 1e-3
    assert "EMA (0.9) weights" in json.loads((entry / "metadata.json").read_text())["weights"]


def test_ema_averages_every_weight_including_batchnorm_statistics(trained):
    trainer = trained[0]
    saved = trainer.model.get_weights(), trainer.ema_model.get_weights()
    try:  # one more step of the trained run; its weights are put back for the other tests
        images, labels = next(iter(data.load(trainer.config.data, "train", training=True)))
        trainer.fit_model.train_on_batch(images, labels)
        step = int(trainer.optimizer.iterations.numpy())  # 13: TF's warm-up still holds the decay below 0.9
        decay = min(0.9, step / (9 + step))
        for name, average, new, old in zip(
            [w.path for w in trainer.model.weights],
            trainer.ema_model.get_weights(),
            trainer.model.get_weights(),
            saved[1],
        ):
            np.testing.assert_allclose(average, decay * old + (1 - decay) * new, rtol=1e-5, atol=1e-6, err_msg=name)
        assert any("moving_mean" in w.path for w in trainer.ema_model.weights)
    finally:
        trainer.model.set_weights(saved[0])
        trainer.ema_model.set_weights(saved[1])


def test_ema_batchnorm_statistics_can_be_recomputed_for_short_runs(trained, monkeypatch):
    trainer = trained[0]
    monkeypatch.setattr(trainer.recipe, "ema_recalibrate_batches", 2)
    model = trainer.export_model()
    for variable, exported, average in zip(model.weights, model.get_weights(), trainer.ema_model.get_weights()):
        assert np.array_equal(exported, average) != ("moving_" in variable.path), variable.path


def test_with_ema_off_the_last_weights_are_exported(tmp_path):
    trainer = retrain.RetrainRun(tiny_config(**{"train.ema_decay": 0.0}), TINY, tmp_path)
    assert trainer.ema_model is None
    assert all(np.array_equal(a, b) for a, b in zip(trainer.export_model().get_weights(), trainer.model.get_weights()))


def test_augmentation_runs_only_on_the_training_split(trained):
    trainer, _, _, calls = trained
    training_calls = [split for split, training in calls if training]
    assert training_calls and set(training_calls) == {trainer.recipe.train_split}
    assert {split for split, training in calls if not training} == {"test"}


def test_evaluation_is_deterministic(trained):
    trainer, _, entry, _ = trained
    config = trainer.config.data
    first, second = ([x.numpy() for x, _ in data.load(config, "test", training=False).take(2)] for _ in range(2))
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    predict = evaluate.predictor(entry)
    assert evaluate.evaluate(predict, config, "test", 3) == evaluate.evaluate(predict, config, "test", 3)


def test_float_tflite_matches_keras(trained):
    trainer, _, entry, _ = trained
    images = data.sample_images(trainer.config.data, "test", 16)
    expected = keras.models.load_model(entry / "model.keras", compile=False)(images, training=False).numpy()
    got = evaluate.TFLitePredictor(entry / "model_float32.tflite")(images)
    assert np.abs(got - expected).max() <= 1e-4


def test_int8_tflite_runs_and_agrees_with_float(trained):
    trainer, _, entry, _ = trained
    images = data.sample_images(trainer.config.data, "test", 64)
    int8 = evaluate.TFLitePredictor(entry / "model_int8.tflite")
    assert int8.input["dtype"] == np.int8 and int8.output["dtype"] == np.int8
    float32 = evaluate.TFLitePredictor(entry / "model_float32.tflite")
    agree = np.mean(int8(images).argmax(-1) == float32(images).argmax(-1))
    assert agree >= 0.8, f"int8 and float agree on {agree:.0%} of the images"
    meta = json.loads((entry / "metadata.json").read_text())
    assert set(meta) == {*export.ENTRY_KEYS, "retrain"} and meta["produced_by"] == "retrain"
    assert meta["files"]["tflite_int8"] == "model_int8.tflite"
    assert meta["tflite_int8"]["input"]["dtype"] == "int8" and meta["tflite_int8"]["calibration"]["images"] == 64
    # Both files carry LiteRT metadata with the float input's normalization (cream_tf.tflite_metadata).
    recorded = meta["tflite_metadata"]["normalization"]
    assert list(recorded) == ["model_float32.tflite", "model_int8.tflite"]
    normalizations = [tflite_metadata.read_metadata((entry / file).read_bytes())["input"]["mean"] for file in recorded]
    assert normalizations[0] == normalizations[1] == pytest.approx(recorded["model_int8.tflite"]["mean"])


def test_int8_file_with_the_normalization_folded_in_takes_raw_uint8_pixels(trained, tmp_path):
    """export.int8_input=pixels: camera pixels go in as they are; top-1 on 500 test images is that
    of the int8 file that takes normalized images, up to int8 rounding."""
    trainer, _, entry, _ = trained
    # The fixture's net is at chance after 12 steps; 300 more make its top-1 mean something.
    model = keras.models.load_model(entry / "model.keras", compile=False)
    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.load(trainer.config.data, "train", training=False, repeat=True), steps_per_epoch=300, verbose=0)
    config = tiny_config(**{"export.eval_batches": 1, "export.int8_input": "pixels"})
    pixels_entry = export.write_entry(
        model,
        TINY,
        tmp_path / "pixels",
        weights_source="test",
        preprocessing=data.preprocessing_metadata(config.data),
        data_config=config.data,
        export_config=config.export,
    )
    # The normalized int8 file of the same model, calibrated on the same images as write_entry's.
    calibration = data.sample_images(config.data, "train", config.export.calibration_images)
    model.export(str(tmp_path / "saved_model"), format="tf_saved_model", verbose=False)
    (tmp_path / "normalized.tflite").write_bytes(export.to_tflite_int8(tmp_path / "saved_model", calibration))
    meta = json.loads((pixels_entry / "metadata.json").read_text())
    assert meta["tflite_int8"]["takes"] == "pixels" and "raw pixels 0..255" in meta["tflite_int8"]["usage"]
    assert meta["tflite_int8"]["input"] == {"dtype": "uint8", "scale": 1.0, "zero_point": 0}  # pixels exactly
    # Its LiteRT metadata says so: no normalization left to apply (mean 0, std 1 in pixel units).
    described = tflite_metadata.read_metadata((pixels_entry / "model_int8.tflite").read_bytes())["input"]
    assert (described["mean"], described["std"]) == ([0.0], [1.0])
    # Evaluated alone, the file finds its mean and std in its entry's metadata.json.
    alone = evaluate.evaluate(pixels_entry / "model_int8.tflite", config.data, "test", 1)
    assert alone["top1"] == meta["accuracy"]["top1"]["tflite_int8"]

    images, labels = next(iter(data.load(trainer.config.data, "test", training=False, batch_size=500)))
    raw = np.asarray(images) * np.asarray(data.FASHION_MNIST_STD) + np.asarray(data.FASHION_MNIST_MEAN)
    raw = np.round(raw * 255).astype(np.uint8)  # the idx file's bytes: 28x28 Fashion-MNIST is not resized
    interpreter = evaluate.TFLitePredictor(pixels_entry / "model_int8.tflite").interpreter
    (input_detail,), (output_detail,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(input_detail["index"], raw.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], raw)
    interpreter.invoke()
    from_pixels = interpreter.get_tensor(output_detail["index"]).argmax(-1)
    from_normalized = evaluate.TFLitePredictor(tmp_path / "normalized.tflite")(images.numpy()).argmax(-1)
    labels = np.asarray(labels)
    # Two int8 files calibrated apart round differently on images near a decision boundary (this
    # 8-channel net's int8 logits are ~0.25 off its float ones): the D images where they disagree
    # may tip either way, so their correct counts may differ by chance by about sqrt(D); a folding
    # that lost information would be far outside 2 sqrt(D) + 1.
    disagree = int(np.sum(from_pixels != from_normalized))
    correct_pixels, correct_normalized = int(np.sum(from_pixels == labels)), int(np.sum(from_normalized == labels))
    assert disagree <= 50, f"the two int8 files disagree on {disagree} of 500 images"
    assert abs(correct_pixels - correct_normalized) <= 2 * disagree**0.5 + 1, (correct_pixels, correct_normalized)
    assert correct_pixels >= 300  # trained: top-1 far above chance (50 of 500)


def test_every_form_of_the_model_gives_the_same_top1(trained):
    trainer, _, entry, _ = trained
    config = trainer.config.data
    figures = {
        form: evaluate.evaluate(path, config, "test", 2)
        for form, path in {
            "entry": entry,
            "keras": entry / "model.keras",
            "tflite": entry / "model_float32.tflite",
            "model_dir": entry.parent,
        }.items()
    }
    assert len({f["top1"] for f in figures.values()}) == 1, figures
    assert len({f["top5"] for f in figures.values()}) == 1, figures
    recorded = json.loads((entry / "metadata.json").read_text())["accuracy"]
    assert recorded["images"] == 64 and set(recorded["top1"]) == {"keras", "tflite_float32", "tflite_int8"}
    assert recorded["top1"]["keras"] == recorded["top1"]["tflite_float32"] == figures["keras"]["top1"]


def test_the_entry_records_what_each_file_changes_against_keras(trained):
    """metadata.json's accuracy.changes, recounted here from each file's own classes."""
    trainer, _, entry, _ = trained
    recorded = json.loads((entry / "metadata.json").read_text())["accuracy"]
    files = {"keras": "model.keras", "tflite_float32": "model_float32.tflite", "tflite_int8": "model_int8.tflite"}
    predictors = {name: evaluate.predictor(entry / file) for name, file in files.items()}
    classes, labels = {name: [] for name in predictors}, []
    for i, (images, batch_labels) in enumerate(data.load(trainer.config.data, recorded["split"], training=False)):
        if recorded["batches"] != "all" and i >= recorded["batches"]:
            break
        labels.append(batch_labels.numpy())
        for name, predict in predictors.items():
            classes[name].append(predict(images.numpy()).argmax(-1))
    labels = np.concatenate(labels)
    keras_classes = np.concatenate(classes["keras"])
    assert set(recorded["changes"]) == {"tflite_float32", "tflite_int8"}
    for name in recorded["changes"]:
        found, change = np.concatenate(classes[name]), recorded["changes"][name]
        lost = int(np.sum((keras_classes == labels) & (found != labels)))
        won = int(np.sum((keras_classes != labels) & (found == labels)))
        assert change["against"] == "keras" and (change["lost"], change["won"]) == (lost, won), change
        assert change["same_class"] == int(np.sum(found == keras_classes)), change
        gap = recorded["top1"][name] - recorded["top1"]["keras"]
        assert gap == pytest.approx(100 * (won - lost) / len(labels), abs=1e-3)
    assert recorded["changes"]["tflite_float32"]["same_class"] == len(labels)  # float TFLite = Keras within 1e-4


def test_paired_top1_statistics_match_hand_computed_examples():
    from cream_tf.evaluate import mcnemar_p, paired_standard_error

    # 10 images lost, none won: the chance of 10 of 10 falling one way, either way, is 2 / 2**10.
    assert mcnemar_p(10, 0) == pytest.approx(2 / 1024)
    # 3 lost, 2 won: the splits at least as uneven are all six of 5 (0..2 and 3..5 of 5): p = 1.
    assert mcnemar_p(3, 2) == 1.0
    # 5 lost, 1 won: (C(6,0) + C(6,1)) * 2 / 64 = 14 / 64.
    assert mcnemar_p(5, 1) == pytest.approx(14 / 64) == mcnemar_p(1, 5)
    assert mcnemar_p(0, 0) == 1.0
    # 4 images of 10: -1, -1, +1, 0 x 7; their mean -0.1 and the variance of that mean is
    # (sum of squares - n * mean**2) / n**2 = (3 - 0.1) / 100.
    assert paired_standard_error(2, 1, 10) == pytest.approx(math.sqrt(2.9) / 10)
    assert paired_standard_error(0, 0, 10) == 0.0


def test_retrain_resumes_after_a_stop_at_the_right_epoch(tmp_path):
    config = tiny_config(**{"train.epochs": 3, "train.steps_per_epoch": 2, "export.enabled": "false"})
    first = retrain.RetrainRun(config, TINY, tmp_path)
    assert first.run(stop_at_epoch=2) is None  # as a kill right after the second checkpoint
    at_stop = first.model.get_weights()

    second = retrain.RetrainRun(config, TINY, tmp_path)
    assert second.restore() and second.epoch == 2
    assert all(np.array_equal(a, b) for a, b in zip(at_stop, second.model.get_weights()))
    assert int(second.optimizer.iterations.numpy()) == 2 * 2
    result = second.run()
    assert [row["epoch"] for row in result["history"]] == [1, 2, 3]
    assert int(second.optimizer.iterations.numpy()) == 3 * 2  # only the third epoch was trained again


def test_learning_rate_follows_the_paper_schedule():
    recipe = RecipeConfig()  # 0.064 per 1024 images, 3 warm-up epochs from 1e-6, x0.973 every 2.4 epochs
    schedule = optim.RecipeSchedule(recipe, batch_size=256, steps_per_epoch=100)
    lr = lambda step: float(schedule(step))
    assert lr(0) == pytest.approx(1e-6)
    assert lr(150) == pytest.approx(1e-6 + (0.016 - 1e-6) / 2)
    assert lr(300) == pytest.approx(0.016 * 0.973)  # the decay counts from step 0: 300 steps > 2.4 epochs
    assert lr(480) == pytest.approx(0.016 * 0.973**2)
    cosine = optim.RecipeSchedule(RecipeConfig(lr_schedule="cosine", epochs=10), 1024, 100)
    assert float(cosine(300)) == pytest.approx(0.064) and float(cosine(1000)) == pytest.approx(0.0, abs=1e-9)


def test_rmsprop_is_tf_style():
    """ms starts at 1 and epsilon sits inside the root (TF1 RMSPropOptimizer, timm RMSpropTF)."""
    weight = keras.Variable(np.array([1.0, -2.0], np.float32))
    optimizer = optim.TFRMSprop(0.1, rho=0.9, momentum=0.9, epsilon=1e-3)
    ms, mom, w = np.ones(2), np.zeros(2), np.array([1.0, -2.0])
    for grad in (np.array([0.5, -3.0]), np.array([0.2, 1.0])):
        optimizer.apply_gradients([(tf.constant(grad, tf.float32), weight)])
        ms = 0.9 * ms + 0.1 * grad**2
        mom = 0.9 * mom + 0.1 * grad / np.sqrt(ms + 1e-3)
        w = w - mom
    np.testing.assert_allclose(weight.numpy(), w, rtol=1e-6)


def test_retrain_starts_from_a_search_result_and_inherited_weights(trained, tmp_path):
    _, _, entry, _ = trained
    result = tmp_path / "search_result.json"
    result.write_text(json.dumps({"winner": {"arch": str(TINY.replace(dropout=0.0)), "val_top1": 80.0}}))
    arch = retrain.arch_from(search_result=str(result))
    assert arch.choices == TINY.choices
    trainer = retrain.RetrainRun(tiny_config(), arch, tmp_path / "run", weights=str(entry))
    donor = keras.models.load_model(entry / "model.keras", compile=False).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(donor, trainer.model.get_weights()))
    assert all(np.array_equal(a, b) for a, b in zip(donor, trainer.ema_model.get_weights()))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"train.optimizer": "adam"}, "train.optimizer='adam' is not valid; valid: rmsprop, sgd"),
        ({"train.lr_schedule": "linear"}, "train.lr_schedule='linear' is not valid; valid: step, cosine"),
        ({"train.eval_split": "validation"}, "train.eval_split='validation' is not valid; valid: 'test' when"),
        ({"train.ema_decay": 1.5}, "train.ema_decay=1.5 is not valid; valid: a number in [0, 1)"),
        ({"export.eval_split": "dev"}, "export.eval_split='dev' is not valid; valid: train, validation, test"),
        ({"export.int8_input": "raw"}, "export.int8_input='raw' is not valid; valid: normalized, pixels"),
    ],
)
def test_bad_recipes_are_refused_with_what_is_valid(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        tiny_config(**override).validate()


def test_bad_sources_are_refused_with_what_is_valid(trained, tmp_path):
    trainer, _, entry, _ = trained
    with pytest.raises(ValueError, match="Give one architecture source; got --zoo, --arch"):
        retrain.arch_from(zoo_name="cream_14", arch=str(TINY))
    (tmp_path / "empty.json").write_text('{"winner": null}')
    with pytest.raises(ValueError, match="has no winner"):
        retrain.arch_from(search_result=str(tmp_path / "empty.json"))
    with pytest.raises(
        ValueError,
        match=r"takes \[28, 28, 1\] images and has 10 classes, but the data gives "
        r"\[32, 32, 1\] images",
    ):
        evaluate.evaluate(entry, config_lib.DataConfig(image_size=32), "test", 1)
    with pytest.raises(ValueError, match="is not a retrain model_dir with a checkpoint"):
        evaluate.evaluate(tmp_path, trainer.config.data, "test", 1)
    with pytest.raises(ValueError, match="holds a run of .*valid are the same architecture"):
        retrain.RetrainRun(trainer.config, Arch.parse("[1][0][0][0][0]@28;in=1;classes=10;stem=8/1"), entry.parent)


def test_cli_eval_prints_the_figures(trained):
    _, _, entry, _ = trained
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "main.py"),
            "--mode=eval",
            f"--model={entry / 'model_int8.tflite'}",
            "--eval_batches=1",
            "--params_override=data.batch_size=32",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "(tflite_int8) on test, 32 images: top-1" in result.stdout
    assert "XNNPACK" not in result.stderr, result.stderr  # LiteRT's native INFO line is held (native_logs)


def test_mixed_precision_trains_in_float16_and_exports_float32(tmp_path, monkeypatch):
    """What a run on a GPU does (float16 compute, loss scaling), forced on the CPU."""
    real = tf.config.list_logical_devices
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else real(kind))
    config = tiny_config(**{"train.epochs": 1, "train.steps_per_epoch": 2, "export.enabled": "false"})
    trainer = retrain.RetrainRun(config, TINY, tmp_path, strategy=tf.distribute.get_strategy())
    assert trainer.model.get_layer("conv_stem").compute_dtype == "float16"
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    before = trainer.model.get_weights()
    result = trainer.run()
    assert np.isfinite(result["history"][0]["loss"])
    assert max(np.abs(a - b).max() for a, b in zip(before, trainer.model.get_weights())) > 0
    exported = trainer.export_model()
    assert exported.get_layer("conv_stem").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "retrain").glob("*.yaml")), ids=lambda p: p.stem)
def test_retrain_configs_load_and_fit_their_models(path):
    config = config_lib.load(RetrainConfig, str(path))
    if config.data.name == "tfrecord":  # where the user's ImageNet TFRecords are is theirs to give
        config.data.data_dir = "/data/imagenet/tfrecords"
    config.validate()
    if path.stem.startswith("cream_"):  # ImageNet at the zoo model's input size, the paper's recipe
        from cream_tf import zoo

        assert config.data.image_size == zoo.arch_of(path.stem).input_size
        assert (config.train.epochs, config.train.optimizer, config.train.ema_decay) == (500, "rmsprop", 0.9999)


def test_divergence_stops_the_retrain_and_exports_nothing(tmp_path):
    from cream_tf import RunError

    trainer = retrain.RetrainRun(tiny_config(**{"train.lr": 1e6}), TINY, tmp_path / "run")
    diverged = r"Training diverged in epoch 1, step \d+: loss is (nan|inf) .*train.lr=1000000.0"
    with pytest.raises(RunError, match=diverged):
        trainer.run()
    assert not (tmp_path / "run" / "entry").exists() and not (tmp_path / "run" / "retrain_result.json").exists()
    assert not list((tmp_path / "run").glob("checkpoints/ckpt-*"))


def test_qat_follows_the_retrain_when_enabled(tmp_path):
    from cream_tf import qat

    # export.int8 off: the QAT entry makes its own post-training file.
    settings = {"train.steps_per_epoch": 2, "export.eval_batches": 1, "export.calibration_images": 16}
    settings["export.int8"] = "false"
    config = tiny_config(**settings, **{"qat.enabled": "true", "qat.steps": 2, "qat.batch_size": 16})
    result = retrain.RetrainRun(config, TINY, tmp_path).run()
    entry = tmp_path / "entry_qat"
    assert result["qat"]["entry"] == str(entry) and result["qat"]["steps"] == 2
    meta = json.loads((entry / "metadata.json").read_text())
    assert meta["quantization"]["method"] == "qat" and meta["data"]["name"] == "fashion_mnist"
    assert qat.float_ops((entry / "model_int8.tflite").read_bytes()) == []
    assert meta["accuracy"]["images"] == 32 and "tflite_int8_ptq" in meta["accuracy"]["top1"]
    with pytest.raises(ValueError, match="export.enabled=False is not valid; valid: true when qat.enabled"):
        tiny_config(**{"qat.enabled": "true", "export.enabled": "false"}).validate()
