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
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist's --dist loadgroup, the tests that share a module-scoped fixture (directly
    or through another test's fixtures) or an `xdist_group` mark form one group and run in one
    process, so each fixture is built once and the marked tests never run at the same time; every
    other test is scheduled on its own (tests/test_scheduling.py checks that they do)."""
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
            group = root(names[0])
            item.own_markers = [mark for mark in item.own_markers if mark.name != "xdist_group"]
            item.add_marker(pytest.mark.xdist_group(group))
            if config.getoption("loadgroup", False):  # set on pytest-xdist's workers under --dist loadgroup
                _tell_the_scheduler(item, group)


def _tell_the_scheduler(item, group):
    """pytest-xdist 3.8 tells its scheduler an item's group by appending "@group" to the node id it
    reports, written to `item._nodeid`, which pytest 9.2 no longer reads (its node ids live in
    `item._id`): every group was silently ignored, each test scheduled on its own
    (pytest-dev/pytest-xdist#1386). Here the id pytest 9.2 reports gets the suffix; an xdist that
    appends it again is harmless, as the scheduler reads the group after the last "@"."""
    from _pytest.nodeid import NodeId  # pytest 9.2 (constraints.txt)

    if not item.nodeid.endswith(f"@{group}"):
        item._id = NodeId.parse(f"{item.nodeid}@{group}")
    if not item.nodeid.endswith(f"@{group}"):
        raise pytest.UsageError(
            f"this pytest does not report the group of {item.nodeid}; --dist loadgroup would not group it"
        )
