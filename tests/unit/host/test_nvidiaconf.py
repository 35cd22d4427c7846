"""no-cgroups = true in the NVIDIA Container Toolkit config, edited without losing a comment."""

import tomllib

import pytest

from rootless_gpu_spawner.host import nvidiaconf
from rootless_gpu_spawner.host.nvidiaconf import NvidiaConfigError, read_no_cgroups, set_no_cgroups

from nvidia_stock import STOCK  # tests/unit is on sys.path (no package)


def changed_lines(old: str, new: str):
    a, b = old.splitlines(), new.splitlines()
    return [(x, y) for x, y in zip(a, b) if x != y], len(b) - len(a)


def test_stock_file_uncomments_the_default_line_only():
    assert read_no_cgroups(STOCK) is None
    edit = set_no_cgroups(STOCK)
    assert edit.changed
    assert changed_lines(STOCK, edit.text) == ([("#no-cgroups = false", "no-cgroups = true")], 0)
    assert "line 13" in edit.how and "uncommented" in edit.how
    # every comment is still there
    assert [l for l in STOCK.splitlines() if l.startswith("#") and "no-cgroups" not in l] == [
        l for l in edit.text.splitlines() if l.startswith("#")
    ]
    assert read_no_cgroups(edit.text) is True
    doc = tomllib.loads(edit.text)
    assert doc["nvidia-container-cli"]["no-cgroups"] is True
    assert doc["nvidia-container-runtime-hook"]["path"] == "nvidia-container-runtime-hook"


def test_idempotent():
    once = set_no_cgroups(STOCK).text
    twice = set_no_cgroups(once)
    assert not twice.changed and twice.text == once
    assert "already" in twice.how


def test_active_false_is_flipped_keeping_indent_and_comment():
    text = STOCK.replace("#no-cgroups = false", "  no-cgroups   =  false   # set by the lab in 2021")
    assert read_no_cgroups(text) is False
    edit = set_no_cgroups(text)
    assert changed_lines(text, edit.text) == (
        [("  no-cgroups   =  false   # set by the lab in 2021", "  no-cgroups   =  true   # set by the lab in 2021")],
        0,
    )


def test_commented_key_in_another_table_is_not_touched():
    text = "[nvidia-container-runtime]\n#no-cgroups = false\n\n[nvidia-container-cli]\n# our table\nload-kmods = true\n\n# about the next table\n[nvidia-ctk]\npath = \"nvidia-ctk\"\n"
    edit = set_no_cgroups(text)
    lines = edit.text.splitlines()
    assert lines[1] == "#no-cgroups = false"  # the other table's comment stays
    assert lines[5:7] == ["load-kmods = true", "no-cgroups = true"]  # added after the table's last key
    assert lines[8] == "# about the next table"
    assert tomllib.loads(edit.text)["nvidia-container-cli"] == {"load-kmods": True, "no-cgroups": True}


def test_missing_table_is_appended():
    text = "# only a comment\ndisable-require = false\n\n\n"
    edit = set_no_cgroups(text)
    assert edit.text == "# only a comment\ndisable-require = false\n\n[nvidia-container-cli]\nno-cgroups = true\n"
    assert set_no_cgroups("").text == "[nvidia-container-cli]\nno-cgroups = true\n"


def test_multiline_string_is_not_taken_for_a_table():
    text = 'note = """\n[nvidia-container-cli]\nno-cgroups = false\n"""\n[nvidia-container-cli]\nload-kmods = true\n'
    edit = set_no_cgroups(text)
    assert edit.text.splitlines()[:4] == ['note = """', "[nvidia-container-cli]", "no-cgroups = false", '"""']
    assert tomllib.loads(edit.text)["nvidia-container-cli"]["no-cgroups"] is True
    assert tomllib.loads(edit.text)["note"] == "[nvidia-container-cli]\nno-cgroups = false\n"


def test_crlf_kept():
    text = STOCK.replace("\n", "\r\n")
    edit = set_no_cgroups(text)
    assert "\r\nno-cgroups = true\r\n" in edit.text and edit.text.count("\n") == edit.text.count("\r\n")


def test_broken_toml_is_refused():
    with pytest.raises(NvidiaConfigError, match="not valid TOML"):
        set_no_cgroups("[nvidia-container-cli\nno-cgroups = false\n", "/tmp/x.toml")
    with pytest.raises(NvidiaConfigError, match="not true/false"):
        read_no_cgroups('[nvidia-container-cli]\nno-cgroups = "yes"\n')


def test_dotted_keys_without_table_are_refused():
    with pytest.raises(NvidiaConfigError, match="by hand"):
        set_no_cgroups("nvidia-container-cli.load-kmods = true\n")


def test_default_path():
    assert nvidiaconf.DEFAULT_PATH == "/etc/nvidia-container-runtime/config.toml"
