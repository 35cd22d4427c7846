"""A hub-managed service started through the tether ends when its parent (the hub) dies."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rootless_gpu_spawner import culling, tether


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_the_service_dies_with_a_killed_parent_and_keeps_its_arguments(tmp_path):
    (tmp_path / "sleeper.py").write_text(textwrap.dedent("""
        import sys, time
        open(sys.argv[1], "w").write(" ".join(sys.argv[2:]))
        time.sleep(120)
    """))
    pidfile, argsfile = tmp_path / "child.pid", tmp_path / "args"
    hub = textwrap.dedent(f"""
        import subprocess, sys, time
        cmd = {tether.command("sleeper", str(argsfile), "--a=1", "b")!r}
        child = subprocess.Popen(cmd, start_new_session=True)  # as JupyterHub starts services
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(120)
    """)
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    parent = subprocess.Popen([sys.executable, "-c", hub], env=env)
    try:
        deadline = time.monotonic() + 30
        while not (argsfile.exists() and argsfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert argsfile.read_text() == "--a=1 b"
        child = int(pidfile.read_text())
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _wait_gone(child, 20), f"the tethered service {child} outlived its parent"
    finally:
        parent.kill()
        parent.wait(10)


def test_the_example_services_are_tethered():
    for service in (culling.board_service(10101), culling.culler_service(10101)):
        assert service["command"][1:3] == ["-m", "rootless_gpu_spawner.tether"], service


def test_without_a_module_it_says_how_to_call_it():
    with pytest.raises(SystemExit, match="usage"):
        tether.main([])
