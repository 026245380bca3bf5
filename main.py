"""cream_tf command line.

    python main.py --mode=describe --zoo=cream_287
    python main.py --mode=describe --arch='[3][3,3][3,1,3][3,3,3,3][3,3,3]@224'
    python main.py --mode=export --zoo=cream_14 --output_dir=/tmp/cream_14
    python main.py --mode=search                      # the default Fashion-MNIST search
    python main.py --mode=search --config_file=configs/search/imagenet.yaml --model_dir=runs/imagenet \
        --params_override="data.data_dir=/data/imagenet,train.epochs=120"
    python main.py --mode=convert --zoo=cream_287 --checkpoint=287.pth.tar --output_dir=/tmp/cream_287
    python main.py --mode=retrain --search_result=runs/search/search_result.json --model_dir=runs/retrain
    python main.py --mode=eval --model_dir=runs/retrain        # or --model=FILE.keras|.tflite|ENTRY_DIR
    python main.py --mode=qat --model=runs/retrain/entry --output_dir=runs/qat/entry   # int8 by QAT
    python main.py --mode=config --config_file=configs/retrain/fashion_mnist.yaml   # every key, type, default
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging

import cream_tf
from cream_tf import RunError

MODES = ("search", "describe", "export", "convert", "retrain", "eval", "config", "qat")
DEFAULT_SEARCH_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs", "search", "fashion_mnist.yaml"
)
DEFAULT_RETRAIN_CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "configs", "retrain", "fashion_mnist.yaml"
)
DEFAULT_RETRAIN_DIR = "runs/retrain"
DEFAULT_QAT_DIR = "runs/qat"

flags.DEFINE_enum("mode", None, MODES, "What to do.")
flags.DEFINE_string(
    "config_file",
    None,
    "search/retrain/eval/export: a YAML config (default: configs/search/"
    "fashion_mnist.yaml, configs/retrain/fashion_mnist.yaml for retrain and eval; export reads data "
    "from it only when given).",
)
flags.DEFINE_string(
    "params_override", "", "search/retrain/eval/export: overrides, e.g. 'train.epochs=2,data.batch_size=64' or YAML."
)
flags.DEFINE_string(
    "model_dir",
    "runs/search",
    "search/retrain/qat: where checkpoints, logs and results go; a "
    "checkpoint there is resumed (retrain and eval default to runs/retrain, qat to runs/qat).",
)
flags.DEFINE_string("zoo", None, "A zoo model name, e.g. cream_287.")
flags.DEFINE_string("arch", None, "An architecture string, e.g. '[3][3,3][3,1,3][3,3,3,3][3,3,3]@224'.")
flags.DEFINE_integer("num_classes", None, "Classifier width (default: the architecture's own, 1000 for the zoo).")
flags.DEFINE_integer(
    "in_channels", None, "Input channels: 3 for RGB, 1 for grayscale (default: the architecture's own)."
)
flags.DEFINE_string(
    "weights", None, "export/retrain: a .keras file or entry folder to take weights from (default: fresh)."
)
flags.DEFINE_string(
    "output_dir", None, "export: the entry folder to write; retrain: where its entry goes (default: MODEL_DIR/entry)."
)
flags.DEFINE_bool(
    "allow_config_change",
    False,
    "search/retrain: resume a run in --model_dir even though the config now differs from its config.yaml.",
)
flags.DEFINE_integer(
    "local_workers",
    1,
    "search/retrain: train as this many processes on this machine, one per GPU (MultiWorkerMirroredStrategy "
    "over localhost, as torch.distributed runs one process per GPU), so each traces one replica's graph; "
    "1 = one process for every local GPU (MirroredStrategy).",
)
flags.DEFINE_bool(
    "verbose",
    False,
    "Also show TensorFlow's own log lines (its C++ runtime's and its Python INFO lines); cream_tf's are always shown.",
)
flags.DEFINE_bool("overwrite", False, "export/retrain: replace an existing output folder.")
flags.DEFINE_string(
    "checkpoint",
    None,
    "convert: an official PyTorch checkpoint (.pth.tar) to convert; --output_dir and --overwrite as for export.",
)
flags.DEFINE_bool(
    "use_ema",
    True,
    "convert: take the checkpoint's EMA weights (state_dict_ema) when it has them; --nouse_ema takes state_dict.",
)
flags.DEFINE_string("search_result", None, "retrain: a search_result.json whose winner to retrain (or --zoo, --arch).")
flags.DEFINE_string(
    "model",
    None,
    "eval: a .keras or .tflite file, a zoo entry folder, or a retrain model_dir or checkpoint (default: --model_dir); "
    "qat: the entry folder to fine-tune (one written with data).",
)
flags.DEFINE_string("split", "test", "eval: the split to measure (test, validation, train, train_full).")
flags.DEFINE_integer("eval_batches", 0, "eval: batches of data.batch_size to measure; 0 = the whole split.")
FLAGS = flags.FLAGS


def _arch_from_flags():
    from cream_tf import zoo
    from cream_tf.arch import Arch

    if bool(FLAGS.zoo) == bool(FLAGS.arch):
        raise app.UsageError(f"Give exactly one of --zoo=NAME or --arch=STRING (zoo names: {', '.join(zoo.names())}).")
    arch = zoo.arch_of(FLAGS.zoo) if FLAGS.zoo else Arch.parse(FLAGS.arch)
    overrides = {
        k: v for k, v in (("num_classes", FLAGS.num_classes), ("in_channels", FLAGS.in_channels)) if v is not None
    }
    return arch.replace(**overrides)


def describe(arch) -> str:
    from cream_tf import zoo
    from cream_tf.flops import cost_of

    lines = [f"architecture: {arch}"]
    if FLAGS.zoo:
        published = zoo.entry(FLAGS.zoo)
        lines.insert(
            0, f"zoo model:    {FLAGS.zoo} (paper, ImageNet: top-1 {published['top1']}, top-5 {published['top5']})"
        )
    lines.append(f"depths:       {list(arch.depths)}")
    return "\n".join(lines + ["", cost_of(arch).table()])


def export(arch) -> str:
    from cream_tf import export as exporter
    from cream_tf import zoo
    from cream_tf.childnet import build_child

    if not FLAGS.output_dir:
        raise app.UsageError("--mode=export needs --output_dir=DIR.")
    model = build_child(arch, name=FLAGS.zoo or "cream")
    if FLAGS.weights:
        zoo.load_weights_from(model, FLAGS.weights)
    # The paper's accuracy belongs to the official weights only (--mode=convert), not to these.
    extra = {"zoo_name": FLAGS.zoo} if FLAGS.zoo else {}
    preprocessing = zoo.IMAGENET_PREPROCESSING if FLAGS.zoo else None
    data_config = export_config = None
    if FLAGS.config_file or FLAGS.params_override:  # data given: int8 file and measured accuracy too
        from cream_tf import data

        config = _retrain_config(FLAGS.config_file)
        data_config, export_config = config.data, config.export
        preprocessing = data.preprocessing_metadata(data_config)
    path = exporter.write_entry(
        model,
        arch,
        FLAGS.output_dir,
        weights_source=FLAGS.weights or "random",
        preprocessing=preprocessing,
        extra_metadata=extra,
        overwrite=FLAGS.overwrite,
        data_config=data_config,
        export_config=export_config,
    )
    message = f"wrote zoo entry {path} ({', '.join(sorted(p.name for p in path.iterdir()))})"
    if not FLAGS.weights:
        message = (
            "Warning: no --weights given, so the entry holds randomly initialized weights "
            f"(metadata.json says weights: random); convert official ones with --mode=convert.\n{message}"
        )
    if data_config is not None:
        message += "\n" + _format_accuracy(json.loads((path / exporter.METADATA_FILE).read_text())["accuracy"])
    return message


def convert(arch) -> str:
    from cream_tf import convert as converter
    from cream_tf import export as exporter
    from cream_tf import zoo

    if not (FLAGS.checkpoint and FLAGS.output_dir):
        raise app.UsageError("--mode=convert needs --checkpoint=FILE.pth.tar and --output_dir=DIR.")
    checkpoint = converter.read_checkpoint(FLAGS.checkpoint, use_ema=FLAGS.use_ema)
    model, arch = converter.build_from_checkpoint(arch, checkpoint, FLAGS.num_classes, name=FLAGS.zoo or "cream")
    extra = {"checkpoint": checkpoint.metadata()}
    if FLAGS.zoo:
        extra.update(zoo_name=FLAGS.zoo, paper_accuracy=zoo.entry(FLAGS.zoo))
    # The official training code normalizes with the ImageNet statistics whatever the architecture.
    path = exporter.write_entry(
        model,
        arch,
        FLAGS.output_dir,
        weights_source=checkpoint.description,
        preprocessing=zoo.IMAGENET_PREPROCESSING,
        extra_metadata=extra,
        overwrite=FLAGS.overwrite,
    )
    return f"wrote zoo entry {path} from {checkpoint.description}"


def search() -> str:
    from cream_tf import config as config_lib

    config = config_lib.load(config_lib.SearchConfig, FLAGS.config_file or DEFAULT_SEARCH_CONFIG, FLAGS.params_override)
    # The first line at once: importing TensorFlow and building the supernet take seconds to minutes.
    absl_logging.info("Search in %s: loading TensorFlow, then the data and the supernet.", FLAGS.model_dir)
    from cream_tf.search.run import Search

    result = Search(config, FLAGS.model_dir).run(allow_config_change=FLAGS.allow_config_change)
    if result is None:
        return "worker finished"
    winner = result["winner"]
    if winner is None:
        return f"search finished without a board (see {FLAGS.model_dir}/search_result.json)"
    return search_summary(winner, FLAGS.model_dir)


def search_summary(winner: dict, model_dir: str) -> str:
    """The search's last lines: the winner, where the results are, and the command to run next."""
    from cream_tf import folders

    entry = winner.get("entry") and os.path.join(model_dir, winner["entry"])  # stored relative to model_dir
    retrain = f"python main.py --mode=retrain --search_result={model_dir}/{folders.SEARCH_RESULT_FILE}"
    return "\n".join(
        [
            f"selected {winner['arch']}: {winner['mflops']} MFLOPs, held-out top-1 {winner['val_top1']}%, "
            f"test top-1 {winner['test_top1']}%" + (f"; zoo entry {entry}" if entry else ""),
            f"results: {model_dir}/{folders.SEARCH_RESULT_FILE}, plot: {model_dir}/{folders.SEARCH_PLOT_FILE}, "
            f"TensorBoard: tensorboard --logdir {model_dir}/{folders.TENSORBOARD}",
            "next, retrain the winner" + (" from the weights it inherited" if entry else "") + ":",
            f"  {retrain}" + (f" --weights={entry}" if entry else "") + " --model_dir=runs/retrain",
        ]
    )


