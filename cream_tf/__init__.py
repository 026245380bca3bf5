"""cream_tf: Cream of the Crop one-shot neural architecture search in TensorFlow/Keras."""

__version__ = "0.1.0"
