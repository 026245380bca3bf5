"""A PyTorch reference of the Cream search step, for differential tests of cream_tf.

`supernet` builds the weight-sharing supernet out of timm's MobileNetV3 blocks and copies weights
to and from a cream_tf `Supernet`; `search` is the official training loop (microsoft/Cream,
lib/core/train.py, lib/models/PrioritizedBoard.py, lib/models/MetaMatchingNetwork.py) written
out again in PyTorch, with every place where cream_tf departs from it on purpose behind a named
switch (`search.Switches`): `OURS` is cream_tf's documented algorithm, `OFFICIAL` the released
code's.

Import torch (and so timm and torchvision) before TensorFlow: torchvision imported after
TensorFlow crashes the process (tests/conftest.py does this for pytest).
"""
