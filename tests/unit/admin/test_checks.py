"""doctor's checks against temporary host files: each problem named, each fix exact."""

import json
import os
import pwd
import stat

import pytest

from rootless_gpu_spawner.admin import checks as hostchecks
from rootless_gpu_spawner.host import nvidiaconf
from rootless_gpu_spawner.admin.checks import DaemonFacts, HostPaths

from nvidia_stock import STOCK  # tests/unit is on sys.path (no package)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown / mknod)")


@pytest.fixture
def paths(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "subuid").write_text("alice:100000:65536\nrgs-fake:165536:65536\nbob:231072:65536\n")
    (etc / "subgid").write_text("alice:100000:65536\nrgs-fake:165536:65536\nbob:231072:65536\n")
    return HostPaths(
        subuid=str(etc / "subuid"),
        subgid=str(etc / "subgid"),
        tun=str(tmp_path / "tun"),
        nvidia_config=str(tmp_path / "nvidia" / "config.toml"),
        cdi_dirs=(str(tmp_path / "cdi"),),
        nvidia_devices=(str(tmp_path / "nvidia0"),),
        systemd_marker=str(tmp_path / "run-systemd-system"),
        linger_dir=str(tmp_path / "linger"),
        cgroup_root=str(tmp_path / "cgroup"),
        proc_sys=str(tmp_path / "proc-sys"),
        user_delegate_dir=str(tmp_path / "user@.service.d"),
    )


# ---------------------------------------------------------------- subordinate ids


def test_subids_present(pw, paths):
    c = hostchecks.check_subids(pw, paths, "uid")
    assert c.ok and c.status == "pass" and "165536-231071" in c.detail and c.scope == "rgs-fake"


def test_subuid_entry_removed_names_problem_and_free_range(pw, paths):
    with open(paths.subuid, "w") as f:
        f.write("alice:100000:65536\nbob:231072:65536\n")
    c = hostchecks.check_subids(pw, paths, "uid")
    assert not c.ok and c.status == "fail"
    assert "gives rgs-fake 0 subordinate uids, needs at least 65536" in c.detail
    # first id after every range of *both* files: 296608
    assert c.fix.startswith("usermod --add-subuids 296608-362143 rgs-fake")
    assert "rootless-gpu-admin bootstrap --user rgs-fake" in c.fix
    assert hostchecks.check_subids(pw, paths, "gid").ok  # subgid untouched
    assert hostchecks.subid_fix(pw, paths, ["uid", "gid"]) == \
        "usermod --add-subuids 296608-362143 --add-subgids 296608-362143 rgs-fake"


def test_too_small_range_and_overlap(pw, paths):
    with open(paths.subgid, "w") as f:
        f.write("alice:100000:65536\nrgs-fake:300000:1000\n")
    c = hostchecks.check_subids(pw, paths, "gid")
    assert not c.ok and "1000 subordinate gids" in c.detail
    with open(paths.subgid, "w") as f:
        f.write("alice:100000:65536\nrgs-fake:150000:65536\n")
    c = hostchecks.check_subids(pw, paths, "gid")
    assert not c.ok and "overlaps alice's 100000-165535" in c.detail
    assert c.fix.startswith("usermod --del-subgids 150000-215535 rgs-fake && usermod --add-subgids 296608-362143 rgs-fake")


def test_free_subid_start_floor(tmp_path):
    p = HostPaths(subuid=str(tmp_path / "none"), subgid=str(tmp_path / "none2"))
    assert hostchecks.free_subid_start(p) == 100000


# ---------------------------------------------------------------- NVIDIA


def test_nvidia_config_no_cgroups_false(paths):
    os.makedirs(os.path.dirname(paths.nvidia_config))
    with open(paths.nvidia_config, "w") as f:
        f.write(STOCK.replace("#no-cgroups = false", "no-cgroups = false"))
    c = hostchecks.check_no_cgroups(paths, which=lambda n: None)
    assert not c.ok
    assert "no-cgroups is false" in c.detail and "devices.allow: permission denied" in c.detail
    assert c.fix.startswith("rootless-gpu-admin bootstrap --gpu")
    assert f"edit {paths.nvidia_config}: under [nvidia-container-cli] set 'no-cgroups = true'" in c.fix
    with open(paths.nvidia_config, "w") as f:
        f.write(nvidiaconf.set_no_cgroups(STOCK).text)
    assert hostchecks.check_no_cgroups(paths, which=lambda n: None).status == "pass"


