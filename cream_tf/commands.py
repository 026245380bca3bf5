"""What each command-line mode does, as functions a program can call with plain arguments
(cream_tf.cli maps the flags onto them). Each returns the text the command prints.

    from cream_tf import commands
    print(commands.describe(commands.arch_from(zoo_name="cream_14")))
    print(commands.search(model_dir="runs/quick", params_override="train.epochs=3,cream.warmup_epochs=1"))

The heavy modules (TensorFlow and what builds on it) are imported inside the functions, so
`--help`, `--mode=config` and errors in the arguments answer at once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_SEARCH_CONFIG = str(CONFIGS / "search" / "fashion_mnist.yaml")
DEFAULT_RETRAIN_CONFIG = str(CONFIGS / "retrain" / "fashion_mnist.yaml")


def arch_from(*, zoo_name=None, arch=None, num_classes=None, in_channels=None):
    """The architecture of exactly one of a zoo name and an architecture string, with the
    classifier width and input channels replaced where given."""
    from cream_tf import zoo
    from cream_tf.arch import Arch

    if bool(zoo_name) == bool(arch):
        raise ValueError(f"Give exactly one of --zoo=NAME or --arch=STRING (zoo names: {', '.join(zoo.names())}).")
    parsed = zoo.arch_of(zoo_name) if zoo_name else Arch.parse(arch)
    overrides = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels)) if v is not None}
    return parsed.replace(**overrides)


def describe(arch, zoo_name=None) -> str:
    """The architecture, its depths and its per-layer multiply-adds and parameters."""
    from cream_tf import zoo
    from cream_tf.flops import cost_of

    lines = [f"architecture: {arch}"]
    if zoo_name:
        published = zoo.entry(zoo_name)
        lines.insert(
            0, f"zoo model:    {zoo_name} (paper, ImageNet: top-1 {published['top1']}, top-5 {published['top5']})"
        )
    lines.append(f"depths:       {list(arch.depths)}")
    return "\n".join(lines + ["", cost_of(arch).table()])


def latency(arch, *, latency_table=None, threads=1, int8=False, refresh=False, calibration=10) -> str:
    """The network's latency in LiteRT (XNNPACK) on this host, predicted from a latency table
    (cream_tf.latency; the blocks it lacks, and `calibration` networks of the arch's depths, are
    measured into it first) and measured whole."""
    from cream_tf import latency as lat
    from cream_tf.arch import SearchSpace
    from cream_tf.flops import flops_of

    precision = "int8" if int8 else "float32"
    table = lat.LatencyTable.open(latency_table or lat.default_table_path(threads), threads, refresh)
    wanted = lat.pieces(arch) | lat.drawn_archs(SearchSpace(arch), (0, math.inf), calibration)
    measured_now = lat.measure_missing(table, wanted, (precision,))
    keys = lat.network_keys(arch)
    predicted = lat.predict_ms(arch, table, precision)
    ratios = table.calibration_ratios(precision, arch.input_size)
    scale = f"{table.scale(precision, arch.input_size):.3f}, the median of {len(ratios)} calibration networks"
    whole = lat.measure_network(arch, precision, threads)
    error = (predicted - whole["ms"]) / whole["ms"] * 100
    return "\n".join(
        [
            f"architecture: {arch}",
            f"runtime:      {lat.runtime()} (XNNPACK), {precision}, {threads} thread(s)",
            f"MFLOPs:       {flops_of(arch) / 1e6:.2f}",
            f"table:        {table.path} ({len(table.entries[precision])} {precision} entries, "
            f"{measured_now} measured now; {table.device})",
            f"predicted:    {predicted:.4f} ms (the sum of {len(keys)} table entries, each block's and the head's, "
            f"times {scale if ratios else '1: no calibration network at this input size'})",
            f"measured:     {whole['ms']:.4f} ms (the fastest of {whole['rounds']} rounds of {whole['calls']} calls; "
            f"median {whole['median_ms']:.4f}, slowest {whole['max_ms']:.4f})",
            f"error:        {error:+.1f}%",
        ]
    )


def retrain_config(config_file=None, params_override: str = ""):
    from cream_tf import config as config_lib

    return config_lib.load(config_lib.RetrainConfig, config_file or DEFAULT_RETRAIN_CONFIG, params_override)


def export(arch, output_dir, *, zoo_name=None, weights=None, config_file=None, params_override="", overwrite=False):
    """An entry folder of `arch` with `weights` (a .keras file or entry folder; random without).
    With a config (file or overrides) the data is known: the int8 file and measured accuracy too."""
    from cream_tf import export as exporter
    from cream_tf import zoo
    from cream_tf.childnet import build_child

    if not output_dir:
        raise ValueError("--mode=export needs --output_dir=DIR.")
    model = build_child(arch, name=zoo_name or "cream")
    if weights:
        zoo.load_weights_from(model, weights)
    # The paper's accuracy belongs to the official weights only (--mode=convert), not to these.
    extra = {"zoo_name": zoo_name} if zoo_name else {}
    preprocessing = zoo.IMAGENET_PREPROCESSING if zoo_name else None
    data_config = export_config = None
    if config_file or params_override:
        from cream_tf import data

        config = retrain_config(config_file, params_override)
        data_config, export_config = config.data, config.export
        preprocessing = data.preprocessing_metadata(data_config)
    path = exporter.write_entry(
        model,
        arch,
        output_dir,
        weights_source=weights or "random",
        preprocessing=preprocessing,
        extra_metadata=extra,
        overwrite=overwrite,
        data_config=data_config,
        export_config=export_config,
    )
    message = f"wrote zoo entry {path} ({', '.join(sorted(p.name for p in path.iterdir()))})"
    if not weights:
        message = (
            "Warning: no --weights given, so the entry holds randomly initialized weights "
            f"(metadata.json says weights: random); convert official ones with --mode=convert.\n{message}"
        )
    if data_config is not None:
        message += "\n" + format_accuracy(json.loads((path / exporter.METADATA_FILE).read_text())["accuracy"])
    return message


def convert(arch, checkpoint, output_dir, *, zoo_name=None, num_classes=None, use_ema=True, overwrite=False):
    """An entry folder from an official PyTorch checkpoint of `arch`."""
    from cream_tf import convert as converter
    from cream_tf import export as exporter
    from cream_tf import zoo

    if not (checkpoint and output_dir):
        raise ValueError("--mode=convert needs --checkpoint=FILE.pth.tar and --output_dir=DIR.")
    read = converter.read_checkpoint(checkpoint, use_ema=use_ema)
    model, arch = converter.build_from_checkpoint(arch, read, num_classes, name=zoo_name or "cream")
    extra = {"checkpoint": read.metadata()}
    if zoo_name:
        extra.update(zoo_name=zoo_name, paper_accuracy=zoo.entry(zoo_name))
    # The official training code normalizes with the ImageNet statistics whatever the architecture.
    path = exporter.write_entry(
        model,
        arch,
        output_dir,
        weights_source=read.description,
        produced_by="convert",
        preprocessing=zoo.IMAGENET_PREPROCESSING,
        extra_metadata=extra,
        overwrite=overwrite,
    )
    return f"wrote zoo entry {path} from {read.description}"


def search(*, config_file=None, params_override="", model_dir="runs/search", allow_config_change=False) -> str:
    """The whole search (resumed when `model_dir` holds a checkpoint); its last lines."""
    from absl import logging

    from cream_tf import config as config_lib

    config = config_lib.load(config_lib.SearchConfig, config_file or DEFAULT_SEARCH_CONFIG, params_override)
    # The first line at once: importing TensorFlow and building the supernet take seconds to minutes.
    logging.info("Search in %s: loading TensorFlow, then the data and the supernet.", model_dir)
    from cream_tf.search.run import SearchRun

    result = SearchRun(config, model_dir).run(allow_config_change=allow_config_change)
    if result is None:
        return "worker finished"
    winner = result["winner"]
    if winner is None:
        return f"search finished without a board (see {model_dir}/search_result.json)"
    return search_summary(winner, model_dir)


def search_summary(winner: dict, model_dir: str) -> str:
    """The search's last lines: the winner, where the results are, and the command to run next."""
    from cream_tf import folders

    entry = winner.get("entry") and os.path.join(model_dir, winner["entry"])  # stored relative to model_dir
    retrain = f"cream-tf --mode=retrain --search_result={model_dir}/{folders.SEARCH_RESULT_FILE}"
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