def _retrain_config(config_file):
    from cream_tf import config as config_lib

    return config_lib.load(config_lib.RetrainConfig, config_file or DEFAULT_RETRAIN_CONFIG, FLAGS.params_override)


def _retrain_dir() -> str:
    return FLAGS.model_dir if FLAGS["model_dir"].present else DEFAULT_RETRAIN_DIR


def _format_accuracy(accuracy: dict) -> str:
    lines = [f"{accuracy['split']} split, {accuracy['images']} images:"]
    changes = accuracy.get("changes", {})
    for name in accuracy["top1"]:
        line = f"  {name:15s} top-1 {accuracy['top1'][name]:.2f}%  top-5 {accuracy['top5'][name]:.2f}%"
        c = changes.get(name)
        if c and c["same_class"] == accuracy["images"]:
            line += f"  same class as {c['against']} on every image"
        elif c:
            gap = accuracy["top1"][name] - accuracy["top1"][c["against"]]
            line += (
                f"  against {c['against']}: {c['lost']} lost, {c['won']} won "
                f"(gap {gap:+.2f} ± {c['paired_standard_error']:.2f} points, McNemar p {c['mcnemar_p']:.2f})"
            )
        lines.append(line)
    return "\n".join(lines)


def retrain() -> str:
    from cream_tf import retrain as retrainer

    model_dir = _retrain_dir()
    arch = retrainer.arch_from(
        search_result=FLAGS.search_result, zoo_name=FLAGS.zoo, arch=FLAGS.arch, model_dir=model_dir
    )
    result = retrainer.Retrainer(
        _retrain_config(FLAGS.config_file),
        arch,
        model_dir,
        weights=FLAGS.weights,
        output_dir=FLAGS.output_dir,
        overwrite=FLAGS.overwrite,
    ).run(allow_config_change=FLAGS.allow_config_change)
    if result is None:
        return "worker finished"
    where = f"entry: {result['entry']}\n" if result.get("entry") else ""
    return (
        f"retrained {result['arch']} for {result['epochs']} epochs in {result['timing']['train_seconds']} s\n"
        f"{where}{_format_accuracy(result['accuracy']) if 'images' in result['accuracy'] else result['accuracy']}\n"
        f"results: {model_dir}/retrain_result.json, TensorBoard: {model_dir}/tensorboard"
    )