def test_nvidia_config_unset_and_missing(paths):
    os.makedirs(os.path.dirname(paths.nvidia_config))
    with open(paths.nvidia_config, "w") as f:
        f.write(STOCK)
    c = hostchecks.check_no_cgroups(paths, which=lambda n: None)
    assert not c.ok and "not set (default false)" in c.detail
    os.unlink(paths.nvidia_config)
    # no config, no toolkit, no GPU: not applicable
    assert hostchecks.check_no_cgroups(paths, which=lambda n: None).status == "skip"
    # a GPU but no config: that is a problem
    open(paths.nvidia_devices[0], "w").close()
    c = hostchecks.check_no_cgroups(paths, which=lambda n: None)
    assert not c.ok and "missing" in c.detail


def test_nvidia_toolkit_and_cdi(paths, tmp_path):
    none = lambda n: None  # noqa: E731
    assert hostchecks.check_nvidia_toolkit(paths, none).status == "skip"
    assert hostchecks.check_cdi(paths, none).status == "skip"
    open(paths.nvidia_devices[0], "w").close()  # the host now "has" a GPU
    c = hostchecks.check_nvidia_toolkit(paths, none)
    assert not c.ok and "nvidia-container-runtime-hook and nvidia-container-cli missing" in c.detail
    assert "install nvidia-container-toolkit" in c.fix
    fake = {"nvidia-container-runtime-hook": "/x/hook", "nvidia-container-cli": "/x/cli"}
    assert hostchecks.check_nvidia_toolkit(paths, fake.get).status == "pass"
    c = hostchecks.check_cdi(paths, none)
    assert c.status == "warn" and c.fix.startswith("nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml")
    os.makedirs(paths.cdi_dirs[0])
    with open(os.path.join(paths.cdi_dirs[0], "nvidia.yaml"), "w") as f:
        f.write("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\n")
    assert hostchecks.check_cdi(paths, none).status == "pass"


# ---------------------------------------------------------------- tun, userns, binaries


@as_root
def test_tun_modes(paths, pw):
    c = hostchecks.check_tun(paths)
    assert not c.ok and "does not exist" in c.detail and c.fix.startswith("modprobe tun")
    os.mknod(paths.tun, stat.S_IFCHR | 0o600, os.makedev(10, 200))
    os.chmod(paths.tun, 0o600)
    other = pwd.struct_passwd(("rgs-other", "x", 4242, 4242, "", "/nonexistent", "/bin/sh"))
    c = hostchecks.check_tun(paths, [other])
    assert not c.ok and "mode 0600" in c.detail and "not read/writable by rgs-other" in c.detail
    assert c.fix.startswith(f"chmod 666 {paths.tun}")
    os.chmod(paths.tun, 0o666)
    assert hostchecks.check_tun(paths, [other]).ok
    os.unlink(paths.tun)
    open(paths.tun, "w").close()
    c = hostchecks.check_tun(paths)
    assert not c.ok and "not a character device" in c.detail


def test_userns(paths):
    base = paths.proc_sys
    os.makedirs(os.path.join(base, "user"))
    os.makedirs(os.path.join(base, "kernel"))
    with open(os.path.join(base, "user/max_user_namespaces"), "w") as f:
        f.write("15000\n")
    assert hostchecks.check_userns(paths).ok
    with open(os.path.join(base, "kernel/unprivileged_userns_clone"), "w") as f:
        f.write("0\n")
    with open(os.path.join(base, "kernel/apparmor_restrict_unprivileged_userns"), "w") as f:
        f.write("1\n")
    c = hostchecks.check_userns(paths)
    assert not c.ok and "unprivileged_userns_clone = 0" in c.detail and "AppArmor" in c.detail
    assert "sysctl -w kernel.unprivileged_userns_clone=1" in c.fix
    assert "flags=(unconfined)" in c.fix and "userns," in c.fix and "systemctl restart apparmor.service" in c.fix


