"""pulls.ensure_image against a fake daemon connection: which sources it tries, in which order,
what it records (PullAttempt), and the names it leaves on the daemon."""

import pytest
from docker.errors import APIError, NotFound

from rootless_gpu_spawner.hub.daemon import DaemonNotRunning
from rootless_gpu_spawner.hub.images import parse_image_reference
from rootless_gpu_spawner.hub.pulls import ImageError, PullAttempt, ensure_image

MIRROR = "mirror.example.org"
UPSTREAM = "docker.io/library/python:3.12"  # the pull of the registry itself


class FakeConnection:
    """``call`` and ``run`` as DaemonConnection has them; pulls succeed for ``pullable`` names."""

    def __init__(self, present=(), pullable=(), broken=None):
        self.present, self.pullable, self.broken = set(present), set(pullable), broken
        self.calls, self.pulls = [], []

    async def call(self, method, *args, **kwargs):
        self.calls.append((method, args))
        if method == "inspect_image":
            if args[0] not in self.present:
                raise NotFound(f"no such image: {args[0]}")
            return {"Id": "sha256:1"}
        if method == "tag":
            self.present.add(f"{args[1]}:{args[2]}")
        if method == "remove_image":
            self.present.discard(args[0])
        return None

    async def run(self, func, repository, tag, report, seconds=None, max_bytes=None):
        name = f"{repository}:{tag}"
        self.pulls.append(name)
        if self.broken is not None:
            raise self.broken
        if name not in self.pullable:
            raise APIError(f"pull {name}", explanation=f"manifest for {name} not found")
        self.present.add(name)


async def pull(conn, reference="python:3.12", **kw):
    args = dict(policy="ifnotpresent", mirror_prefixes=[MIRROR], fallback_to_upstream=True, account="alice")
    args.update(kw)
    return await ensure_image(conn, parse_image_reference(reference), **args)


async def test_an_image_already_present_costs_no_pull():
    conn = FakeConnection(present={"python:3.12"})
    result = await pull(conn)
    assert result.image == "python:3.12" and result.pulled_from is None and conn.pulls == []


async def test_through_the_mirror_then_tagged_with_the_canonical_name():
    mirrored = f"{MIRROR}/library/python:3.12"
    conn = FakeConnection(pullable={mirrored})
    seen = []
    result = await pull(conn, on_attempt=seen.append)
    assert conn.pulls == [mirrored]
    assert result.pulled_from == mirrored and result.image == "python:3.12"
    assert "python:3.12" in conn.present and mirrored not in conn.present
    assert seen == result.attempts == [PullAttempt(mirrored, MIRROR, PullAttempt.PULLED)]


async def test_a_failed_mirror_falls_back_to_upstream_as_a_record():
    conn = FakeConnection(pullable={UPSTREAM})
    result = await pull(conn)
    assert [a.outcome for a in result.attempts] == [PullAttempt.FAILED, PullAttempt.PULLED]
    assert result.attempts[0].mirror == MIRROR and "not found" in result.attempts[0].reason
    assert result.attempts[1].mirror is None and result.image == "python:3.12"


async def test_a_skipped_mirror_is_never_asked():
    conn = FakeConnection(pullable={UPSTREAM})

    async def skip(prefix):
        return "skipped: failed recently"

    result = await pull(conn, skip_mirror=skip)
    assert conn.pulls == [UPSTREAM]
    assert [a.outcome for a in result.attempts] == [PullAttempt.SKIPPED, PullAttempt.PULLED]


async def test_every_source_failing_names_each_one():
    conn = FakeConnection()
    with pytest.raises(ImageError, match="could not pull python:3.12 for alice. Tried "):
        await pull(conn)
    assert len(conn.pulls) == 2


async def test_never_policy_refuses_a_missing_image_without_pulling():
    conn = FakeConnection()
    with pytest.raises(ImageError, match="pull_policy is 'never'"):
        await pull(conn, policy="never")
    assert conn.pulls == []


async def test_a_daemon_failure_ends_the_pull_at_once():
    conn = FakeConnection(broken=DaemonNotRunning("alice", "/run/user/2001/docker.sock"))
    with pytest.raises(DaemonNotRunning):
        await pull(conn)
    assert len(conn.pulls) == 1  # no next source helps when the daemon itself fails