def qat() -> str:
    """Quantization-aware fine-tuning of --model (an entry folder) into --output_dir; the qat: and
    export: sections of --config_file (a retrain config) set the steps, rate and measuring."""
    from cream_tf import qat as quantizer

    if not (FLAGS.model and FLAGS.output_dir):
        raise app.UsageError("--mode=qat needs --model=ENTRY_FOLDER and --output_dir=DIR.")
    model_dir = FLAGS.model_dir if FLAGS["model_dir"].present else DEFAULT_QAT_DIR
    run = quantizer.QatRun(
        _retrain_config(FLAGS.config_file), FLAGS.model, model_dir, FLAGS.output_dir, overwrite=FLAGS.overwrite
    )
    result = run.run(allow_config_change=FLAGS.allow_config_change)
    return (
        f"QAT: {result['steps']} steps; entry: {result['entry']}\n{_format_accuracy(result['accuracy'])}\n"
        f"results: {model_dir}/{quantizer.QatRun.RESULT_FILE}, TensorBoard: {model_dir}/tensorboard"
    )


def evaluate() -> dict:
    """Prints and returns top-1/top-5 of --model (default: the retrain --model_dir) on --split."""
    from pathlib import Path

    from cream_tf import evaluate as evaluator
    from cream_tf import folders

    target = Path(FLAGS.model or _retrain_dir())
    # A retrain model_dir, or a checkpoint in one, is measured on the data it was trained on.
    run_dir = target.parent.parent if Path(f"{target}.index").is_file() else target
    config_file = FLAGS.config_file
    if not config_file and (run_dir / folders.CONFIG_FILE).is_file():
        config_file = str(run_dir / folders.CONFIG_FILE)
    data_config = _retrain_config(config_file).data
    metadata = target / folders.METADATA_FILE
    if not FLAGS.config_file and metadata.is_file():  # an entry folder: measured as it was exported
        from cream_tf import data

        data_config = data.config_for_entry(data_config, json.loads(metadata.read_text()).get("preprocessing"))
    figures = evaluator.evaluate(target, data_config, FLAGS.split, FLAGS.eval_batches)
    print(
        f"{figures['source']} ({figures['format']}) on {figures['split']}, {figures['images']} images: "
        f"top-1 {figures['top1']:.2f}%, top-5 {figures['top5']:.2f}%"
    )
    return figures