def test_missing_binaries_name_the_package():
    c = hostchecks.check_binary("slirp4netns", "slirp4netns", "network", which=lambda n: None)
    assert not c.ok and c.fix == "apt-get install slirp4netns"
    c = hostchecks.check_uidmap(HostPaths(), which=lambda n: None)
    assert not c.ok and c.fix == "apt-get install uidmap"
    c = hostchecks.check_docker(which=lambda n: None)
    assert not c.ok and "apt-get install docker.io" in c.fix


def test_real_host_binaries_found():
    # This machine kind has the Debian packages installed (scripts/install-deps.sh).
    for c in (hostchecks.check_uidmap(HostPaths()), hostchecks.check_docker(), hostchecks.check_setpriv()):
        assert c.ok, c


# ---------------------------------------------------------------- systemd, linger, cgroup


def test_systemd_linger_and_cgroup(paths, pw):
    assert hostchecks.check_systemd(paths).status == "warn"
    assert hostchecks.check_linger(pw, paths).status == "skip"
    c = hostchecks.check_cgroup(paths)
    assert c.status == "warn" and "cgroup v1" in c.detail and "systemd.unified_cgroup_hierarchy=1" in c.fix
    os.makedirs(paths.systemd_marker)
    os.makedirs(paths.linger_dir)
    os.makedirs(paths.cgroup_root)
    open(os.path.join(paths.cgroup_root, "cgroup.controllers"), "w").close()
    assert hostchecks.check_systemd(paths).status == "pass"
    c = hostchecks.check_linger(pw, paths)
    assert not c.ok and c.fix == "loginctl enable-linger rgs-fake"
    open(os.path.join(paths.linger_dir, "rgs-fake"), "w").close()
    assert hostchecks.check_linger(pw, paths).ok
    c = hostchecks.check_cgroup(paths)
    assert c.status == "warn" and "Delegate=cpu cpuset io memory pids" in c.fix
    os.makedirs(paths.user_delegate_dir)
    with open(os.path.join(paths.user_delegate_dir, "delegate.conf"), "w") as f:
        f.write("[Service]\nDelegate=cpu cpuset io memory pids\n")
    assert hostchecks.check_cgroup(paths).status == "pass"


# ---------------------------------------------------------------- workspace


def test_workspace(pw, tmp_path):
    c = hostchecks.check_workspace(pw)
    ws = os.path.join(pw.pw_dir, "workspace")
    assert not c.ok and "does not exist" in c.detail
    assert "rootless-gpu-admin bootstrap --user rgs-fake" in c.fix and f"install -d -o rgs-fake" in c.fix and ws in c.fix
    os.symlink(str(tmp_path), ws)
    c = hostchecks.check_workspace(pw)
    assert not c.ok and "outside the home" in c.detail and c.fix == f"as rgs-fake: rm {ws} && mkdir {ws}"
    os.unlink(ws)
    os.mkdir(ws)
    assert hostchecks.check_workspace(pw).ok


@as_root
def test_workspace_wrong_owner(pw):
    ws = os.path.join(pw.pw_dir, "workspace")
    os.mkdir(ws)
    os.chown(ws, 4242, 4242)
    c = hostchecks.check_workspace(pw)
    assert not c.ok and "not rgs-fake" in c.detail and c.fix.startswith(f"chown rgs-fake:") and c.fix.endswith(ws)


# ---------------------------------------------------------------- daemon.json and daemon facts


def _daemon_json(pw, data):
    d = os.path.join(pw.pw_dir, ".config", "docker")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "daemon.json"), "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))


