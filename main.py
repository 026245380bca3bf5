"""cream_tf command line.

    python main.py --mode=describe --zoo=cream_287
    python main.py --mode=describe --arch='[3][3,3][3,1,3][3,3,3,3][3,3,3]@224'
    python main.py --mode=export --zoo=cream_14 --output_dir=/tmp/cream_14
    python main.py --mode=search                      # the default Fashion-MNIST search
    python main.py --mode=search --config_file=configs/search/imagenet.yaml --model_dir=runs/imagenet \
        --params_override="data.data_dir=/data/imagenet,train.epochs=120"
    python main.py --mode=convert --zoo=cream_287 --checkpoint=287.pth.tar --output_dir=/tmp/cream_287
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

MODES = ("search", "describe", "export", "convert")
DEFAULT_SEARCH_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "search",
                                     "fashion_mnist.yaml")

flags.DEFINE_enum("mode", None, MODES, "What to do.")
flags.DEFINE_string("config_file", None, "search: a YAML config (default: configs/search/fashion_mnist.yaml).")
flags.DEFINE_string("params_override", "", "search: overrides, e.g. 'train.epochs=2,data.batch_size=64' or YAML.")
flags.DEFINE_string("model_dir", "runs/search", "search: where checkpoints, logs and results go; a "
                    "checkpoint there is resumed.")
flags.DEFINE_string("zoo", None, "A zoo model name, e.g. cream_287.")
flags.DEFINE_string("arch", None, "An architecture string, e.g. '[3][3,3][3,1,3][3,3,3,3][3,3,3]@224'.")
flags.DEFINE_integer("num_classes", None, "Classifier width (default: the architecture's own, 1000 for the zoo).")
flags.DEFINE_integer("in_channels", None, "Input channels: 3 for RGB, 1 for grayscale (default: the architecture's own).")
flags.DEFINE_string("weights", None, "export: a .keras file or entry folder to take weights from (default: fresh).")
flags.DEFINE_string("output_dir", None, "export: the entry folder to write.")
flags.DEFINE_bool("overwrite", False, "export: replace an existing output folder.")
flags.DEFINE_string("checkpoint", None, "convert: an official PyTorch checkpoint (.pth.tar) to convert; "
                    "--output_dir and --overwrite as for export.")
flags.DEFINE_bool("use_ema", True, "convert: take the checkpoint's EMA weights (state_dict_ema) when it has "
                  "them; --nouse_ema takes state_dict.")
FLAGS = flags.FLAGS


def _arch_from_flags():
    from cream_tf import zoo
    from cream_tf.arch import Arch

    if bool(FLAGS.zoo) == bool(FLAGS.arch):
        raise app.UsageError("Give exactly one of --zoo=NAME or --arch=STRING "
                             f"(zoo names: {', '.join(zoo.names())}).")
    arch = zoo.arch_of(FLAGS.zoo) if FLAGS.zoo else Arch.parse(FLAGS.arch)
    overrides = {k: v for k, v in (("num_classes", FLAGS.num_classes), ("in_channels", FLAGS.in_channels))
                 if v is not None}
    return arch.replace(**overrides)


def describe(arch) -> str:
    from cream_tf import zoo
    from cream_tf.flops import cost_of

    lines = [f"architecture: {arch}"]
    if FLAGS.zoo:
        published = zoo.entry(FLAGS.zoo)
        lines.insert(0, f"zoo model:    {FLAGS.zoo} (paper, ImageNet: top-1 {published['top1']}, "
                        f"top-5 {published['top5']})")
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
    extra = {"zoo_name": FLAGS.zoo, "paper_accuracy": zoo.entry(FLAGS.zoo)} if FLAGS.zoo else {}
    path = exporter.write_entry(
        model, arch, FLAGS.output_dir,
        weights_source=FLAGS.weights or "random initialization (no weights given)",
        preprocessing=zoo.IMAGENET_PREPROCESSING if FLAGS.zoo else None,
        extra_metadata=extra, overwrite=FLAGS.overwrite)
    return f"wrote zoo entry {path} ({', '.join(sorted(p.name for p in path.iterdir()))})"


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
    path = exporter.write_entry(model, arch, FLAGS.output_dir, weights_source=checkpoint.description,
                                preprocessing=zoo.IMAGENET_PREPROCESSING, extra_metadata=extra,
                                overwrite=FLAGS.overwrite)
    return f"wrote zoo entry {path} from {checkpoint.description}"


def search() -> str:
    from cream_tf import config as config_lib
    from cream_tf.search.run import Search

    config = config_lib.load(config_lib.SearchConfig, FLAGS.config_file or DEFAULT_SEARCH_CONFIG,
                             FLAGS.params_override)
    result = Search(config, FLAGS.model_dir).run()
    if result is None:
        return "worker finished"
    winner = result["winner"]
    if winner is None:
        return f"search finished without a board (see {FLAGS.model_dir}/search_result.json)"
    return (f"selected {winner['arch']}: {winner['mflops']} MFLOPs, held-out top-1 {winner['val_top1']}%, "
            f"test top-1 {winner['test_top1']}% -> {winner.get('entry')}\n"
            f"results: {FLAGS.model_dir}/search_result.json, TensorBoard: {FLAGS.model_dir}/tensorboard")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.mode is None:
        raise app.UsageError(f"--mode is required; valid modes are {', '.join(MODES)}.")
    try:
        if FLAGS.mode == "search":
            print(search())
            return
        arch = _arch_from_flags()
        print({"describe": describe, "export": export, "convert": convert}[FLAGS.mode](arch))
    except ValueError as error:
        raise SystemExit(f"Error: {error}") from None


if __name__ == "__main__":
    app.run(main)
