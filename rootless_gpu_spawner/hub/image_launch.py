"""Starting any image a student brings (a mixin of RootlessGPUSpawner).

The decisions are pure (:mod:`.launch`); this module runs them against the student's daemon:
inspect, probe (:mod:`.probe`, cached per image id), build or reuse the derived image
(:mod:`.derived`), and watch the container while the server comes up, so a container that
exits fails the spawn at once with its last log lines.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from docker.errors import APIError
from jupyterhub import __version__ as HUB_VERSION

from ..errors import SpawnRefused
from ..safetext import printable, printable_lines
from . import container_logs, derived, mirrors, probe
from .daemon import DaemonError
from .launch import ImageProblem, LaunchPlan, image_facts, is_docker_stacks, plan_launch

EXIT_LOG_LINES = 25


class ImageLaunch:
    """How this server's image starts: the plan, the derived image, the start watch."""

    _launch: LaunchPlan | None = None

    async def plan_image(self, image: str, name: str) -> str:
        """The image to create the container from (``image`` or its derived image); sets ``_launch``."""
        try:
            facts = image_facts(await self.docker("inspect_image", image))
            if self.cmd:
                # The admin's command wins; Docker Stacks still keep the student as container root.
                stacks = is_docker_stacks(facts)
                self._launch = LaunchPlan(command=None, env=dict(self.docker_stacks_env) if stacks else {},
                                          docker_stacks=stacks)
                return image
            facts_probe = probe.cached(self.docker_host, facts.id)
            if facts_probe is None:
                self._progress.emit(None, f"looking at image {name}: Python and JupyterHub")
                facts_probe = await probe.probe_image(self.docker, self.container_logs, facts.id, name, self._probe_labels())
                probe.remember(self.docker_host, facts.id, facts_probe)
            self._launch = plan = plan_launch(
                facts, facts_probe, name=name, hub_version=HUB_VERSION,
                stacks_env=dict(self.docker_stacks_env), may_install=self.install_jupyter_if_missing,
            )
            if plan.derive:
                return await self._derived_image(facts, plan, name)
            return image
        except ImageProblem as e:
            raise SpawnRefused(e.status, str(e), cause=e) from None

    def _probe_labels(self) -> dict:
        return {"org.rootless-gpu-spawner.probe": "1", "org.rootless-gpu-spawner.hub-user": self.user.name}

    async def _derived_image(self, facts, plan: LaunchPlan, name: str) -> str:
        tag = derived.derived_tag(facts.id, HUB_VERSION)
        try:
            existing = image_facts(await self.docker("inspect_image", tag))
            if existing.labels.get(f"{derived.LABEL}.from") == facts.id:
                self.log.info("reusing derived image %s of %s for %s", tag, name, self._account_name)
                return tag
        except APIError as e:
            if e.status_code != 404:
                raise
        await self._check_index_reachable(name)
        self._progress.emit(75, derived.PROGRESS_MESSAGE)
        text = derived.dockerfile(facts.id, plan.python, self.lab_pypi_index, HUB_VERSION,
                                  list(self.lab_pip_packages), facts.user)
        throttle = derived.BuildThrottle(lambda m: self._progress.emit_threadsafe(80, m, 0.0, 0))
        try:
            await self._connection.run(
                derived.run_build, derived.build_context(text), tag, throttle,
                seconds=self.derived_build_timeout, max_bytes=None,
            )
        except derived.BuildFailed as e:
            raise SpawnRefused(e.status, derived.explain_failure(name, self.lab_pypi_index, e.reason, e.lines),
                               cause=e) from None
        self._progress.emit(85, f"prepared your image {name} (JupyterLab installed); next starts reuse it")
        await self._remove_stale_derived()
        return tag

    async def _check_index_reachable(self, name: str) -> None:
        parts = urlsplit(self.lab_pypi_index)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = "127.0.0.1" if parts.hostname == self.host_gateway_ip else (parts.hostname or "")
        if not await mirrors.reachable(host, port, self.mirror_probe_timeout):
            raise SpawnRefused(
                503,
                f"image {name} has no JupyterHub, and the lab's package index {self.lab_pypi_index} "
                f"(RootlessGPUSpawner.lab_pypi_index) does not answer, so JupyterLab cannot be installed "
                "into it now. Ask the admin to check the index (or to set a reachable mirror), or install "
                "jupyterhub and jupyterlab in your image yourself.",
            )

    async def _remove_stale_derived(self) -> None:
        try:
            images = await self.docker("images", filters={"label": derived.LABEL})
            present = {i.get("Id") for i in await self.docker("images") if isinstance(i, dict)}
            for ident in derived.stale(images if isinstance(images, list) else [], HUB_VERSION, present):
                await self.docker("remove_image", ident)
                self.log.info("removed stale derived image %s of %s", ident[:19], self._account_name)
        except (APIError, SpawnRefused) as e:  # in use, or the daemon is busy: next time
            self.log.info("stale derived images of %s kept: %s", self._account_name, printable(e, 200))

    async def container_logs(self, ident: str, tail: int) -> bytes:
        """The container's last ``tail`` lines, raw bytes, bounded (:mod:`.container_logs`)."""
        return await self._connection.run(container_logs.read_logs, ident, tail, max_bytes=4 * container_logs.MAX_LOG_BYTES)

    def launch_command(self, image_command: list) -> list:
        plan = self._launch
        if plan is not None and plan.command is not None:
            return list(plan.command)
        return list(image_command)

    def launch_env(self) -> dict:
        return dict(self._launch.env) if self._launch is not None else {}

    async def watch_container(self) -> None:
        """Raise a clear refusal when the container has exited while the server was starting."""
        obj = await self.get_object()
        if obj is not None and obj.running:
            return
        try:
            raw = await self.container_logs(obj.id, EXIT_LOG_LINES) if obj is not None else b""
        except (APIError, SpawnRefused, DaemonError):
            raw = b""
        code = "is gone" if obj is None else f"exited with code {obj.exit_code}"
        if obj is not None and self.remove:
            await self._remove_quietly()
        raise SpawnRefused(422, exit_message(self.image, code, printable_lines(raw, EXIT_LOG_LINES, 240)))


def exit_message(name: str, code: str, lines: list) -> str:
    tail = "\n".join(lines) or "(it printed nothing)"
    return (
        f"the server's container (image {printable(name, 200)}) {code} while JupyterLab was starting, "
        "so it cannot start from this image as it is. Its last lines say why (a wrong command, a missing "
        "module, a jupyterhub the hub cannot talk to); fix the image, or choose another one.\n"
        f"Last lines:\n{tail}"
    )
