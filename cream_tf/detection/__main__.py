"""Model Garden's own drivers with the Cream backbone and experiments registered (cream_tf.detection.garden).

    python -m cream_tf.detection data   --out=runs/detection/data             # the demo set (demo_data)
    python -m cream_tf.detection train  --experiment=retinanet_cream_demo --mode=train_and_eval \\
        --model_dir=runs/detection/cream                                       # official/vision/train.py
    python -m cream_tf.detection export --experiment=retinanet_cream_demo --checkpoint_path=runs/detection/cream \\
        --export_dir=runs/detection/cream/export --input_image_size=256,256 --batch_size=1   # export_saved_model.py
    python -m cream_tf.detection tflite --experiment=retinanet_cream_demo \\
        --saved_model_dir=runs/detection/cream/export/saved_model --tflite_path=runs/detection/cream/model.tflite

Every flag after the command is the Model Garden driver's own (`--helpfull` lists them).
"""

from __future__ import annotations

import sys

COMMANDS = {
    "data": "cream_tf.detection.demo_data",
    "train": "official.vision.train",
    "export": "official.vision.serving.export_saved_model",
    "tflite": "official.vision.serving.export_tflite",
}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        given = repr(argv[1]) if len(argv) > 1 else "nothing"
        raise SystemExit(
            f"Error: python -m cream_tf.detection COMMAND [flags]: got {given}; valid commands are "
            f"{', '.join(COMMANDS)}.\n{__doc__}"
        )
    import importlib

    from absl import app

    command = argv[1]
    if command == "data":
        importlib.import_module(COMMANDS[command]).main(argv[2:])
        return
    import cream_tf.detection.garden  # noqa: F401 (registers the backbone and the experiments)

    # The drivers define their flags on import (train.py only under __main__); import one only.
    module = importlib.import_module(COMMANDS[command])
    if command == "train":
        from official.common import flags as tfm_flags

        tfm_flags.define_flags()
    app.run(module.main, argv=[f"{argv[0]} {command}", *argv[2:]])


if __name__ == "__main__":
    main(sys.argv)