def show_config() -> str:
    """The resolved config of --config_file and --params_override (a search config, or a
    retrain one when the file is one), every key with its type, default and meaning."""
    from cream_tf import config as config_lib

    file = FLAGS.config_file or DEFAULT_SEARCH_CONFIG
    try:
        config = config_lib.load(config_lib.SearchConfig, file, FLAGS.params_override)
    except ValueError as search_error:
        try:
            config = config_lib.load(config_lib.RetrainConfig, file, FLAGS.params_override)
        except ValueError:
            raise search_error from None
    return f"# {type(config).__name__} from {file}\n{config_lib.describe(config)}"


def _quiet_tensorflow() -> None:
    """Before TensorFlow is imported: its C++ INFO and WARNING lines off (and, on a machine
    without a GPU, its ERROR lines too, which there are only the failed probe for one), its
    Python INFO lines off; --verbose, or TF_CPP_MIN_LOG_LEVEL set by the user, keeps them."""
    if FLAGS.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    from cream_tf.launch import local_accelerators

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if local_accelerators() else "3")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    # TensorFlow's checkpoint code logs "Sharding callback duration" at INFO through absl's
    # logger, which also carries cream_tf's own INFO lines: drop only other libraries' INFO.
    absl_logging.get_absl_logger().addFilter(_only_our_info)


_OUR_CODE = (os.path.dirname(os.path.abspath(cream_tf.__file__)) + os.sep, os.path.abspath(__file__))


def _only_our_info(record) -> bool:
    return record.levelno >= logging.WARNING or os.path.abspath(record.pathname).startswith(_OUR_CODE)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _quiet_tensorflow()
    if FLAGS.mode is None:
        raise app.UsageError(f"--mode is required; valid modes are {', '.join(MODES)}.")
    try:
        if FLAGS.local_workers != 1 and FLAGS.mode in ("search", "retrain"):
            from pathlib import Path

            from cream_tf import launch

            model_dir = FLAGS.model_dir if FLAGS.mode == "search" else _retrain_dir()
            argv = launch.without_flag(sys.argv, "local_workers")  # each worker runs the same command
            raise SystemExit(launch.launch(argv, FLAGS.local_workers, Path(model_dir) / "logs"))
        if FLAGS.mode == "search":
            print(search())
            return
        if FLAGS.mode == "retrain":
            print(retrain())
            return
        if FLAGS.mode == "eval":
            evaluate()
            return
        if FLAGS.mode == "config":
            print(show_config())
            return
        if FLAGS.mode == "qat":
            print(qat())
            return
        arch = _arch_from_flags()
        print({"describe": describe, "export": export, "convert": convert}[FLAGS.mode](arch))
    except (ValueError, FileNotFoundError, RunError) as error:
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(getattr(error, "exit_code", 1)) from None


if __name__ == "__main__":
    app.run(main)
