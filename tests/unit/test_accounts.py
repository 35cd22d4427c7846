"""accounts: the one name -> account resolver (login_account) and the hub's rules on top."""

import pwd

import pytest

from rootless_gpu_spawner.accounts import (
    Account, AccountError, InvalidLoginName, NoSuchLogin, login_account, lookup_account, system_username,
)


def _pw(name, uid, home="/home/x"):
    return pwd.struct_passwd((name, "x", uid, uid, "", home, "/bin/sh"))


def fake_getpwnam(table):
    def getpwnam(name):
        return table[name]
    return getpwnam


@pytest.mark.parametrize("name", ["Root", "学生", "-rf", "a/b", "", "x" * 33, None, 7])
def test_invalid_names_are_refused_before_any_lookup(name):
    def never(_name):
        raise AssertionError("looked up")
    with pytest.raises(InvalidLoginName, match="is not a valid login name"):
        login_account(name, never)


def test_a_missing_account_says_how_to_create_it():
    with pytest.raises(NoSuchLogin, match=r"no such user 'ghost': create it first \(useradd -m ghost\)"):
        login_account("ghost", fake_getpwnam({}))


def test_login_account_gives_the_pwd_entry():
    entry = _pw("alice", 2001, "/home/alice")
    assert login_account("alice", fake_getpwnam({"alice": entry})) is entry


def test_lookup_account_gives_an_account_and_applies_the_hub_rules():
    table = {"alice": _pw("alice", 2001, "/home/alice"), "daemon": _pw("daemon", 2), "nohome": _pw("nohome", 2002, "")}
    assert lookup_account("Alice", "alice", 1000, fake_getpwnam(table)) == Account("alice", 2001, 2001, "/home/alice")
    with pytest.raises(AccountError, match="below RootlessGPUSpawner.min_uid=1000"):
        lookup_account("d", "daemon", 1000, fake_getpwnam(table))
    with pytest.raises(AccountError, match="no absolute home"):
        lookup_account("n", "nohome", 1000, fake_getpwnam(table))
    with pytest.raises(AccountError, match="maps to system name 'Bad', which is not a valid login name"):
        lookup_account("Bad", "Bad", 1000, fake_getpwnam(table))
    with pytest.raises(AccountError, match="there is no system account 'ghost' for hub user 'g'"):
        lookup_account("g", "ghost", 1000, fake_getpwnam(table))


def test_system_username_template_or_callable():
    assert system_username("bob", "s{username}") == "sbob"
    assert system_username("bob", lambda n: n.upper()) == "BOB"
    with pytest.raises(AccountError, match="must return a login name"):
        system_username("bob", lambda n: 3)
