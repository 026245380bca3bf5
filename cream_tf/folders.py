"""The names of the files and folders cream_tf writes, in one place: inside a zoo entry folder
and inside a run's `model_dir`.

A zoo entry folder (cream_tf.export writes it):

    model.keras            opens with keras.models.load_model, no cream_tf needed
    saved_model/           for TF Serving and tf.saved_model.load (signature 'serve')
    model_float32.tflite   for ai_edge_litert / TFLite on device
    model_int8.tflite      with data: full-integer post-training quantization (--mode=qat: the QAT model's)
    model_int8_ptq.tflite  --mode=qat: the post-training file, for comparison
    labels.txt             the class names, one per line, where known
    metadata.json          architecture, input and preprocessing, FLOPs, parameters, weights source

A run's model_dir (search or retrain) holds config.yaml, checkpoints/ (ckpt-N, each holding the
run's host state too), tensorboard/, .lock while a run works there, and the run's own results
(see cream_tf.search.run and cream_tf.retrain).
"""

# A zoo entry folder.
KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FLOAT_FILE = "model_float32.tflite"
TFLITE_INT8_FILE = "model_int8.tflite"
TFLITE_INT8_PTQ_FILE = "model_int8_ptq.tflite"  # a QAT entry's post-training file, for comparison
METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.txt"  # one class name per line, in label order

# A run's model_dir.
CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
ARCH_FILE = "arch.json"  # retrain: the architecture trained
HISTORY_FILE = "history.json"  # retrain: a row per epoch
RETRAIN_RESULT_FILE = "retrain_result.json"
QAT_RESULT_FILE = "qat_result.json"
LOCK_FILE = ".lock"  # while a run works there: its pid and host (cream_tf.run_guard)
BOARD_FILE = "board.json"  # search: the board after every epoch
SEARCH_RESULT_FILE = "search_result.json"
SEARCH_PLOT_FILE = "search_plot.png"
SEARCH_ZOO_DIR = "zoo"  # search: zoo/board_NN, one entry folder per board path
