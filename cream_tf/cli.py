"""The command line, `cream-tf` (setup.py's console script) or `python main.py`: absl flags
mapped onto cream_tf.commands, and errors a user can act on printed as one line.

    cream-tf --mode=describe --zoo=cream_287
    cream-tf --mode=describe --arch='[3][3,3][3,1,3][3,3,3,3][3,3,3]@224'
    cream-tf --mode=export --zoo=cream_14 --output_dir=/tmp/cream_14
    cream-tf --mode=search                      # the default Fashion-MNIST search
    cream-tf --mode=search --config_file=configs/search/imagenet.yaml --model_dir=runs/imagenet \\
        --params_override="data.data_dir=/data/imagenet,train.epochs=120"
    cream-tf --mode=convert --zoo=cream_287 --checkpoint=287.pth.tar --output_dir=/tmp/cream_287
    cream-tf --mode=retrain --search_result=runs/search/search_result.json --model_dir=runs/retrain
    cream-tf --mode=eval --model_dir=runs/retrain        # or --model=FILE.keras|.tflite|ENTRY_DIR
    cream-tf --mode=qat --model=runs/retrain/entry --output_dir=runs/qat/entry   # int8 by QAT
    cream-tf --mode=config --config_file=configs/retrain/fashion_mnist.yaml   # every key, type, default
    cream-tf --mode=latency --zoo=cream_14 --int8        # predicted (latency table) and measured ms
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging

import cream_tf
from cream_tf import RunError, commands

MODES = ("search", "describe", "export", "convert", "retrain", "eval", "config", "qat", "latency")
DEFAULT_RETRAIN_DIR = "runs/retrain"
DEFAULT_QAT_DIR = "runs/qat"

flags.DEFINE_enum("mode", None, MODES, "What to do.")
flags.DEFINE_string(
    "config_file",
    None,
    "search/retrain/eval/export: a YAML config, or several comma-separated, later ones winning "
    "(e.g. a search config, then configs/spaces/npu.yaml); default configs/search/fashion_mnist.yaml, "
    "configs/retrain/fashion_mnist.yaml for retrain and eval; export reads data from it only when given.",
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
flags.DEFINE_string(
    "latency_table",
    None,
    "latency: the table to predict from, missing blocks measured into it (default: this host's, in ~/.cache/cream_tf).",
)
flags.DEFINE_integer("threads", 1, "latency: LiteRT's thread count.")
flags.DEFINE_bool("int8", False, "latency: the full-integer int8 file (as --mode=export writes it) instead of float32.")
flags.DEFINE_bool(
    "latency_refresh",
    False,
    "latency: measure a table afresh when it was measured with other threads or another LiteRT.",
)
flags.DEFINE_integer(
    "latency_calibration",
    10,
    "latency: whole networks of the architecture's depths measured into the table once per input size and "
    "precision, to calibrate its sum (cream_tf.latency).",
    lower_bound=0,
)
flags.DEFINE_integer("eval_batches", 0, "eval: batches of data.batch_size to measure; 0 = the whole split.")
FLAGS = flags.FLAGS


def _model_dir(default: str) -> str:
    """--model_dir when given, else the mode's own default (its flag default is the search's)."""
    return FLAGS.model_dir if FLAGS["model_dir"].present else default


def run_mode(mode: str) -> str:
    """What `mode` prints, from the flags."""
    f = FLAGS
    config = {"config_file": f.config_file, "params_override": f.params_override}
    resume = {"allow_config_change": f.allow_config_change}
    output = {"output_dir": f.output_dir, "overwrite": f.overwrite}
    if mode == "search":
        return commands.search(model_dir=f.model_dir, **resume, **config)
    if mode == "retrain":
        source = {"search_result": f.search_result, "zoo_name": f.zoo, "arch": f.arch, "weights": f.weights}
        return commands.retrain(model_dir=_model_dir(DEFAULT_RETRAIN_DIR), **source, **output, **resume, **config)
    if mode == "eval":
        target = f.model or _model_dir(DEFAULT_RETRAIN_DIR)
        return commands.format_evaluation(
            commands.evaluate(target, split=f.split, eval_batches=f.eval_batches, **config)
        )
    if mode == "config":
        return commands.show_config(f.config_file, f.params_override)
    if mode == "qat":
        return commands.qat(f.model, model_dir=_model_dir(DEFAULT_QAT_DIR), **output, **resume, **config)
    arch = commands.arch_from(zoo_name=f.zoo, arch=f.arch, num_classes=f.num_classes, in_channels=f.in_channels)
    if mode == "describe":
        return commands.describe(arch, f.zoo)
    if mode == "latency":
        table = {"latency_table": f.latency_table, "refresh": f.latency_refresh, "calibration": f.latency_calibration}
        return commands.latency(arch, threads=f.threads, int8=f.int8, **table)
    if mode == "export":
        return commands.export(arch, zoo_name=f.zoo, weights=f.weights, **output, **config)
    return commands.convert(arch, f.checkpoint, zoo_name=f.zoo, num_classes=f.num_classes, use_ema=f.use_ema, **output)


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


_OUR_CODE = os.path.dirname(os.path.abspath(cream_tf.__file__)) + os.sep


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

            model_dir = FLAGS.model_dir if FLAGS.mode == "search" else _model_dir(DEFAULT_RETRAIN_DIR)
            argv = launch.without_flag(sys.argv, "local_workers")  # each worker runs the same command
            raise SystemExit(launch.launch(argv, FLAGS.local_workers, Path(model_dir) / "logs"))
        print(run_mode(FLAGS.mode))
    except (ValueError, FileNotFoundError, RunError) as error:
        print(f"Error: {error}", file=sys.stderr)
        raise SystemExit(getattr(error, "exit_code", 1)) from None
    except BrokenPipeError:  # the output piped into a program that stopped reading (`| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # as Python's docs advise
        raise SystemExit(1) from None
    except KeyboardInterrupt as stop:  # a second Ctrl-C, or one with nothing to save (cream_tf.run_guard)
        print(f"Error: {getattr(stop, 'message', None) or 'Interrupted.'}", file=sys.stderr)
        raise SystemExit(getattr(stop, "exit_code", 130)) from None


def run():
    """The entry point of `cream-tf` and `python main.py`. absl's --help lists the key flags of
    the program it was started as (sys.argv[0]), so those defined here are made its key flags."""
    for flag in FLAGS.get_key_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)
