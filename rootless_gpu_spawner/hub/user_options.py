"""One validation for what a student asks for, from the spawn form or the REST API.

Pure functions over the admin's settings (``GPUPolicy``); anything wrong is
an HTTP 400 with a message the student can act on, before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tornado import web

from ..safetext import printable

from .gpus import InvalidGPURequest, normalize_gpus
from .own_images import OwnImagePolicy, check_own_image_name

USER_OPTION_KEYS = {"image", "gpus"}


@dataclass(frozen=True)
class GPUPolicy:
    policy: str = "shared"  # "shared" | "exclusive"
    ceiling: object = "all"  # the `gpus` setting: "all", a count or a list of ids
    limit: int | None = None  # this student's limit (max_gpus_per_user / group_gpu_limits)
    inventory: list = field(default_factory=list)  # gpu_ids (may be empty: NVML decides later)

    @property
    def default_request(self):
        """What a server gets when the student asks nothing.

        ``"all"`` means 1 under exclusive; the student's limit cuts the
        default down too, so not asking never gets more than asking could.
        """
        request = self.ceiling
        if self.policy == "exclusive" and request == "all":
            request = 1
        if self.limit is None:
            return request
        if request == "all":
            return self.limit
        if isinstance(request, int):
            return min(request, self.limit)
        return list(request)[: self.limit]


def student_gpu_limit(groups, group_limits: dict, per_user: int):
    """The largest limit of the student's groups, else ``max_gpus_per_user`` (0: none)."""
    limits = [limit for group, limit in group_limits.items() if group in set(groups)]
    if limits:
        return max(limits)
    return per_user or None


def validate_user_options(options, gpu: GPUPolicy, allowed_images, own: OwnImagePolicy | None = None) -> dict:
    """Return the normalised options or raise ``web.HTTPError(400)``.

    An image that is not one of the admin's is one of the student's own (``own_image``
    set in the result) when ``own`` allows its name; whether it is on the daemon is
    checked at start, on the daemon (:meth:`SpawnOptions.own_image_present`).
    """
    options = options or {}
    if not isinstance(options, dict):
        raise web.HTTPError(400, "user_options must be a JSON object")
    unknown = sorted(set(options) - USER_OPTION_KEYS)
    if unknown:
        raise web.HTTPError(
            400,
            f"unknown option(s) {', '.join(map(repr, unknown))[:200]}; "
            f"allowed: {', '.join(sorted(USER_OPTION_KEYS))}",
        )
    result = {}
    if options.get("image") not in (None, ""):
        image = options["image"]
        if not isinstance(image, str):
            raise web.HTTPError(400, "option 'image' must be a string")
        if allowed_images == "*" or image in (allowed_images or {}):
            result["image"] = image
        else:
            try:
                result["image"] = check_own_image_name(image, own or OwnImagePolicy(enabled=False))
            except ValueError as e:
                raise web.HTTPError(
                    400,
                    f"image {printable(image, 100)!r} is not one of the allowed images, nor one you may "
                    f"start from your own Docker: {e}. Choose an image in the spawn form.",
                ) from None
            result["own_image"] = True
    if "gpus" in options:
        try:
            requested = normalize_gpus(options["gpus"])
        except InvalidGPURequest as e:
            raise web.HTTPError(400, str(e)) from None
        if gpu.policy == "exclusive":
            result["gpus"] = _within_exclusive(requested, gpu)
        else:
            result["gpus"] = _within_limit(_within_ceiling(requested, gpu.ceiling), gpu.limit)
    return result


def _count(requested) -> int:
    return requested if isinstance(requested, int) else len(requested)


def _within_limit(requested, limit):
    if limit is None or requested == 0 or requested == []:
        return requested
    if requested == "all":
        raise web.HTTPError(400, f"you may use at most {limit} GPU(s); ask for a number")
    if _count(requested) > limit:
        raise web.HTTPError(400, f"you asked for {_count(requested)} GPUs; your limit is {limit}")
    return requested


def _within_exclusive(requested, gpu: GPUPolicy):
    if requested == "all":
        raise web.HTTPError(400, "GPUs are given out one server at a time here: ask for a number of GPUs")
    # Under exclusive, a count in `gpus` is only the default; the limits cap requests.
    if isinstance(gpu.ceiling, list):
        _within_ceiling(requested, gpu.ceiling)
    if gpu.inventory:
        unknown = [g for g in (requested if isinstance(requested, list) else []) if g not in gpu.inventory]
        if unknown:
            raise web.HTTPError(
                400, f"there is no GPU {','.join(unknown)}; GPUs here: {','.join(gpu.inventory)}"
            )
        if _count(requested) > len(gpu.inventory):
            raise web.HTTPError(
                400, f"you asked for {_count(requested)} GPUs but this server has {len(gpu.inventory)}"
            )
    return _within_limit(requested, gpu.limit)


def _within_ceiling(requested, ceiling):
    """Under the shared policy a student may ask for at most what ``gpus`` grants."""
    if ceiling == "all" or requested == 0 or requested == []:
        return requested
    if requested == "all":
        raise web.HTTPError(400, f"you may not request all GPUs here; the limit is {ceiling}")
    if isinstance(ceiling, int):
        if not isinstance(requested, int):
            raise web.HTTPError(400, f"choosing GPU ids is not allowed here; ask for a count up to {ceiling}")
        if requested > ceiling:
            raise web.HTTPError(400, f"you asked for {requested} GPUs; the limit is {ceiling}")
        return requested
    allowed = list(ceiling)
    if isinstance(requested, int):
        if requested > len(allowed):
            raise web.HTTPError(400, f"you asked for {requested} GPUs; the limit is {len(allowed)}")
        return allowed[:requested]
    extra = [g for g in requested if g not in allowed]
    if extra:
        raise web.HTTPError(400, f"GPU {','.join(extra)} is not available to you; allowed: {','.join(allowed)}")
    return requested
