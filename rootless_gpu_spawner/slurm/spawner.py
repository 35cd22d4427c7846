"""RootlessGPUSlurmSpawner: the student's server as a Slurm job; on the job's node, the same
container the local spawner runs, on the student's own rootless daemon there.

Slurm decides placement and keeps the GPU ledger; the hub submits AS the student
(``sbatch --uid/--gid``), follows the job with ``squeue`` (the queue reason and position on
the progress page), learns the server's port from the node side's report (see
:mod:`.report`) and reaches it at the node's ``NodeAddr``. Stop is ``scancel``; the job id,
node and port are saved, so a restarted hub finds the job again.
"""

from __future__ import annotations

import asyncio
import time

from traitlets import List, Unicode, default

from ..errors import SpawnRefused
from ..host.workspace import WorkspaceError, ensure_workspace
from ..hub.readiness import wait_until_answering
from ..hub.user_options import validate_user_options
from ..safetext import printable
from ..spawner import RootlessGPUSpawner
from . import figures as job_figures
from . import jobs
from .commands import SlurmCommandFailed, SlurmCommands, SlurmError, SlurmUnreachable
from .config import SlurmConfig
from .nodeside import node_spec
from .options import SlurmLimits, form_to_options, render_slurm_fields, validate_slurm_options

LOG_TAIL_BYTES = 4096


