"""Names -> accounts: the one resolver.

:func:`login_account` is the one place a login name becomes a ``pwd`` entry (the admin CLI and
the host's ``start_daemon_for`` call it directly); :func:`lookup_account` adds the hub's rules
(``system_user`` mapping, ``min_uid``, an absolute home) and gives an :class:`Account`.  What
crosses a boundary after that is the entry or the ``Account``, never the name again.
"""

from __future__ import annotations

import pwd
import re
from dataclasses import dataclass

# Debian's default NAME_REGEX for adduser, plus upper bound of 32 (useradd's).
# Anything else (slashes, unicode, spaces, leading '-') is refused rather than
# escaped: the name ends up in paths and in a pwd lookup, so there is no safe
# way to "fix" it.
SYSTEM_USERNAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


class AccountError(RuntimeError):
    """The hub user has no usable system account. The message says why and what to do."""


class InvalidLoginName(AccountError):
    """The name cannot be a login name (it would end up in paths and a pwd lookup)."""


class NoSuchLogin(AccountError):
    """The name is valid but there is no such account."""


def login_account(name, getpwnam=pwd.getpwnam):
    """The ``pwd`` entry of login *name*; refuses a name that is not a valid login name."""
    if not isinstance(name, str) or not SYSTEM_USERNAME.match(name):
        raise InvalidLoginName(
            f"{str(name)[:64]!r} is not a valid login name (lowercase letter or '_' first, then lowercase "
            "letters, digits, '_', '.', '-'; at most 32 characters)"
        )
    try:
        return getpwnam(name)
    except KeyError:
        raise NoSuchLogin(f"no such user {name!r}: create it first (useradd -m {name})") from None


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def from_pwd(cls, entry) -> "Account":
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def system_username(hub_username: str, mapping) -> str:
    """Apply ``RootlessGPUSpawner.system_user`` (a template or a callable)."""
    name = mapping(hub_username) if callable(mapping) else mapping.format(username=hub_username)
    if not isinstance(name, str):
        raise AccountError(
            f"RootlessGPUSpawner.system_user returned {type(name).__name__} for hub user "
            f"{hub_username!r}; it must return a login name (str)"
        )
    return name


def lookup_account(hub_username: str, name: str, min_uid: int, getpwnam=pwd.getpwnam) -> Account:
    """Find the system account, refusing names and uids a student cannot have."""
    try:
        entry = login_account(name, getpwnam)
    except InvalidLoginName:
        raise AccountError(
            f"hub user {hub_username!r} maps to system name {name[:64]!r}, which is not a valid "
            "login name (lowercase letters, digits, '_', '.', '-'; at most 32). Ask the admin to "
            "rename the hub user or set RootlessGPUSpawner.system_user to map it to a real account."
        ) from None
    except NoSuchLogin:
        raise AccountError(
            f"there is no system account {name!r} for hub user {hub_username!r}. Ask the admin "
            f"to create it (useradd -m {name}) and run 'rootless-gpu-admin bootstrap --user {name}', "
            "or set RootlessGPUSpawner.system_user to map hub names to login names."
        ) from None
    account = Account.from_pwd(entry)
    if account.uid < min_uid:
        raise AccountError(
            f"system account {name!r} (uid {account.uid}) is below "
            f"RootlessGPUSpawner.min_uid={min_uid}: system accounts and root never get a "
            "server. Map the hub user to a student's own account instead."
        )
    if not account.home or not account.home.startswith("/"):
        raise AccountError(f"system account {name!r} has no absolute home directory")
    return account
