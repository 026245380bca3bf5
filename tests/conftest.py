import os
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(__file__))  # for torch_reference

# torchvision (imported by timm) crashes the process with a segmentation fault when it is
# imported after TensorFlow (torch 2.14.1 / torchvision 0.29.1 / tensorflow 2.20 on Linux);
# imported first, both work. The reference models need timm, so load it before any test.
import torchvision


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks
def pytest_collection_modifyitems(items):
    """Under pytest-xdist's --dist loadgroup, the tests that share a module-scoped fixture (directly
    or through another test's fixtures) or an `xdist_group` mark form one group and run in one
    process, so each fixture is built once and the marked tests never run at the same time; every
    other test is scheduled on its own."""
    parent = {}

    def root(name):
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    shared = {}
    for item in items:
        definitions = item._fixtureinfo.name2fixturedefs
        names = [f"group {mark.args[0]}" for mark in item.iter_markers("xdist_group")]
        names += [
            f"{item.module.__name__}.{n}"
            for n in item.fixturenames
            if definitions.get(n, [None])[-1] and definitions[n][-1].scope == "module"
        ]
        shared[item] = names
        for name in names[1:]:
            parent[root(name)] = root(names[0])
    for item, names in shared.items():
        if names:
            item.own_markers = [mark for mark in item.own_markers if mark.name != "xdist_group"]
            item.add_marker(pytest.mark.xdist_group(root(names[0])))
