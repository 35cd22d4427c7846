"""Slurm's command lines and answers, as pure functions (testable without a cluster).

What the hub sends (``sbatch`` arguments, the batch script) is built here from checked
values only; what Slurm answers (``squeue``, ``sinfo``, ``scontrol``) is parsed here into
small records, bounded and made printable before anyone shows it.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from ..safetext import printable

#: squeue's fields, separated by "|": id, state, reason, node list, partition.
SQUEUE_FORMAT = "%i|%T|%r|%N|%P"
JOB_NAME_PREFIX = "rgs-"
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_PARTITION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_NODE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
#: Job states after which a job never runs again (squeue may still list them a while).
FINISHED_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
}
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}


class SlurmAnswerError(ValueError):
    """Slurm printed something this module cannot read."""


@dataclass(frozen=True)
class JobRequest:
    """What one server asks Slurm for (every field already validated)."""

    partition: str
    time_minutes: int
    gpus: int
    cpus: int
    memory_mb: int
    job_name: str
    uid: int
    gid: int
    workdir: str
    output: str


def job_name(hub_user: str, server_name: str = "") -> str:
    """A job name Slurm and the student recognise; never a shell or option hazard."""
    raw = hub_user + (f"--{server_name}" if server_name else "")
    return (JOB_NAME_PREFIX + _NAME_UNSAFE.sub("_", raw))[:100]


def format_time(minutes: int) -> str:
    """Slurm's ``--time`` spelling (days-hours:minutes:00)."""
    days, rest = divmod(int(minutes), 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


def sbatch_args(request: JobRequest) -> list[str]:
    """``sbatch`` arguments (root submits AS the student with --uid/--gid); the script comes on stdin."""
    args = [
        "--parsable",
        f"--uid={request.uid}",
        f"--gid={request.gid}",
        f"--job-name={request.job_name}",
        f"--partition={request.partition}",
        f"--time={format_time(request.time_minutes)}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={request.cpus}",
        f"--chdir={request.workdir}",
        f"--output={request.output}",
        # Nothing of the hub's (root's) environment goes to the job: Slurm sets the student's own.
        "--export=NONE",
        # The runner gets SIGTERM first, KillWait seconds before SIGKILL (scancel, time limit).
        "--signal=B:TERM@30",
    ]
    if request.gpus:
        args.append(f"--gres=gpu:{request.gpus}")
    if request.memory_mb:
        args.append(f"--mem={request.memory_mb}M")
    return args


def batch_script(runner: list[str], spec: dict) -> str:
    """The job's script: the node-side runner, with its spec on stdin (never on a command line,
    where every user of the node could read the server's token in ``ps``)."""
    body = json.dumps(spec, sort_keys=True)
    marker = "RGS_SPEC_END"
    if marker in body:  # cannot happen with json.dumps of our spec, but never let it cut the heredoc
        raise ValueError("spec contains the heredoc marker")
    command = " ".join(shlex.quote(part) for part in runner)
    return (
        "#!/bin/bash\n"
        "# rootless-gpu-spawner: a student's JupyterLab server on this node (rootless-gpu-run)\n"
        "umask 077\n"
        f"exec {command} <<'{marker}'\n{body}\n{marker}\n"
    )


def parse_job_id(stdout: str) -> str:
    """``sbatch --parsable`` prints ``ID`` or ``ID;CLUSTER``."""
    first = (stdout or "").strip().splitlines()[:1]
    job_id = first[0].split(";")[0].strip() if first else ""
    if not job_id.isdigit() or len(job_id) > 20:
        raise SlurmAnswerError(f"sbatch printed no job id: {printable(stdout, 200)!r}")
    return job_id


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    state: str
    reason: str
    node: str
    partition: str

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


def parse_squeue(stdout: str, job_id: str) -> JobStatus | None:
    """Our job's line of ``squeue -h -o SQUEUE_FORMAT``; None when Slurm no longer lists it."""
    for line in (stdout or "").splitlines()[:1000]:
        parts = line.strip().split("|")
        if len(parts) != 5 or parts[0] != job_id:
            continue
        state = parts[1].strip().upper()
        if not re.fullmatch(r"[A-Z_]{1,32}", state):
            raise SlurmAnswerError(f"squeue gave job {job_id} the state {printable(parts[1], 40)!r}")
        node = parts[3].strip()
        if node and not _NODE.match(node):
            node = ""  # several nodes or garbage: not one we can route to
        return JobStatus(job_id, state, printable(parts[2].strip(), 120), node, printable(parts[4].strip(), 64))
    return None


def queue_position(stdout: str, job_id: str) -> int | None:
    """1-based place of our job among the pending job ids squeue printed (in priority order)."""
    ids = [line.strip() for line in (stdout or "").splitlines()[:100000]]
    try:
        return ids.index(job_id) + 1
    except ValueError:
        return None


def is_partition_name(name) -> bool:
    return isinstance(name, str) and bool(_PARTITION.match(name))


def parse_gres_gpus(gres: str) -> int:
    """GPUs in a node's ``Gres`` field (``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:2,shard:8``)."""
    total = 0
    for item in (gres or "").split(","):
        fields = re.sub(r"\(.*?\)", "", item.strip()).split(":")
        if not fields or fields[0] != "gpu":
            continue
        count = fields[-1]
        if count.isdigit():
            total += int(count)
        elif len(fields) >= 2:
            total += 1
    return total


def parse_sinfo_gpus(stdout: str) -> dict[str, int]:
    """``sinfo -h -N -p PART -o '%N|%G'``: node -> GPUs it has."""
    nodes = {}
    for line in (stdout or "").splitlines()[:10000]:
        parts = line.strip().split("|")
        if len(parts) == 2 and _NODE.match(parts[0]):
            nodes[parts[0]] = max(nodes.get(parts[0], 0), parse_gres_gpus(parts[1]))
    return nodes


def parse_node_addr(stdout: str) -> str:
    """``NodeAddr=`` of ``scontrol show node -o NAME`` (Slurm's word for where the node is)."""
    match = re.search(r"(?:^|\s)NodeAddr=(\S+)", stdout or "")
    if not match or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,253}", match.group(1)):
        raise SlurmAnswerError(f"scontrol printed no NodeAddr: {printable(stdout, 200)!r}")
    return match.group(1)


def parse_job_gpus(stdout: str) -> list[str]:
    """Node-local GPU indices of ``scontrol show job -d -o ID`` (``GRES=gpu:2(IDX:0-1)``)."""
    match = re.search(r"GRES=\S*?gpu(?::[^(\s]*)?\(IDX:([0-9,\-]+)\)", stdout or "")
    if not match:
        return []
    return expand_indices(match.group(1))


def expand_indices(text: str) -> list[str]:
    """``0-1,3`` -> ["0", "1", "3"] (bounded)."""
    out = []
    for part in (text or "").split(","):
        if "-" in part:
            lo, _, hi = part.partition("-")
            if lo.isdigit() and hi.isdigit() and int(hi) - int(lo) < 1024:
                out += [str(i) for i in range(int(lo), int(hi) + 1)]
        elif part.isdigit():
            out.append(str(int(part)))
    return out[:1024]
