"""config.SpawnerConfig declares the settings; they are read from ``c.RootlessGPUSpawner``."""

from traitlets.config import Config

from rootless_gpu_spawner import RootlessGPUSpawner
from rootless_gpu_spawner.config import SpawnerConfig


def test_settings_declared_in_config_apply_from_the_spawner_section():
    c = Config()
    c.RootlessGPUSpawner.gpus = "all"
    c.RootlessGPUSpawner.max_gpus_per_user = 3
    c.RootlessGPUSpawner.mirror_prefixes = ["mirror.example.org"]
    c.RootlessGPUSpawner.workspace_mount = "/work/"
    spawner = RootlessGPUSpawner(config=c)
    assert spawner.gpus == "all"
    assert spawner.max_gpus_per_user == 3
    assert spawner.mirror_prefixes == ["mirror.example.org"]
    assert spawner.workspace_mount == "/work"  # the validator in config.py ran
    assert spawner.notebook_dir == "/work"  # and the spawner's own default follows it


def test_every_declared_setting_is_the_spawners_own():
    declared = set(SpawnerConfig.class_own_traits(config=True))
    assert declared and declared <= set(RootlessGPUSpawner.class_own_traits(config=True))
    assert "RootlessGPUSpawner.gpus" in RootlessGPUSpawner.class_config_section()


def test_inherited_settings_keep_this_spawners_defaults():
    spawner = RootlessGPUSpawner()
    assert spawner.host_ip == "127.0.0.1"
    assert spawner.remove is True
