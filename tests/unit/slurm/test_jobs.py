"""The Slurm command lines and answers (rootless_gpu_spawner.slurm.jobs), without a cluster."""

import json
import shlex

import pytest

from rootless_gpu_spawner.slurm import jobs


def request(**kw):
    base = dict(partition="gpu", time_minutes=90, gpus=2, cpus=4, memory_mb=16000,
                job_name=jobs.job_name("stu.dent", "x y"), uid=1002, gid=1003,
                workdir="/home/s", output="/home/s/.rootless-gpu-spawner/slurm-%j.log")
    base.update(kw)
    return jobs.JobRequest(**base)


def test_sbatch_args_submit_as_the_student_with_no_hub_environment():
    args = jobs.sbatch_args(request())
    assert "--uid=1002" in args and "--gid=1003" in args
    assert "--export=NONE" in args
    assert "--gres=gpu:2" in args and "--time=01:30:00" in args and "--mem=16000M" in args
    assert "--job-name=rgs-stu.dent--x_y" in args and "--cpus-per-task=4" in args
    assert not any(a.startswith("--gres") for a in jobs.sbatch_args(request(gpus=0)))
    assert not any(a.startswith("--mem") for a in jobs.sbatch_args(request(memory_mb=0)))


def test_time_format_has_days():
    assert jobs.format_time(1) == "00:01:00"
    assert jobs.format_time(24 * 60 + 61) == "1-01:01:00"


def test_batch_script_keeps_the_spec_off_the_command_line():
    spec = {"env": {"JUPYTERHUB_API_TOKEN": "secret'$(x)"}, "version": 1}
    script = jobs.batch_script(["/opt/venv/bin/rootless-gpu-run"], spec)
    lines = script.splitlines()
    exec_line = next(line for line in lines if line.startswith("exec "))
    assert "secret" not in exec_line and exec_line.endswith("<<'RGS_SPEC_END'")
    assert shlex.split(exec_line)[1] == "/opt/venv/bin/rootless-gpu-run"
    body = lines[lines.index(exec_line) + 1]
    assert json.loads(body) == spec and lines[-1] == "RGS_SPEC_END"


def test_job_id_and_garbage():
    assert jobs.parse_job_id("42\n") == "42"
    assert jobs.parse_job_id("42;cluster\n") == "42"
    with pytest.raises(jobs.SlurmAnswerError):
        jobs.parse_job_id("sbatch: error: \x1b[31mno\n")


def test_squeue_lines():
    out = "7|RUNNING|None|gpu1|gpu\n8|PENDING|Resources||gpu\n"
    status = jobs.parse_squeue(out, "8")
    assert status.pending and status.reason == "Resources" and status.node == ""
    running = jobs.parse_squeue(out, "7")
    assert running.running and running.node == "gpu1" and not running.finished
    assert jobs.parse_squeue(out, "9") is None
    assert jobs.parse_squeue("7|TIMEOUT|TimeLimit|gpu1|gpu", "7").finished
    assert jobs.parse_squeue("7|RUNNING|None|gpu[1-2]|gpu", "7").node == ""  # not one node
    with pytest.raises(jobs.SlurmAnswerError):
        jobs.parse_squeue("7|RUN NING;|x|gpu1|gpu", "7")
    assert "\\x1b" in jobs.parse_squeue("7|PENDING|\x1b[2Jx||gpu", "7").reason


def test_queue_position():
    assert jobs.queue_position("5\n8\n9\n", "8") == 2
    assert jobs.queue_position("5\n", "8") is None


@pytest.mark.parametrize("gres,count", [
    ("gpu:2", 2), ("gpu:a100:4(S:0-1)", 4), ("gpu:2,shard:8", 2), ("(null)", 0), ("gpu:tesla:1,gpu:a100:2", 3),
])
def test_gres_counts(gres, count):
    assert jobs.parse_gres_gpus(gres) == count


def test_sinfo_node_addr_and_job_gpus():
    assert jobs.parse_sinfo_gpus("gpu1|gpu:2\ngpu2|gpu:4\nbad name|gpu:9\n") == {"gpu1": 2, "gpu2": 4}
    assert jobs.parse_node_addr("NodeName=gpu1 Arch=x86_64 NodeAddr=10.1.2.3 NodeHostName=n1") == "10.1.2.3"
    with pytest.raises(jobs.SlurmAnswerError):
        jobs.parse_node_addr("NodeName=gpu1 NodeAddr=$(evil)")
    assert jobs.parse_job_gpus("JobId=3 ... Nodes=gpu1 CPU_IDs=0 Mem=0 GRES=gpu:2(IDX:0-1) x") == ["0", "1"]
    assert jobs.parse_job_gpus("GRES=gpu:a100:3(IDX:0,2-3)") == ["0", "2", "3"]
    assert jobs.parse_job_gpus("no gres") == []
