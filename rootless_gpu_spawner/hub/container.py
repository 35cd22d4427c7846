"""The container request, built by pure functions (testable without a daemon)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

# Only these reach the hub from inside the container; JUPYTERHUB_SERVICE_URL
# is where the server itself listens and must stay as it is.
HUB_URL_VARIABLES = ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}
PRIVILEGED_PORT_LIMIT = 1024


def rewrite_hub_urls(env: dict, gateway_ip: str) -> dict:
    """Point the container's hub URLs at the host through the rootless network.

    A rootless container has its own network namespace (slirp4netns), so the
    hub's 127.0.0.1 is not reachable as 127.0.0.1 from inside; slirp4netns
    forwards ``10.0.2.2`` to the host's loopback.  Only loopback hosts are
    rewritten: a hub reachable on a real address needs no help.  The hub's own
    ``hub_connect_url`` is never changed (the proxy must keep using loopback).
    """
    env = dict(env)
    for key in HUB_URL_VARIABLES:
        value = env.get(key)
        if not value:
            continue
        parts = urlsplit(value)
        if parts.hostname is None or parts.hostname not in LOOPBACK_HOSTS:
            continue
        host = f"[{gateway_ip}]" if ":" in gateway_ip else gateway_ip
        netloc = host + (f":{parts.port}" if parts.port else "")
        env[key] = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return env


def check_container_port(port: int) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"RootlessGPUSpawner.port={port!r} must be a TCP port number (1024-65535)")
    if port < PRIVILEGED_PORT_LIMIT:
        raise ValueError(
            f"RootlessGPUSpawner.port={port} is below 1024: a rootless Docker daemon cannot bind "
            "privileged ports (net.ipv4.ip_unprivileged_port_start). Use a port such as 8888."
        )
    return port


_recent_host_ports: dict[int, float] = {}
PORT_REUSE_AFTER = 120.0  # seconds before a port we handed out may be handed out again


def pick_host_port(host_ip: str, now=None) -> int:
    """A free port on the host for a server, chosen here rather than by the daemon.

    Every rootless daemon allocates "ephemeral" host ports from its own
    counter over the same range, while rootlesskit binds them all on the
    host's one loopback: freshly started daemons all begin at the same port,
    and a class starting together collides (Docker retries only 10 times).
    The kernel knows which ports are free on the host; ports handed out in
    the last two minutes are not reused, in case their container is still
    being created.
    """
    import socket
    import time

    now = time.monotonic() if now is None else now
    for port, at in list(_recent_host_ports.items()):
        if now - at > PORT_REUSE_AFTER:
            del _recent_host_ports[port]
    for _ in range(50):  # bounded; a clash with a recent pick is rare
        with socket.socket(socket.AF_INET6 if ":" in host_ip else socket.AF_INET) as s:
            s.bind((host_ip, 0))
            port = s.getsockname()[1]
        if port not in _recent_host_ports:
            _recent_host_ports[port] = now
            return port
    raise OSError(f"no free port on {host_ip}")


def is_port_clash(message: str) -> bool:
    """The daemon could not publish the port: someone else holds it on the host."""
    text = message.lower()
    return "address already in use" in text or "port is already allocated" in text


def server_args(args: list, run_as_root: bool) -> list:
    """The single-user server's arguments; ``--allow-root`` when it runs as container root."""
    args = list(args)
    if run_as_root and "--allow-root" not in args:
        args.append("--allow-root")
    return args


def build_container_request(
    *,
    name: str,
    image: str,
    command: list,
    env: dict,
    port: int,
    host_ip: str,
    workspace_source: str,
    workspace_mount: str,
    run_as_root: bool,
    device_requests: list,
    labels: dict,
    extra_binds: dict | None = None,
    auto_remove: bool = False,
    network_mode: str = "bridge",
    mem_limit=None,
    cpu_limit=None,
    host_port: int | None = None,
) -> tuple[dict, dict]:
    """Return ``(create_kwargs, host_config_kwargs)`` for docker-py's ``create_container``.

    The server's port is published on ``host_ip`` (127.0.0.1), which
    rootlesskit's port driver forwards; the hub and proxy reach it there.
    ``host_port`` is chosen by the caller (see :func:`pick_host_port`), else
    the daemon picks one.
    """
    check_container_port(port)
    binds = dict(extra_binds or {})
    binds[workspace_source] = {"bind": workspace_mount, "mode": "rw"}
    create_kwargs = dict(
        image=image,
        name=name,
        command=command,
        environment=env,
        labels=labels,
        working_dir=workspace_mount,
        ports={f"{port}/tcp": None},
        volumes=[b["bind"] for b in binds.values()],
    )
    if run_as_root:
        # Container root is the student on the host (user namespace), so files
        # in the workspace stay theirs; any other uid maps to a subuid.
        create_kwargs["user"] = "0:0"
    host_config = dict(
        binds=binds,
        port_bindings={port: (host_ip, host_port) if host_port else (host_ip,)},
        auto_remove=auto_remove,
        network_mode=network_mode,
    )
    if device_requests:
        host_config["device_requests"] = list(device_requests)
    if mem_limit is not None:
        host_config["mem_limit"] = mem_limit
    if cpu_limit is not None:
        host_config["cpu_period"] = 100_000
        host_config["cpu_quota"] = int(cpu_limit * 100_000)
    return create_kwargs, host_config
