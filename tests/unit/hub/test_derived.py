"""hub/derived.py: the derived image's name, Dockerfile, in-memory context and stale list."""

import io
import subprocess
import tarfile

import pytest

from rootless_gpu_spawner.hub import derived

BASE = "sha256:" + "0123456789abcdef" * 4


def test_tag_is_keyed_by_base_id_and_hub_version():
    assert derived.derived_tag(BASE, "6.1.1") == "rgs-jupyter/0123456789abcdef01234567:jh-6.1.1"
    assert derived.derived_tag(BASE, "6.1.1") != derived.derived_tag(BASE, "6.2.0")
    with pytest.raises(ValueError):
        derived.derived_tag("sha256:xyz", "6.1.1")
    with pytest.raises(ValueError):
        derived.derived_tag(BASE, "6.1.1; rm -rf /")


def test_dockerfile_installs_the_hub_version_from_the_index_into_the_images_python():
    text = derived.dockerfile(BASE, "/opt/conda/bin/python", "http://10.0.2.2:8123/simple", "6.1.1",
                              ["jupyterlab"], "1000")
    assert text.startswith(f"FROM {BASE}\nUSER 0\n")
    assert "'/opt/conda/bin/python' 'http://10.0.2.2:8123/simple' '10.0.2.2' 'jupyterhub==6.1.1' 'jupyterlab'" in text
    assert f'{derived.LABEL}.from="{BASE}"' in text and text.rstrip().endswith("USER 1000")


def test_https_index_is_not_trusted_and_quotes_are_escaped():
    text = derived.dockerfile(BASE, "/usr/bin/python3", "https://pypi.tuna.tsinghua.edu.cn/simple", "6.1.1",
                              ["it's"], "")
    assert "'' 'jupyterhub==6.1.1' 'it'\\''s'" in text and "USER 0" in text.splitlines()[1]
    assert not text.rstrip().endswith("USER 0") or text.count("USER") == 1


def test_context_is_a_tar_with_the_dockerfile_and_the_install_script():
    data = derived.build_context("FROM x\n")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["Dockerfile", "rgs-install.sh"]
        assert tar.extractfile("Dockerfile").read() == b"FROM x\n"


def test_install_script_is_valid_sh():
    subprocess.run(["sh", "-n"], input=derived.INSTALL_SCRIPT.encode(), check=True)
    assert derived.DERIVED_LAUNCHER in derived.INSTALL_SCRIPT


def test_stale_ones_are_other_hub_versions_or_gone_bases():
    keep = {"Id": "sha256:k", "Labels": {derived.LABEL: "1", f"{derived.LABEL}.from": "b1",
                                         f"{derived.LABEL}.hub-version": "6.1.1"}}
    old = {"Id": "sha256:o", "Labels": {derived.LABEL: "1", f"{derived.LABEL}.from": "b1",
                                        f"{derived.LABEL}.hub-version": "6.0.0"}}
    orphan = {"Id": "sha256:g", "Labels": {derived.LABEL: "1", f"{derived.LABEL}.from": "gone",
                                           f"{derived.LABEL}.hub-version": "6.1.1"}}
    other = {"Id": "sha256:x", "Labels": {"something": "else"}}
    assert derived.stale([keep, old, orphan, other, "junk"], "6.1.1", {"b1"}) == ["sha256:o", "sha256:g"]


class FakeRaw:
    def __init__(self, data):
        self.buf = io.BytesIO(data)

    def read1(self, n):
        return self.buf.read(n)


class FakeResponse:
    def __init__(self, data):
        self.raw = FakeRaw(data)

    def close(self):
        pass


class FakeClient:
    def __init__(self, data):
        self.data, self.posted = data, None

    def _url(self, path):
        return path

    def _post(self, url, **kwargs):
        self.posted = (url, kwargs)
        return FakeResponse(self.data)

    def _raise_for_status(self, response):
        pass


def test_run_build_reports_lines_and_raises_the_streams_error_with_them():
    stream = b'{"stream": "Step 1/4 : FROM x\\n"}\n{"stream": "ERROR: No matching distribution\\n"}\n' \
             b'{"error": "The command returned a non-zero code: 1", "errorDetail": {"message": "m"}}\n'
    client, seen = FakeClient(stream), []
    with pytest.raises(derived.BuildFailed) as info:
        derived.run_build(client, b"ctx", "t:1", seen.append)
    assert "non-zero code" in info.value.reason and "ERROR: No matching distribution" in info.value.lines
    assert seen[0] == "Step 1/4 : FROM x" and client.posted[1]["params"]["t"] == "t:1"
    message = derived.explain_failure("python:3.11", "http://10.0.2.2:1/simple", info.value.reason, info.value.lines)
    assert "lab_pypi_index" in message and "No matching distribution" in message and "Step 1/4" not in message


def test_run_build_succeeds_on_a_clean_stream():
    client = FakeClient(b'{"stream": "Successfully built abc\\n"}\n')
    assert derived.run_build(client, b"ctx", "t:1") == ["Successfully built abc"]
