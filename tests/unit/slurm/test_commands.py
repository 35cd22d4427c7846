"""Slurm's commands from the event loop: typed errors within the command timeout."""

import os
import stat

import pytest

from rootless_gpu_spawner.slurm.commands import SlurmCommandFailed, SlurmCommands, SlurmUnreachable


def fake(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path)


async def test_missing_commands_say_what_to_install(tmp_path):
    with pytest.raises(SlurmUnreachable) as e:
        await SlurmCommands(str(tmp_path), timeout=2).run("squeue")
    assert "slurm_bin_dir" in str(e.value)


async def test_a_hung_controller_is_unreachable_within_the_timeout(tmp_path):
    bin_dir = fake(tmp_path, "sinfo", "exec sleep 30\n")
    with pytest.raises(SlurmUnreachable) as e:
        await SlurmCommands(bin_dir, timeout=0.5).run("sinfo")
    assert "did not answer within 0.5 s" in str(e.value)


async def test_controller_down_and_plain_refusal(tmp_path):
    bin_dir = fake(tmp_path, "sbatch", 'echo "sbatch: error: Unable to contact slurm controller (connect failure)" >&2; exit 1\n')
    fake(tmp_path, "scancel", 'printf "scancel: error: Invalid job id \\033[31m\\n" >&2; exit 1\n')
    with pytest.raises(SlurmUnreachable):
        await SlurmCommands(bin_dir, timeout=5).run("sbatch", stdin="#!/bin/sh\n")
    with pytest.raises(SlurmCommandFailed) as e:
        await SlurmCommands(bin_dir, timeout=5).run("scancel", "1")
    assert "\x1b" not in str(e.value) and "Invalid job id" in str(e.value)


async def test_slurm_conf_is_passed_and_nothing_else_of_the_hub(tmp_path, monkeypatch):
    bin_dir = fake(tmp_path, "squeue", 'echo "$SLURM_CONF|$SECRET"\n')
    monkeypatch.setenv("SECRET", "hub-only")
    out = await SlurmCommands(bin_dir, "/etc/slurm-demo/slurm.conf", timeout=5).run("squeue")
    assert out.strip() == "/etc/slurm-demo/slurm.conf|"
    assert os.environ["SECRET"] == "hub-only"