def format_accuracy(accuracy: dict) -> str:
    """An entry's `accuracy` (metadata.json): each format's top-1/top-5 on the same images, and
    what it changes against the reference format."""
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


def retrain(
    *,
    model_dir,
    search_result=None,
    zoo_name=None,
    arch=None,
    config_file=None,
    params_override="",
    weights=None,
    output_dir=None,
    overwrite=False,
    allow_config_change=False,
) -> str:
    """One architecture (from a search result, the zoo, a string, or `model_dir`'s own) retrained."""
    from cream_tf import retrain as retrainer

    chosen = retrainer.arch_from(search_result=search_result, zoo_name=zoo_name, arch=arch, model_dir=model_dir)
    result = retrainer.RetrainRun(
        retrain_config(config_file, params_override),
        chosen,
        model_dir,
        weights=weights,
        output_dir=output_dir,
        overwrite=overwrite,
    ).run(allow_config_change=allow_config_change)
    if result is None:
        return "worker finished"
    where = f"entry: {result['entry']}\n" if result.get("entry") else ""
    accuracy = result["accuracy"]
    return (
        f"retrained {result['arch']} for {result['epochs']} epochs in {result['timing']['train_seconds']} s\n"
        f"{where}{format_accuracy(accuracy) if 'images' in accuracy else accuracy}\n"
        f"results: {model_dir}/retrain_result.json, TensorBoard: {model_dir}/tensorboard"
    )


