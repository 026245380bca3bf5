"""TensorFlow Lite's native code writes log lines to stderr that TF_CPP_MIN_LOG_LEVEL does not
reach: the converter logs through absl before absl::InitializeLog ("Ignored output_format",
"MLIR V1 optimization pass is not enabled"), the interpreter prints "INFO: Created TensorFlow
Lite XNNPACK delegate for CPU." `held()` keeps them off the console where that level asks for
quiet (2 or more, as main.py sets without --verbose): stderr goes to a temporary file meanwhile,
shown only if the work fails.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def held():
    if int(os.environ.get("TF_CPP_MIN_LOG_LEVEL") or 0) < 2:
        yield
        return
    sys.stderr.flush()
    stderr = os.dup(2)
    with tempfile.TemporaryFile() as kept:
        os.dup2(kept.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(stderr, 2)
            kept.seek(0)
            sys.stderr.write(kept.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(stderr, 2)
            os.close(stderr)
