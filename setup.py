import re
from pathlib import Path

from setuptools import find_packages, setup


def pinned(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


setup(
    name="cream_tf",
    version=re.search(r'__version__ = "(.+)"', Path("cream_tf/__init__.py").read_text()).group(1),
    description="Cream of the Crop one-shot neural architecture search in TensorFlow/Keras",
    packages=find_packages(include=["cream_tf", "cream_tf.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=pinned("requirements.txt"),
    entry_points={"console_scripts": ["cream-tf = cream_tf.cli:run"]},
    extras_require={"test": pinned("requirements-test.txt"), "torch": ["torch==2.14.1"]},
)