def test_daemon_json(pw):
    c = hostchecks.check_daemon_json(pw)
    assert c.status == "warn" and "does not exist" in c.detail and "--mirror URL" in c.fix
    _daemon_json(pw, {"features": {"buildkit": True}, "insecure-registries": ["10.0.2.2:5000"]})
    c = hostchecks.check_daemon_json(pw)
    assert c.status == "warn" and "sets no registry-mirrors; other keys kept: features" in c.detail
    _daemon_json(pw, {"features": {"buildkit": True}, "registry-mirrors": ["http://10.0.2.2:5000"]})
    c = hostchecks.check_daemon_json(pw)
    assert c.status == "pass" and "other keys kept: features" in c.detail
    _daemon_json(pw, '{"registry-mirrors": [')
    c = hostchecks.check_daemon_json(pw)
    assert not c.ok and "not valid JSON" in c.detail and "rootless-gpu-admin bootstrap --user rgs-fake" in c.fix


def test_daemon_json_not_loaded_by_running_daemon(pw):
    _daemon_json(pw, {"registry-mirrors": ["http://10.0.2.2:5000"]})
    up = {"running": True, "rootless": True}
    loaded = DaemonFacts(up, {"RegistryConfig": {"Mirrors": ["http://10.0.2.2:5000/"]}})
    assert hostchecks.check_daemon_json(pw, loaded).ok  # docker adds the trailing slash
    stale = DaemonFacts(up, {"RegistryConfig": {"Mirrors": []}})
    c = hostchecks.check_daemon_json(pw, stale)
    assert not c.ok and "reads the file only at start" in c.detail
    assert c.fix.startswith("rootless-gpu-admin stop-daemon rgs-fake && rootless-gpu-admin start-daemon rgs-fake")


def test_host_loopback_from_rootlesskit_flags(pw):
    up = {"running": True, "rootless": True}
    off = DaemonFacts(up, {}, {123: ["/usr/bin/rootlesskit", "--net=slirp4netns", "--disable-host-loopback", "dockerd-rootless.sh"]})
    c = hostchecks.check_host_loopback(pw, off)
    assert not c.ok and "pid 123" in c.detail and "--disable-host-loopback" in c.detail
    assert c.fix.startswith("rootless-gpu-admin stop-daemon rgs-fake && rootless-gpu-admin start-daemon rgs-fake")
    on = DaemonFacts(up, {}, {123: ["/usr/bin/rootlesskit", "--net=slirp4netns", "dockerd-rootless.sh"]})
    c = hostchecks.check_host_loopback(pw, on)
    assert c.ok and "--net=slirp4netns" in c.detail
    assert hostchecks.check_host_loopback(pw, DaemonFacts({"running": False})).status == "skip"


def test_daemon_down_names_start_daemon(pw):
    st = {"running": False, "rootless": None, "pid": None, "socket": "/run/user/1/docker.sock",
          "error": "no socket /run/user/1/docker.sock", "log_file": "/run/user/1/x.log"}
    c = hostchecks.check_daemon(pw, DaemonFacts(st))
    assert not c.ok and c.fix.startswith("rootless-gpu-admin start-daemon rgs-fake")
    # dockerd still runs but its socket was removed: stop it first
    c = hostchecks.check_daemon(pw, DaemonFacts(dict(st, pid=4321, socket_exists=False)))
    assert "dockerd (pid 4321) runs but does not answer" in c.detail and "the socket is gone" in c.detail
    assert c.fix.startswith("rootless-gpu-admin stop-daemon rgs-fake && rootless-gpu-admin start-daemon rgs-fake")


def test_check_record_json():
    c = hostchecks.failed("x", "broken", "do y", "alice")
    assert c.to_dict() == {"name": "x", "ok": False, "detail": "broken", "fix": "do y", "scope": "alice", "status": "fail"}
    assert hostchecks.warned("w", "meh", None).ok is True


def test_nvidia_path_from_env(monkeypatch):
    monkeypatch.setenv(hostchecks.NVIDIA_CONFIG_ENV, "/tmp/some/config.toml")
    assert HostPaths.from_env().nvidia_config == "/tmp/some/config.toml"
    assert HostPaths.from_env("/x.toml").nvidia_config == "/x.toml"
    monkeypatch.delenv(hostchecks.NVIDIA_CONFIG_ENV)
    assert HostPaths.from_env().nvidia_config == "/etc/nvidia-container-runtime/config.toml"
