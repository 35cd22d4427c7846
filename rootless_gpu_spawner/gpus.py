"""GPU requests: the ``gpus`` setting as Docker device requests, and GPU errors in words."""

from __future__ import annotations

import os
import re

from docker.types import DeviceRequest

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._-]{0,127}$")  # index, GPU-uuid or MIG id
MAX_GPU_COUNT = 1024


class InvalidGPURequest(ValueError):
    pass


def normalize_gpus(value):
    """Return ``"all"``, a non-negative ``int``, or a list of device id strings.

    Accepts what an admin writes in config and what a form or the REST API
    sends: ``"all"``, ``2``, ``"2"``, ``[0, 2]``, ``["GPU-3f2..."]``,
    ``"0,2"`` and ``"device=0,2"`` (the ``docker run --gpus`` spelling).
    ``0``, ``"none"`` and ``[]`` mean no GPU.
    """
    if isinstance(value, bool):
        raise InvalidGPURequest(f"gpus must be 'all', a count or a list of GPU ids, not {value!r}")
    if value is None:
        return 0
    if isinstance(value, int):
        if value < 0:
            raise InvalidGPURequest(f"a GPU count cannot be negative (got {value})")
        if value > MAX_GPU_COUNT:
            raise InvalidGPURequest(f"a GPU count of {value} is not possible")
        return value
    if isinstance(value, str):
        text = value.strip()
        lowered = text.lower()
        if lowered == "all":
            return "all"
        if lowered in ("", "none", "0"):
            return 0
        if lowered.startswith("device="):
            return normalize_gpus(text[len("device=") :].split(","))
        if text.isdigit() and text.isascii():
            return normalize_gpus(int(text))
        if "," in text:
            return normalize_gpus(text.split(","))
        raise InvalidGPURequest(
            f"gpus={value!r} is not understood: use 'all', a number such as 2, "
            "or GPU ids such as [0, 1]"
        )
    if isinstance(value, (list, tuple)):
        ids = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise InvalidGPURequest(f"GPU id {item!r} must be a number or a string")
            if isinstance(item, int) and item < 0:
                raise InvalidGPURequest(f"GPU id {item} cannot be negative")
            ident = str(item).strip()
            if not _DEVICE_ID.match(ident):
                raise InvalidGPURequest(f"GPU id {str(item)[:40]!r} is not a valid device id")
            if ident not in ids:
                ids.append(ident)
        return ids
    raise InvalidGPURequest(
        f"gpus must be 'all', a count or a list of GPU ids, not {type(value).__name__}"
    )


CDI_KIND = "nvidia.com/gpu"


def device_requests(gpus, mode: str = "nvidia") -> list[DeviceRequest]:
    """The Engine API ``DeviceRequests`` for a normalised ``gpus`` value.

    ``nvidia``: same as ``docker run --gpus``: count -1 is "all"; capabilities
    ``[["gpu"]]`` select the NVIDIA Container Toolkit's hook.
    ``cdi``: ``docker run --device nvidia.com/gpu=ID`` (Docker 25+ with CDI
    enabled and a spec from ``nvidia-ctk cdi generate``); a count becomes the
    first N indices, since CDI has no "any N" request.
    """
    gpus = normalize_gpus(gpus)
    if gpus == 0 or gpus == []:
        return []
    if mode == "cdi":
        if gpus == "all":
            ids = ["all"]
        elif isinstance(gpus, int):
            ids = [str(i) for i in range(gpus)]
        else:
            ids = gpus
        return [DeviceRequest(driver="cdi", device_ids=[f"{CDI_KIND}={i}" for i in ids])]
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    if isinstance(gpus, int):
        return [DeviceRequest(count=gpus, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=list(gpus), capabilities=[["gpu"]])]


#: Where CDI specs live on a host (Docker's and nvidia-ctk's defaults). Only these are
#: looked at: what a daemon reports as ``CDISpecDirs`` is never used as a path.
CDI_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
_MAX_SPEC_ENTRIES = 1000


def detect_device_mode(cdi_enabled: bool, spec_dirs=CDI_SPEC_DIRS) -> str:
    """``cdi`` when the daemon has CDI on and the host has an NVIDIA CDI spec, else ``nvidia``.

    Docker 25+ reports ``CDISpecDirs`` in ``docker info`` when CDI is enabled
    (the caller passes only that yes/no); a spec for ``nvidia.com/gpu`` is a
    file named ``nvidia*.yaml``/``.json`` (what ``nvidia-ctk cdi generate``
    writes) in one of the host's fixed spec dirs.  Blocking (a directory
    listing): call it off the event loop.  Docker 20.10-24 has no CDI.
    """
    if not cdi_enabled:
        return "nvidia"
    for directory in spec_dirs:
        if _has_nvidia_spec(directory):
            return "cdi"
    return "nvidia"


def _has_nvidia_spec(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            for count, entry in enumerate(entries):
                if count >= _MAX_SPEC_ENTRIES:
                    break
                name = entry.name
                if name.startswith("nvidia") and name.endswith((".yaml", ".json")):
                    return True
    except OSError:
        return False
    return False


def describe_gpus(gpus) -> str:
    gpus = normalize_gpus(gpus)
    if gpus == "all":
        return "all GPUs"
    if gpus == 0 or gpus == []:
        return "no GPU"
    if isinstance(gpus, int):
        return f"{gpus} GPU" + ("s" if gpus != 1 else "")
    return "GPU " + ",".join(gpus)


def is_gpu_driver_error(message: str) -> bool:
    """True for the daemon's "no NVIDIA driver registered" family of errors."""
    text = message.lower()
    return (
        "could not select device driver" in text
        or "nvidia-container-cli" in text
        or "devices.allow" in text
        or ("unknown or invalid runtime name" in text and "nvidia" in text)
    )


def gpu_driver_error_message(account: str, docker_host: str, gpus, raw: str) -> str:
    """Turn the daemon's GPU error into what the admin should do about it."""
    if "devices.allow" in raw or "cgroup" in raw.lower():
        cause = (
            "the NVIDIA hook tried to set up device cgroups, which a rootless daemon may not do"
        )
    else:
        cause = "the daemon has no NVIDIA GPU driver registered"
    return (
        f"GPUs were requested ({describe_gpus(gpus)}) for {account}, but {cause} "
        f"(daemon {docker_host}). Fix, as admin: install the NVIDIA Container Toolkit, set "
        "'no-cgroups = true' in /etc/nvidia-container-runtime/config.toml "
        "(or run 'rootless-gpu-admin bootstrap --gpu'), then restart "
        f"{account}'s rootless Docker daemon. Or start without GPUs. "
        f"Docker said: {raw.strip()[:300]}"
    )
