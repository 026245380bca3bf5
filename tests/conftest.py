import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))  # for torch_reference

# torchvision (imported by timm) crashes the process with a segmentation fault when it is
# imported after TensorFlow (torch 2.14.1 / torchvision 0.29.1 / tensorflow 2.20 on Linux);
# imported first, both work. The reference models need timm, so load it before any test.
import torchvision
