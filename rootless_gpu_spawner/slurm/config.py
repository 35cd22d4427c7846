"""Every ``c.RootlessGPUSlurmSpawner.slurm_*`` setting (``config=True`` traits with help).

The local spawner's settings (image, allowed_images, mirrors, workspace, system_user, ...) are
inherited and mean the same here: the node side uses them to run the same container.
"""

from __future__ import annotations

import os
import sys

from traitlets import Float, HasTraits, Int, List, Unicode, default, validate

from .options import SLURM_OPTION_KEYS


def _bad(trait: str, message: str) -> ValueError:
    return ValueError(f"RootlessGPUSlurmSpawner.{trait}: {message}")


class SlurmConfig(HasTraits):
    # ---- the job -------------------------------------------------------------

    slurm_partition = Unicode(
        "gpu", config=True,
        help="""Partition the job is submitted to when the student does not choose one::

            c.RootlessGPUSlurmSpawner.slurm_partition = "gpu"
        """,
    )
    slurm_partitions = List(
        Unicode(), config=True,
        help="""Partitions the form may choose from (``slurm_partition`` is always one of them)::

            c.RootlessGPUSlurmSpawner.slurm_partitions = ["gpu", "gpu-long"]
        """,
    )
    slurm_time_limit = Int(
        480, config=True,
        help="""The job's time limit in minutes (``sbatch --time``) by default::

            c.RootlessGPUSlurmSpawner.slurm_time_limit = 480
        """,
    )
    slurm_max_time_limit = Int(
        1440, config=True,
        help="""The longest time limit (minutes) a student may ask for in the form::

            c.RootlessGPUSlurmSpawner.slurm_max_time_limit = 1440
        """,
    )
    slurm_gpus = Int(
        1, config=True,
        help="""GPUs per job by default (``--gres=gpu:N``; 0: none)::

            c.RootlessGPUSlurmSpawner.slurm_gpus = 1
        """,
    )
    slurm_max_gpus = Int(
        2, config=True,
        help="""The most GPUs a student may ask for in the form (per job)::

            c.RootlessGPUSlurmSpawner.slurm_max_gpus = 2
        """,
    )
    slurm_cpus = Int(
        1, config=True,
        help="""CPUs per job by default (``--cpus-per-task``)::

            c.RootlessGPUSlurmSpawner.slurm_cpus = 4
        """,
    )
    slurm_max_cpus = Int(
        8, config=True,
        help="""The most CPUs a student may ask for in the form::

            c.RootlessGPUSlurmSpawner.slurm_max_cpus = 16
        """,
    )
    slurm_memory = Int(
        0, config=True,
        help="""Memory per job in MB by default (``--mem``; 0: the partition's default)::

            c.RootlessGPUSlurmSpawner.slurm_memory = 16000
        """,
    )
    slurm_max_memory = Int(
        64000, config=True,
        help="""The most memory (MB) a student may ask for in the form::

            c.RootlessGPUSlurmSpawner.slurm_max_memory = 64000
        """,
    )
    slurm_form_options = List(
        Unicode(), default_value=["partition", "time", "gpus"], config=True,
        help="""Which job settings the spawn form (and REST ``user_options``) may change; the
        others are always the admin's. Any of ``partition``, ``time``, ``gpus``, ``cpus``, ``memory``::

            c.RootlessGPUSlurmSpawner.slurm_form_options = ["time", "gpus"]
        """,
    )

    # ---- where Slurm is ----------------------------------------------------

    slurm_bin_dir = Unicode(
        "", config=True,
        help="""Directory of sbatch/squeue/scontrol/scancel/sinfo (empty: found on PATH)::

            c.RootlessGPUSlurmSpawner.slurm_bin_dir = "/usr/bin"
        """,
    )
    slurm_conf = Unicode(
        "", config=True,
        help="""slurm.conf for the hub's Slurm commands (empty: Slurm's default or $SLURM_CONF)::

            c.RootlessGPUSlurmSpawner.slurm_conf = "/etc/slurm/slurm.conf"
        """,
    )
    slurm_command_timeout = Float(
        15.0, config=True,
        help="""Seconds one Slurm command may take before Slurm counts as unreachable::

            c.RootlessGPUSlurmSpawner.slurm_command_timeout = 15
        """,
    )

    # ---- the node side -------------------------------------------------------

    slurm_runner = List(
        Unicode(), config=True,
        help="""The node-side command the job runs as the student (installed at the same path on
        every node; default: this hub's own ``rootless-gpu-run``)::

            c.RootlessGPUSlurmSpawner.slurm_runner = ["/opt/rootless-gpu-spawner/venv/bin/rootless-gpu-run"]
        """,
    )
    slurm_output = Unicode(
        ".rootless-gpu-spawner/slurm-%j.log", config=True,
        help="""The job's log, relative to the student's home (Slurm's ``%j`` is the job id). The
        hub shows its last lines when the job fails, so the home must be shared with the nodes::

            c.RootlessGPUSlurmSpawner.slurm_output = ".rootless-gpu-spawner/slurm-%j.log"
        """,
    )
    slurm_publish_ip = Unicode(
        "0.0.0.0", config=True,
        help="""Address on the node the server's port is published on; the hub reaches it at the
        node's ``NodeAddr``. ``127.0.0.1`` only when hub and nodes are one host (the demo)::

            c.RootlessGPUSlurmSpawner.slurm_publish_ip = "0.0.0.0"
        """,
    )
    slurm_node_gpu_stub_dir = Unicode(
        "", config=True,
        help="""SIMULATED GPU hosts only (the demo and tests): a directory with a stub
        ``nvidia-container-runtime-hook`` put first on the PATH of a daemon the node side starts::

            c.RootlessGPUSlurmSpawner.slurm_node_gpu_stub_dir = ""
        """,
    )
    # ---- GPU utilisation measured on the job's node (the GPU board, GPU-idle culling) ----

    slurm_utilisation_file = Unicode(
        "", config=True,
        help="""SIMULATED figures (the demo and tests): a JSON file on the node, readable by the
        student, that the node side reads instead of NVML (the format of
        ``RGS_GPU_UTILISATION_FILE``; indices are the node's). Empty: NVML on the node, or the
        file the job's own environment names in ``RGS_GPU_UTILISATION_FILE``::

            c.RootlessGPUSlurmSpawner.slurm_utilisation_file = ""
        """,
    )
    slurm_utilisation_interval = Float(
        15.0, config=True,
        help="""Seconds between two utilisation reports of a job's node side (2 to 300)::

            c.RootlessGPUSlurmSpawner.slurm_utilisation_interval = 15
        """,
    )

    @validate("slurm_utilisation_interval")
    def _valid_utilisation_interval(self, proposal):
        if not 2 <= proposal["value"] <= 300:
            raise _bad("slurm_utilisation_interval", "must be from 2 to 300 seconds, e.g. 15")
        return proposal["value"]

    slurm_stop_timeout = Float(
        45.0, config=True,
        help="""Seconds ``stop`` waits, after ``scancel``, for the job (and its container) to be gone::

            c.RootlessGPUSlurmSpawner.slurm_stop_timeout = 45
        """,
    )
    slurm_status_interval = Float(
        1.0, config=True,
        help="""Seconds between ``squeue`` looks while a server starts::

            c.RootlessGPUSlurmSpawner.slurm_status_interval = 1.0
        """,
    )

    @default("slurm_runner")
    def _default_runner(self):
        return [os.path.join(os.path.dirname(sys.executable), "rootless-gpu-run")]

    @validate("slurm_form_options")
    def _check_form_options(self, proposal):
        unknown = sorted(set(proposal.value) - set(SLURM_OPTION_KEYS))
        if unknown:
            raise _bad("slurm_form_options", f"unknown {unknown}; use any of {list(SLURM_OPTION_KEYS)}")
        return proposal.value

    @validate("slurm_partition")
    def _check_partition(self, proposal):
        from .jobs import is_partition_name

        if not is_partition_name(proposal.value):
            raise _bad("slurm_partition", f"{proposal.value!r} is not a partition name (letters, digits, _.-)")
        return proposal.value

    @validate("slurm_output")
    def _check_output(self, proposal):
        value = proposal.value
        if not value or value.startswith("/") or ".." in value.split("/"):
            raise _bad("slurm_output", "must be a path inside the student's home, such as "
                       "'.rootless-gpu-spawner/slurm-%j.log'")
        return value
