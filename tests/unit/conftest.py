"""Fixtures shared by the unit tests."""

import os
import pwd

import pytest


@pytest.fixture
def pw(tmp_path):
    """A made-up account "rgs-fake" with the test's own uid and a home in tmp_path."""
    home = tmp_path / "home" / "student"
    home.mkdir(parents=True)
    return pwd.struct_passwd(("rgs-fake", "x", os.getuid(), os.getgid(), "", str(home), "/bin/sh"))
