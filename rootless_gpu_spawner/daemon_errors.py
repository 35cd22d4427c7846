"""What can go wrong with a student's daemon, as types.

Each error carries the HTTP status the hub answers with and a message for the
student and the admin: what is wrong, and what to do next.  Callers branch on
the type (never on the text); anything a daemon said that ends up in a
message has gone through :func:`~rootless_gpu_spawner.safetext.printable`.
"""

from __future__ import annotations

import copy
import pwd

from .safetext import printable


class DaemonError(RuntimeError):
    """The student's daemon cannot be used; the message names the student, the path and the fix."""

    status = 503


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


class DaemonNotRunning(DaemonError):
    """No daemon listens at the student's socket path (no socket, or a stale one)."""

    status = 503

    def __init__(self, account: str, path: str, stale: bool = False):
        if stale:
            text = (
                f"rootless Docker for {account} does not answer at {path}: the socket is left over "
                "from a daemon that stopped."
            )
        else:
            text = f"rootless Docker is not running for {account}: no socket at {path}."
        super().__init__(
            f"{text} Ask the admin to run 'rootless-gpu-admin bootstrap --user {account}', or start it "
            f"('rootless-gpu-admin start-daemon {account}' or, as {account}, "
            "'systemctl --user start docker')."
        )


class UnsafeSocket(DaemonError):
    """The path is not a socket owned by the student (a symlink, a file, another owner)."""

    status = 403

    def __init__(self, account: str, path: str, problem: str):
        super().__init__(
            f"the Docker socket for {account} at {path} {problem}: refusing to start a server on "
            f"a daemon that may not be {account}'s. Ask the admin to check "
            f"RootlessGPUSpawner.docker_host_template and {account}'s rootless Docker setup "
            f"('rootless-gpu-admin doctor --user {account}')."
        )


class PeerMismatch(DaemonError):
    """The process listening on the student's socket is not the student's (checked per connection)."""

    status = 403

    def __init__(self, account: str, path: str, peer_uid: int):
        self.peer_uid = peer_uid
        super().__init__(
            f"the Docker socket for {account} at {path} is served by uid {peer_uid} "
            f"({owner_name(peer_uid)}), not by {account}: refusing to talk to somebody else's daemon. "
            "Nothing was created. The socket was replaced while the hub used it; ask the admin "
            f"to check {account}'s rootless Docker ('rootless-gpu-admin doctor --user {account}')."
        )


class DaemonUnreachable(DaemonError):
    """The connection failed for a reason other than the checks (reset, closed, timed out)."""

    status = 503

    def __init__(self, account: str, docker_host: str, reason):
        super().__init__(
            f"rootless Docker for {account} does not answer at {docker_host} "
            f"({printable(reason, 200)}). It may have stopped: ask the admin to run "
            f"'rootless-gpu-admin start-daemon {account}' (or 'rootless-gpu-admin doctor' to see why)."
        )


class BadAnswer(DaemonError):
    """The daemon answered something the hub will not use: too big, too slow, malformed, a lie."""

    status = 502

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(detail)

    def for_account(self, account: str, doing: str) -> "BadAnswer":
        """The same error, with a message that names the student and the call."""
        error = copy.copy(self)
        error.args = (
            f"rootless Docker for {account} {self.detail} while {doing}; nothing of it was used. "
            f"If this repeats, ask the admin to check {account}'s daemon with "
            f"'rootless-gpu-admin doctor --user {account}' and restart it "
            f"('rootless-gpu-admin stop-daemon {account}', then 'rootless-gpu-admin start-daemon {account}').",
        )
        return error


class AnswerTooLarge(BadAnswer):
    pass


class DeadlineExceeded(BadAnswer):
    status = 504


class UnusableAnswer(BadAnswer):
    """Malformed JSON, wrong types, missing fields, invalid UTF-8, an unexpected status."""

    def __init__(self, detail: str):
        super().__init__(f"sent an answer the hub cannot use ({printable(detail, 200)})")


class LyingAnswer(BadAnswer):
    """The daemon contradicted what the hub itself set up (e.g. the published port)."""
