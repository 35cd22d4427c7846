"""hub/launch.py: how an image starts, decided from its inspect data and the probe's answer."""

import pytest

from rootless_gpu_spawner.errors import UnusableAnswer
from rootless_gpu_spawner.hub import launch
from rootless_gpu_spawner.hub.launch import (
    DERIVED_LAUNCHER, IncompatibleJupyterHub, InstallImpossible, NoPython, ProbeFacts, PythonTooOld,
    WrongArchitecture, image_facts, plan_launch, probe_facts,
)

ID = "sha256:" + "a" * 64
STACKS_ENV = {"NB_USER": "root", "NB_UID": "0", "NB_GID": "0", "CHOWN_HOME": "no"}
WITH_HUB = ProbeFacts(python="/opt/conda/bin/python3", version=(3, 11, 2), jupyterhub="6.1.1",
                      singleuser="/opt/conda/bin/jupyterhub-singleuser", answered=True)
NO_HUB = ProbeFacts(python="/usr/bin/python3", version=(3, 11, 2), answered=True)
NOTHING = ProbeFacts(answered=True)


def inspect(cmd=None, entrypoint=None, env=(), arch="amd64", user=""):
    return {"Id": ID, "Architecture": arch,
            "Config": {"Cmd": cmd, "Entrypoint": entrypoint, "Env": list(env), "User": user}}


def plan(answer, probe, may_install=True):
    return plan_launch(image_facts(answer), probe, name="img", hub_version="6.1.1",
                       stacks_env=STACKS_ENV, may_install=may_install)


@pytest.fixture(autouse=True)
def amd64_host(monkeypatch):
    monkeypatch.setattr(launch, "host_architecture", lambda: "amd64")


def test_docker_stacks_keep_their_command_and_get_the_rootless_triplet():
    p = plan(inspect(["start-notebook.py"], ["tini", "-g", "--", "start.sh"], ["NB_USER=jovyan"], user="1000"),
             WITH_HUB)
    assert p.command is None and p.docker_stacks and not p.derive
    assert p.env == STACKS_ENV


def test_a_committed_docker_stacks_image_with_bash_runs_the_server():
    p = plan(inspect(["/bin/bash"], ["tini", "-g", "--", "start.sh"], ["NB_USER=jovyan"]), WITH_HUB)
    assert p.command == ["jupyterhub-singleuser"] and p.env["NB_USER"] == "root"


@pytest.mark.parametrize("cmd", [["/bin/bash"], ["bash", "-l"], ["python3"], ["/bin/sh", "-c", "sleep 1"], None, []])
def test_commands_that_do_not_serve_are_replaced(cmd):
    p = plan(inspect(cmd), WITH_HUB)
    assert p.command == ["jupyterhub-singleuser"] and p.env == {}


@pytest.mark.parametrize("cmd", [["jupyterhub-singleuser"], ["/usr/local/bin/start-my-lab.sh"]])
def test_server_commands_are_kept(cmd):
    assert plan(inspect(cmd), WITH_HUB).command is None


def test_no_jupyter_with_python_builds_the_derived_image():
    p = plan(inspect(["python3"]), NO_HUB)
    assert p.derive and p.command == [DERIVED_LAUNCHER] and p.python == "/usr/bin/python3"


def test_no_jupyter_and_install_turned_off_is_refused_naming_the_setting():
    with pytest.raises(InstallImpossible, match="install_jupyter_if_missing"):
        plan(inspect(["python3"]), NO_HUB, may_install=False)


def test_no_python_is_refused_with_what_to_do():
    with pytest.raises(NoPython, match="has no Python.*3.9 or newer"):
        plan(inspect(["bash"]), NOTHING)


def test_python_below_the_floor_is_refused():
    with pytest.raises(PythonTooOld, match="Python 3.8.10 .*3.9 or newer"):
        plan(inspect(["bash"]), ProbeFacts(python="/usr/bin/python3", version=(3, 8, 10), answered=True))


@pytest.mark.parametrize("theirs", ["1.5.0", "5.2.1", "7.0.0", "garbage"])
def test_a_jupyterhub_of_another_major_version_is_named(theirs):
    probe = ProbeFacts(python="/p", version=(3, 11, 0), jupyterhub=theirs, singleuser="/p/jupyterhub-singleuser",
                       answered=True)
    with pytest.raises(IncompatibleJupyterHub, match="cannot talk to.*jupyterhub==6.1.1"):
        plan(inspect(["jupyterhub-singleuser"]), probe)


def test_same_major_other_minor_is_accepted():
    probe = ProbeFacts(python="/p", version=(3, 11, 0), jupyterhub="6.0.0", singleuser="/p/jupyterhub-singleuser",
                       answered=True)
    assert plan(inspect(["jupyterhub-singleuser"]), probe).command is None


def test_wrong_architecture_is_refused_before_anything_else():
    with pytest.raises(WrongArchitecture, match="built for arm64.*linux/amd64"):
        plan(inspect(["bash"], arch="arm64"), NOTHING)
    assert plan(inspect(["bash"], arch="x86_64"), WITH_HUB).command  # an alias of amd64


def test_probe_output_is_checked_and_the_last_mark_wins():
    out = 'noise\nRGS-PROBE {"python": 3}\nRGS-PROBE {"python": "/usr/bin/python3", "version": [3, 12, 1], ' \
          '"jupyterhub": "", "singleuser": ""}\n'
    facts = probe_facts(out)
    assert facts.python == "/usr/bin/python3" and facts.version == (3, 12, 1) and not facts.jupyterhub
    assert probe_facts("RGS-PROBE {not json") == ProbeFacts()
    assert probe_facts("RGS-PROBE {}") == NOTHING and probe_facts("fake server\n").answered is False
    assert probe_facts('RGS-PROBE {"python": "' + "x" * 5000 + '"}').python == ""
    assert probe_facts('RGS-PROBE {"version": [3, "x", 1]}').version == ()


def test_inspect_data_of_the_wrong_shape_is_unusable():
    with pytest.raises(UnusableAnswer):
        image_facts({"Id": "nope"})
    with pytest.raises(UnusableAnswer):
        image_facts({"Id": ID, "Config": {"Env": "x" * 70000}})


def test_a_probe_that_said_nothing_readable_starts_the_image_as_before():
    p = plan(inspect(["jupyterhub-singleuser"]), ProbeFacts())
    assert p.command is None and not p.derive
    assert plan(inspect(["/bin/bash"]), ProbeFacts()).command == ["jupyterhub-singleuser"]
