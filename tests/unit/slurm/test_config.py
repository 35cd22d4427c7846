"""The Slurm spawner's settings: checked, documented (docs/*/slurm.md), and the entry points."""

import re
from pathlib import Path

import pytest
from traitlets import TraitError

from rootless_gpu_spawner.slurm.config import SlurmConfig
from rootless_gpu_spawner.slurm.spawner import RootlessGPUSlurmSpawner

ROOT = Path(__file__).resolve().parents[3]


def test_every_setting_has_help_with_an_example_and_is_documented():
    traits = SlurmConfig.class_own_traits(config=True)
    assert traits
    for lang in ("en", "zh"):
        text = (ROOT / "docs" / lang / "slurm.md").read_text(encoding="utf-8")
        for name, trait in traits.items():
            assert f"c.RootlessGPUSlurmSpawner.{name}" in trait.help, name
            assert f"| `{name}` |" in text, (lang, name)
    assert set(RootlessGPUSlurmSpawner.class_own_traits(config=True)) >= set(traits)


@pytest.mark.parametrize("trait,value,words", [
    ("slurm_form_options", ["gpus", "nodes"], "unknown ['nodes']"),
    ("slurm_partition", "gpu;rm", "not a partition name"),
    ("slurm_output", "/etc/x", "inside the student's home"),
    ("slurm_output", "../x", "inside the student's home"),
])
def test_bad_settings_name_the_trait(trait, value, words):
    with pytest.raises((TraitError, ValueError)) as e:
        RootlessGPUSlurmSpawner(**{trait: value})
    assert f"RootlessGPUSlurmSpawner.{trait}" in str(e.value) and words in str(e.value)


def test_entry_points():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^rootless-gpu-slurm = "rootless_gpu_spawner.slurm.spawner:RootlessGPUSlurmSpawner"', text, re.M)
    assert re.search(r'^rootless-gpu-run = "rootless_gpu_spawner.slurm.runner:main"', text, re.M)
