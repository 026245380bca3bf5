"""Object detection with Cream backbones, through TensorFlow Model Garden.

- `cream_tf.detection.garden`: the `cream` backbone and the RetinaNet experiments, registered with
  Model Garden on import (it imports Model Garden; nothing else here does).
- `cream_tf.detection.demo_data`: a detection demo set made from Fashion-MNIST, in the TFRecord
  format of Model Garden's COCO converter.
- `python -m cream_tf.detection {data,train,export,tflite} ...`: Model Garden's drivers with
  both registered.
"""