class RootlessGPUSlurmSpawner(RootlessGPUSpawner, SlurmConfig):
    """Run each student's server as a Slurm job, in a container on their daemon on the job's node."""

    @classmethod
    def class_own_traits(cls, **metadata):
        own = super().class_own_traits(**metadata)
        if cls is RootlessGPUSlurmSpawner:
            own.update(SlurmConfig.class_own_traits(**metadata))
        return own

    job_id = Unicode("")
    job_node = Unicode("")
    node_addr = Unicode("")
    job_gpus = List(Unicode())
    _report: asyncio.Future | None = None
    _figures: dict | None = None  # the node's latest GPU utilisation report (memory only)
    _phases: dict = {}
    _t0 = 0.0

    @default("slurm_partitions")
    def _default_partitions(self):
        return [self.slurm_partition]

    @default("allow_own_images")
    def _default_allow_own_images(self):
        # A student's images live in each node's daemon (local storage), not on the hub's host:
        # which ones a job would find depends on the node Slurm picks. Off unless the admin says.
        return False

    # ---- state -----------------------------------------------------------------------

    def load_state(self, state):
        super().load_state(state)
        self.job_id = state.get("slurm_job_id", "")
        self.job_node = state.get("slurm_node", "")
        self.node_addr = state.get("slurm_node_addr", "")
        self.host_port = int(state.get("slurm_port") or 0)
        self.job_gpus = [str(g) for g in state.get("slurm_gpus") or []]

    def get_state(self):
        state = super().get_state()
        if self.job_id:
            state.update(slurm_job_id=self.job_id, slurm_node=self.job_node,
                         slurm_node_addr=self.node_addr, slurm_port=self.host_port,
                         slurm_gpus=list(self.job_gpus))
            if self.account:
                state["account"] = self.account.name
        return state

    def clear_state(self):
        super().clear_state()
        self.job_id = self.job_node = self.node_addr = ""
        self.job_gpus = []
        self._figures = None

    # ---- options -----------------------------------------------------------------------

    def slurm_limits(self) -> SlurmLimits:
        partitions = tuple(dict.fromkeys([self.slurm_partition, *self.slurm_partitions]))
        max_gpus = self.slurm_max_gpus
        limit = self.gpu_limit()
        if limit is not None:
            max_gpus = min(max_gpus, limit)
        return SlurmLimits(
            self.slurm_partition, partitions, self.slurm_time_limit, self.slurm_max_time_limit,
            self.slurm_gpus, max_gpus, self.slurm_cpus, self.slurm_max_cpus,
            self.slurm_memory, self.slurm_max_memory, tuple(self.slurm_form_options),
        )

    def validated_user_options(self, options=None) -> dict:
        options = dict(self.user_options if options is None else options or {})
        if not isinstance(options, dict):
            raise SpawnRefused(400, "user_options must be a JSON object")
        slurm_keys = {k: options.pop(k) for k in list(options) if k in ("partition", "time", "gpus", "cpus", "memory")}
        result = validate_user_options(options, self.gpu_settings(), self._get_allowed_images())
        result["job"] = validate_slurm_options(slurm_keys, self.slurm_limits())
        return result

    async def render_options_form(self) -> str:
        images = self._image_choices()
        parts = []
        if len(images) > 1:
            from html import escape

            opts = "".join(
                f'<option value="{escape(label)}"{" selected" if image == self.image else ""}>{escape(label)}</option>'
                for label, image in images.items()
            )
            parts.append('<div class="form-group"><label for="rgs-image">Image / 镜像</label>'
                         f'<select class="form-control" name="image" id="rgs-image">{opts}</select></div>')
        parts.append(render_slurm_fields(self.slurm_limits()))
        return "\n".join(p for p in parts if p)

    def options_from_formdata(self, formdata) -> dict:
        options = form_to_options(formdata)
        image = options.get("image")
        if image is not None:
            images = self._image_choices()
            if images and image not in images:
                raise SpawnRefused(400, f"image {image[:100]!r} is not one of the offered images")
        self.validated_user_options(options)
        return options

    # ---- Slurm --------------------------------------------------------------------------

    @property
    def slurm(self) -> SlurmCommands:
        return SlurmCommands(self.slurm_bin_dir, self.slurm_conf, self.slurm_command_timeout)

    async def _slurm(self, name, *args, **kwargs) -> str:
        try:
            return await self.slurm.run(name, *args, **kwargs)
        except SlurmUnreachable as e:
            raise SpawnRefused(503, str(e), cause=e) from None
        except SlurmCommandFailed as e:
            raise SpawnRefused(502, f"Slurm refused: {e}", cause=e) from None

    async def _check_cluster(self, job: dict):
        """Before submitting: the partition exists and some node of it has enough GPUs."""
        try:
            out = await self.slurm.run("sinfo", "-h", "-N", "-p", job["partition"], "-o", "%N|%G")
        except SlurmUnreachable as e:
            raise SpawnRefused(503, str(e), cause=e) from None
        except SlurmCommandFailed as e:
            out = ""
            if "invalid partition" not in e.stderr.lower():
                raise SpawnRefused(502, f"Slurm refused: {e}", cause=e) from None
        nodes = jobs.parse_sinfo_gpus(out)
        if not nodes:
            raise SpawnRefused(400, f"Slurm has no partition {job['partition']!r} (or it has no nodes): "
                               "choose another partition, or ask the admin to check slurm_partition.")
        most = max(nodes.values())
        if job["gpus"] > most:
            raise SpawnRefused(400, f"you asked for {job['gpus']} GPUs, but no node of partition "
                               f"{job['partition']!r} has more than {most}: ask for {most} or fewer.")

    async def _job_status(self) -> jobs.JobStatus | None:
        out = await self._slurm("squeue", "-h", "-j", self.job_id, "-o", jobs.SQUEUE_FORMAT, check=False)
        try:
            return jobs.parse_squeue(out, self.job_id)
        except jobs.SlurmAnswerError as e:
            raise SpawnRefused(502, str(e)) from None

    async def _queue_position(self, partition: str) -> tuple[int | None, int]:
        out = await self._slurm("squeue", "-h", "-t", "PD", "-p", partition, "-o", "%i", "--sort=-p,i", check=False)
        return jobs.queue_position(out, self.job_id), len(out.split())

    # ---- lifecycle ----------------------------------------------------------------------

    # start() is the local spawner's (a progress feed around _start).

    async def _start(self):
        options = self.validated_user_options()
        job = options["job"]
        ref = await self._resolve_image(options.get("image"))
        if options.get("image"):
            self.image = ref.familiar
        account = await self.resolve_account()
        self._claim_account(account)
        try:
            return await self._submit_and_wait(ref, job, account)
        except BaseException:
            await self._cancel_quietly()
            self._release_account()
            raise

    async def _submit_and_wait(self, ref, job, account):
        feed = self._progress
        feed.emit(2, "asking Slurm about the cluster")
        await self._check_cluster(job)
        try:
            workspace = await asyncio.to_thread(
                ensure_workspace, account.home, self.workspace_dir, account.uid, account.gid
            )
        except WorkspaceError as e:
            raise SpawnRefused(403, f"workspace for {account.name}: {e}") from None
        await asyncio.to_thread(_ensure_log_dir, account, self.slurm_output)
        spec = node_spec(self, ref, workspace, account)
        request = jobs.JobRequest(
            job["partition"], job["time"], job["gpus"], job["cpus"], job["memory"],
            jobs.job_name(self.user.name, self.name), account.uid, account.gid, account.home,
            f"{account.home}/{self.slurm_output}",
        )
        self._report = asyncio.get_running_loop().create_future()
        self.job_node = self.node_addr = ""
        self.host_port = 0
        t0 = self._t0 = time.monotonic()
        out = await self._slurm("sbatch", *jobs.sbatch_args(request),
                                stdin=jobs.batch_script(list(self.slurm_runner), spec))
        try:
            self.job_id = jobs.parse_job_id(out)
        except jobs.SlurmAnswerError as e:
            raise SpawnRefused(502, str(e)) from None
        self.log.info("submitted Slurm job %s for %s (%s)", self.job_id, account.name, request)
        feed.emit(5, f"submitted Slurm job {self.job_id} ({job['gpus']} GPU, partition {job['partition']})")
        self._phases = {"submitted": time.monotonic() - t0}
        port = await self._wait_for_report(job, account)
        self._phases["container_started"] = time.monotonic() - t0
        self.host_port = port
        feed.emit(90, f"container started on {self.job_node}, waiting for JupyterLab to answer")
        base_url = getattr(getattr(self, "server", None), "base_url", None) or "/"
        await wait_until_answering(f"http://{self.node_addr}:{port}{base_url}api", self.http_timeout)
        self._phases["ready"] = time.monotonic() - t0
        # One line per start, read by bench/slurm_bench.py (seconds since sbatch was called).
        self.log.info("slurm phases for %s: job %s %s", self._log_name, self.job_id,
                      " ".join(f"{k}={v:.3f}" for k, v in self._phases.items()))
        return self.node_addr, port

    async def _wait_for_report(self, job, account) -> int:
        """Follow the job until its node side reports the server's port (or it ends)."""
        feed, shown, running_seen = self._progress, None, False
        while True:  # bounded by JupyterHub's start_timeout (which cancels start)
            status = await self._job_status()
            if self._report.done():
                break
            if status is None or status.finished:
                await asyncio.sleep(0.3)  # the report may be on its way
                if self._report.done():
                    break
                raise SpawnRefused(500, await self._ended_message(account, status))
            if status.pending:
                position, total = await self._queue_position(job["partition"])
                text = (f"Slurm job {self.job_id} is PENDING (reason: {status.reason}"
                        + (f", position {position} of {total} in the queue" if position else "") + ")")
                if text != shown:
                    feed.emit(6, text)
                    shown = text
            elif status.running and not running_seen:
                running_seen = True
                self._phases["running"] = time.monotonic() - self._t0
                await self._learn_node(status.node)
                gpus = f" with GPU {','.join(self.job_gpus)}" if self.job_gpus else ""
                feed.emit(20, f"Slurm job {self.job_id} is RUNNING on {self.job_node}{gpus}; "
                              "starting the container there")
            try:
                await asyncio.wait_for(asyncio.shield(self._report), self.slurm_status_interval)
                break
            except asyncio.TimeoutError:
                pass
        report = self._report.result()
        if "error" in report:
            raise SpawnRefused(500, f"the server could not start on node {self.job_node or '?'}: "
                               f"{report['error']}")
        if not self.node_addr:
            status = await self._job_status()
            await self._learn_node(status.node if status else "")
        return report["port"]

    def gpu_holder(self) -> dict | None:
        """This server's GPUs for the hub's GPU-holders API (and so the GPU board): ``NODE:INDEX``
        ids, Slurm's word; None while it holds none."""
        if not (self.job_id and self.job_node and self.job_gpus and self.host_port):
            return None
        return {"gpus": [f"{self.job_node}:{g}" for g in self.job_gpus], "node": self.job_node,
                "utilisation": job_figures.holder_figures(self._figures, self.job_node)}

    async def _learn_node(self, node: str):
        if not node:
            raise SpawnRefused(502, f"Slurm names no single node for job {self.job_id}")
        out = await self._slurm("scontrol", "show", "node", "-o", node)
        try:
            self.node_addr = jobs.parse_node_addr(out)
        except jobs.SlurmAnswerError as e:
            raise SpawnRefused(502, str(e)) from None
        self.job_node = node
        # The job's node-local GPU indices, Slurm's word (for the progress page and the state).
        detail = await self._slurm("scontrol", "show", "job", "-d", "-o", self.job_id, check=False)
        self.job_gpus = jobs.parse_job_gpus(detail)

    def node_reported(self, body: dict):
        """Called by :class:`.report.ReportHandler` with this server's own token (hostile input)."""
        if "utilisation" in body:  # the node's periodic figures, once the server runs
            if not self.job_id:
                raise ValueError("this server is not running: no utilisation figures now")
            last = self._figures["at"] if self._figures else None
            self._figures = job_figures.validate_figures(body, list(self.job_gpus), last, time.time())
            return
        if self._report is None or self._report.done():
            raise ValueError("this server is not waiting for a report")
        if "error" in body:
            self._report.set_result({"error": printable(body.get("error"), 1500)})
            return
        port = body.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
            raise ValueError("port must be a number from 1024 to 65535")
        self._report.set_result({"port": port})

    async def _ended_message(self, account, status) -> str:
        state = status.state if status else "gone from the queue"
        tail = await asyncio.to_thread(
            _log_tail, account, self.slurm_output.replace("%j", self.job_id)
        )
        self.job_id = ""
        return (f"the Slurm job ended ({state}) before the server was ready. "
                + (f"Last lines of its log (~/{self.slurm_output}): {tail}" if tail else
                   "It left no log: ask the admin to check the node's slurmd log."))

    async def _cancel_quietly(self):
        if not self.job_id:
            return
        try:
            await self.slurm.run("scancel", self.job_id)
        except SlurmError as e:
            self.log.warning("could not cancel Slurm job %s: %s", self.job_id, e)

    async def poll(self):
        if not self.job_id:
            return 0
        try:
            status = await self._job_status()
        except SpawnRefused as e:
            self.log.warning("poll for %s: %s", self._log_name, printable(e, 300))
            return None  # Slurm does not answer now: keep the server, ask again later
        if status is not None and not status.finished:
            return None
        self.log.info("Slurm job %s of %s ended (%s)", self.job_id, self._log_name,
                      status.state if status else "gone")
        self.job_id = ""
        return 0 if status is None else status.state

    async def stop(self, now=False):
        job_id = self.job_id
        try:
            if job_id:
                await self._cancel_quietly()
                deadline = time.monotonic() + self.slurm_stop_timeout
                while time.monotonic() < deadline:  # until the node side removed the container and exited
                    status = await self._job_status()
                    if status is None or status.finished:
                        break
                    await asyncio.sleep(0.5)
                else:
                    self.log.warning("Slurm job %s still listed %ss after scancel", job_id, self.slurm_stop_timeout)
        except SpawnRefused as e:
            self.log.warning("stop for %s: %s", self._log_name, printable(e, 300))
        finally:
            self.clear_state()


def _ensure_log_dir(account, rel_output: str):
    """~/DIR of the job's log, made (as root, safely) owned by the student: Slurm opens it on the node."""
    import os
    import pwd

    from ..host import daemonctl

    rel_dir = os.path.dirname(rel_output)
    if not rel_dir:
        return
    pw = pwd.getpwnam(account.name)
    try:
        with daemonctl.user_file(pw, os.path.join(rel_dir, "x"), create=True):
            pass
    except daemonctl.DaemonError as e:
        raise SpawnRefused(403, f"cannot prepare the job's log directory ~/{rel_dir}: {e}") from None


def _log_tail(account, rel: str) -> str:
    import pwd

    from ..host import daemonctl

    try:
        data = daemonctl.read_user_file(pwd.getpwnam(account.name), rel, limit=1 << 20)
    except (daemonctl.DaemonError, KeyError):
        return ""
    if not data:
        return ""
    return printable(data[-LOG_TAIL_BYTES:].decode("utf-8", "replace").strip(), 1500, keep_newlines=True)
