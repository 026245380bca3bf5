"""`python main.py --mode=config`: every key a user can override, listed with its type, default
and meaning, as YAML that loads back to the same config."""

import dataclasses

import pytest
import yaml

from cream_tf import config as config_lib

REPO_CONFIGS = {
    config_lib.SearchConfig: "configs/search/fashion_mnist.yaml",
    config_lib.RetrainConfig: "configs/retrain/fashion_mnist.yaml",
}


@pytest.mark.parametrize("cls", list(REPO_CONFIGS))
def test_describe_lists_every_key_and_loads_back(cls, tmp_path):
    config = config_lib.load(cls, REPO_CONFIGS[cls], "train.lr=1e-3")
    text = config_lib.describe(config)
    keys = [
        f"{section.name}.{field.name}"
        for section in dataclasses.fields(config)
        for field in dataclasses.fields(getattr(config, section.name))
    ]
    listed, current = [], ""
    for line in text.splitlines():
        if line.startswith("  "):
            listed.append(f"{current}.{line.split(':')[0].strip()}")
            assert ", default " in line.split("  # ", 1)[1], line
        else:
            current = line.rstrip(":")
    assert listed == keys
    assert "  lr: 0.001  # float, default " in text
    (tmp_path / "back.yaml").write_text(text)
    assert config_lib.load(cls, str(tmp_path / "back.yaml")) == config
    assert yaml.safe_load(text) == config_lib.to_dict(config)
