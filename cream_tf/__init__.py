"""cream_tf: Cream of the Crop one-shot neural architecture search in TensorFlow/Keras."""

__version__ = "0.1.0"


class RunError(RuntimeError):
    """A run that cannot go on for a reason the user can act on; the message says how.
    `main.py` prints it as one `Error: ...` line and exits with `exit_code`."""

    exit_code = 1