def qat(
    model, output_dir, *, model_dir, config_file=None, params_override="", overwrite=False, allow_config_change=False
):
    """Quantization-aware fine-tuning of the entry folder `model` into `output_dir`; the qat: and
    export: sections of the (retrain) config set the steps, rate and measuring."""
    from cream_tf import folders
    from cream_tf import qat as quantizer

    if not (model and output_dir):
        raise ValueError("--mode=qat needs --model=ENTRY_FOLDER and --output_dir=DIR.")
    run = quantizer.QatRun(
        retrain_config(config_file, params_override), model, model_dir, output_dir, overwrite=overwrite
    )
    result = run.run(allow_config_change=allow_config_change)
    return (
        f"QAT: {result['steps']} steps; entry: {result['entry']}\n{format_accuracy(result['accuracy'])}\n"
        f"results: {model_dir}/{folders.QAT_RESULT_FILE}, TensorBoard: {model_dir}/tensorboard"
    )


def evaluate(target, *, config_file=None, params_override="", split="test", eval_batches=0) -> dict:
    """Top-1/top-5 of `target` (a .keras or .tflite file, an entry folder, a retrain model_dir or
    one of its checkpoints) on `split`: measured on the data it was trained on (a retrain's
    config.yaml) or exported with (an entry's preprocessing), unless a config is given."""
    from cream_tf import checkpoints, data, folders
    from cream_tf import evaluate as evaluator

    target = Path(target)
    run_dir, _ = checkpoints.run_of(target)
    recorded = run_dir / folders.CONFIG_FILE
    data_config = retrain_config(config_file or (recorded if recorded.is_file() else None), params_override).data
    metadata = target / folders.METADATA_FILE
    if not config_file and metadata.is_file():  # an entry folder: measured as it was exported
        data_config = data.config_for_entry(data_config, json.loads(metadata.read_text()).get("preprocessing"))
    return evaluator.evaluate(target, data_config, split, eval_batches)


def format_evaluation(figures: dict) -> str:
    return (
        f"{figures['source']} ({figures['format']}) on {figures['split']}, {figures['images']} images: "
        f"top-1 {figures['top1']:.2f}%, top-5 {figures['top5']:.2f}%"
    )


def show_config(config_file=None, params_override: str = "") -> str:
    """The resolved config of `config_file` and the overrides (a search config, or a retrain one
    when its sections or keys are a retrain's), every key with its type, default and meaning."""
    from cream_tf import config as config_lib

    file = config_file or DEFAULT_SEARCH_CONFIG
    config = config_lib.load(config_lib.config_class_of(file, params_override), file, params_override)
    return f"# {type(config).__name__} from {file}\n{config_lib.describe(config)}"
