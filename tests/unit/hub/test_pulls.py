"""pulls.ensure_image against a fake daemon connection: which sources it tries, in which order,
what it records (PullAttempt), and the names it leaves on the daemon."""

import pytest
from docker.errors import APIError, NotFound

from rootless_gpu_spawner.hub.daemon import DaemonNotRunning
from rootless_gpu_spawner.hub.images import parse_image_reference
from rootless_gpu_spawner.hub.pulls import ImageError, PullAttempt, attempt_message, ensure_image, pulled_message

MIRROR = "mirror.example.org"
UPSTREAM = "docker.io/library/python:3.12"  # the pull of the registry itself


class FakeConnection:
    """``call`` and ``run`` as DaemonConnection has them; pulls succeed for ``pullable`` names."""

    def __init__(self, present=(), pullable=(), broken=None, errors=None):
        self.present, self.pullable, self.broken = set(present), set(pullable), broken
        self.errors = errors or {}  # name -> the daemon's error for its pull
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
        if name in self.errors:
            raise APIError(f"pull {name}", explanation=self.errors[name])
        if name not in self.pullable:
            raise APIError(f"pull {name}", explanation=f"manifest for {name} not found")
        self.present.add(name)


async def pull(conn, reference="python:3.12", **kw):
    args = dict(policy="ifnotpresent", mirrors={"docker.io": [MIRROR]}, fallback_to_upstream=True, account="alice")
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
    assert seen == result.attempts
    assert [(a.source, a.mirror, a.outcome, a.via.kind) for a in seen] == [(mirrored, MIRROR, PullAttempt.PULLED, "mirror")]


async def test_a_failed_mirror_falls_back_to_upstream_as_a_record():
    conn = FakeConnection(pullable={UPSTREAM})
    result = await pull(conn)
    # "manifest ... not found" from a mirror is a refusal of this image (typed), then the registry itself.
    assert [a.outcome for a in result.attempts] == [PullAttempt.REFUSED, PullAttempt.PULLED]
    assert result.attempts[0].refusal == "not found"
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


QUAY = "quay.io/jupyter/base-notebook:2026-01"
CHAINS = {"quay.io": ["dead.example", "allow.example", "quay.mirror.example", "m.example/quay.io"]}
CACHE = {"quay.io": "10.0.2.2:5002"}


async def test_lab_cache_first_then_mirrors_in_order_with_refusals_typed():
    conn = FakeConnection(
        pullable={"m.example/quay.io/jupyter/base-notebook:2026-01"},
        errors={
            "10.0.2.2:5002/jupyter/base-notebook:2026-01": "Get https://10.0.2.2:5002/v2/: connection refused",
            "allow.example/jupyter/base-notebook:2026-01": "denied: not in allowlist",
            "quay.mirror.example/jupyter/base-notebook:2026-01": "unexpected status code 401 Unauthorized",
        },
    )

    async def skip(spec):
        return "skipped: no answer" if spec == "dead.example" else None

    result = await pull(conn, QUAY, mirrors=CHAINS, lab_caches=CACHE, fallback_to_upstream=False, skip_mirror=skip)
    got = [(a.via.kind, a.mirror, a.outcome, a.refusal) for a in result.attempts]
    assert got == [
        ("lab-cache", "10.0.2.2:5002", PullAttempt.FAILED, None),
        ("mirror", "dead.example", PullAttempt.SKIPPED, None),
        ("mirror", "allow.example", PullAttempt.REFUSED, "allow-list"),
        ("mirror", "quay.mirror.example", PullAttempt.REFUSED, "unauthorized"),
        ("mirror", "m.example/quay.io", PullAttempt.PULLED, None),
    ]
    assert [a.more for a in result.attempts] == [True, True, True, True, False]
    # The canonical name stays, the mirror's name goes.
    assert result.image == "quay.io/jupyter/base-notebook:2026-01"
    assert "quay.io/jupyter/base-notebook:2026-01" in conn.present
    assert "m.example/quay.io/jupyter/base-notebook:2026-01" not in conn.present
    assert pulled_message("quay.io/jupyter/base-notebook:2026-01", result) == (
        "pulled quay.io/jupyter/base-notebook:2026-01 from mirror m.example/quay.io"
    )
    assert attempt_message(result.attempts[2]) == (
        "mirror allow.example refuses this image (allow-list): trying the next (denied: not in allowlist)"
    )


async def test_without_fallback_the_registry_itself_is_never_asked():
    conn = FakeConnection(errors={"allow.example/jupyter/base-notebook:2026-01": "403 Forbidden"})
    with pytest.raises(ImageError, match=r"registry_mirrors\['quay.io'\]"):
        await pull(conn, QUAY, mirrors={"quay.io": ["allow.example"]}, fallback_to_upstream=False)
    assert conn.pulls == ["allow.example/jupyter/base-notebook:2026-01"]


async def test_a_registry_without_mirrors_is_pulled_directly():
    conn = FakeConnection(pullable={"ghcr.io/org/img:1"})
    result = await pull(conn, "ghcr.io/org/img:1", mirrors={"quay.io": ["q.example"]}, fallback_to_upstream=False)
    assert conn.pulls == ["ghcr.io/org/img:1"] and result.image == "ghcr.io/org/img:1"
    assert pulled_message("ghcr.io/org/img:1", result) == "pulled ghcr.io/org/img:1 from ghcr.io (upstream)"
