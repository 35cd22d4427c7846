#!/usr/bin/env python3
"""Generate the configuration reference (docs/en and docs/zh) from the code.

    python scripts/gen_config_reference.py              # rewrite both pages
    python scripts/gen_config_reference.py --lang zh    # rewrite one page
    python scripts/gen_config_reference.py --check      # exit 1 with a diff when a page is stale
    python scripts/gen_config_reference.py --stdout --lang en

The page is built from ``RootlessGPUSpawner.class_own_traits(config=True)``
(name, type, default and the ``help=`` text, in the order they are defined in
``config.py``, the ``SpawnerConfig`` the spawner inherits) and from a short, curated list of inherited DockerSpawner /
JupyterHub ``Spawner`` traits with a note on how this spawner treats them.

Defaults are rendered deterministically: a default computed at run time by a
``@default`` method (``os.cpu_count()``, the hub's version, ...) is never
evaluated; it must be described in ``DESCRIBED_DEFAULTS`` below, otherwise the
generator stops and says so.  Nothing machine-specific can reach the page.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from traitlets import (  # noqa: E402
    Any,
    Bool,
    Callable,
    CaselessStrEnum,
    Dict,
    Enum,
    Float,
    Int,
    List,
    TraitType,
    Unicode,
    Union,
)
from traitlets.traitlets import DefaultHandler  # noqa: E402

from rootless_gpu_spawner import RootlessGPUSpawner  # noqa: E402

LANGS = ("en", "zh")
CLASS = RootlessGPUSpawner
CLASS_NAME = CLASS.__name__


def out_path(lang: str) -> Path:
    return ROOT / "docs" / lang / "config-reference.md"


# ---------------------------------------------------------------------------
# Hand-written parts (kept small; everything else comes from the code)
# ---------------------------------------------------------------------------

#: Titles for the ``# ---- name ----`` sections of config.py. A section not
#: listed here gets its comment text as the title (and in English on zh).
GROUP_TITLES = {
    "which daemon": ("Which daemon", "使用哪个 daemon"),
    "networking": ("Networking", "网络"),
    "container user, workspace": ("Container user and workspace", "容器用户与工作区"),
    "GPUs": ("GPU allocation", "GPU 分配"),
    "images": ("Images, mirrors and admission", "镜像、镜像加速与启动排队"),
    "registry mirrors": ("Mirrors for every registry, the lab cache", "各镜像仓库的加速镜像与实验室缓存"),
    "images students bring (hub/launch.py, hub/derived.py)": ("Images students bring", "学生带来的镜像"),
    "own images, saved environments": ("Students' own images and saved environments", "学生自己的镜像与保存的环境"),
}

#: Defaults computed by a ``@default`` method, described instead of evaluated.
#: (en, zh). Every trait shown with a dynamic default must be here.
DESCRIBED_DEFAULTS = {
    "max_concurrent_starts": (
        "the number of CPU cores of the hub's host (`os.cpu_count()`, at least 1)",
        "hub 所在主机的 CPU 核数（`os.cpu_count()`，至少为 1）",
    ),
    "image": (
        "DockerSpawner's `quay.io/jupyterhub/singleuser:X.Y`, X.Y being the hub's JupyterHub version; set it",
        "DockerSpawner 的 `quay.io/jupyterhub/singleuser:X.Y`（X.Y 为 hub 的 JupyterHub 版本）；请明确设置",
    ),
    "port": ("`8888` (set by DockerSpawner)", "`8888`（DockerSpawner 设定）"),
    "host_ip": (
        '`"127.0.0.1"` (set by RootlessGPUSpawner; `DOCKER_HOST` is ignored)',
        '`"127.0.0.1"`（RootlessGPUSpawner 设定；忽略 `DOCKER_HOST`）',
    ),
    "remove": ("`True` (set by RootlessGPUSpawner)", "`True`（RootlessGPUSpawner 设定）"),
    "notebook_dir": (
        "the value of `workspace_mount` (set by RootlessGPUSpawner)",
        "`workspace_mount` 的值（RootlessGPUSpawner 设定）",
    ),
    "name_template": (
        '`"{prefix}-{username}-{userid}"`, plus `"--{servername}"` for a named server '
        "(set by RootlessGPUSpawner: the hub's user id keeps names unique)",
        '`"{prefix}-{username}-{userid}"`，命名服务器再加 `"--{servername}"`'
        "（RootlessGPUSpawner 设定：hub 用户 id 保证名称唯一）",
    ),
    "options_form": (
        "RootlessGPUSpawner's form (image and GPU choice); empty when there is nothing to choose",
        "RootlessGPUSpawner 的表单（选择镜像与 GPU）；没有可选项时为空",
    ),
    "options_from_form": (
        "RootlessGPUSpawner's parser for that form (same validation as REST API `user_options`)",
        "RootlessGPUSpawner 对该表单的解析（与 REST API `user_options` 同一套校验）",
    ),
    "cmd": ("`None`: the image's own `CMD` (set by DockerSpawner)", "`None`：使用镜像自己的 `CMD`（DockerSpawner 设定）"),
    "use_internal_ip": (
        '`False` while `network_name` is `"bridge"` or `"host"`, else `True` (set by DockerSpawner)',
        '`network_name` 为 `"bridge"` 或 `"host"` 时为 `False`，否则为 `True`（DockerSpawner 设定）',
    ),
}

#: Types a trait cannot state itself (``Any`` plus a validator).
TYPE_OVERRIDES = {
    "gpus": '`"all"`, int, or list of GPU ids (str or int)',
    "allowed_images": 'dict, list, `"*"` or callable',
}

#: One-line Chinese summaries of RootlessGPUSpawner's own traits.
ZH_SUMMARY = {
    "system_user": "hub 用户名 → 系统登录账号的映射：含 `{username}` 的模板，或接收 hub 用户名、返回登录名的函数。"
    "这个账号拥有学生的 daemon 和工作区。",
    "allow_shared_accounts": "是否允许映射到同一系统账号的两个 hub 用户同时运行服务器（共用该账号的 daemon 和文件）。"
    "默认关闭：第二个会被拒绝（HTTP 409）。",
    "min_uid": "uid 低于此值的系统账号（root 与系统账号）一律拒绝。",
    "docker_host_template": "每个学生 rootless daemon 的地址，可用 `{uid}`、`{username}`（系统账号）和 `{home}`。"
    "从不使用 `DOCKER_HOST` 或 `/var/run/docker.sock`。",
    "allow_rootful_daemon": "仅供管理员：接受没有报告 rootless 模式的 daemon。rootful daemon 等于把主机 root 交给每个学生，"
    "请保持关闭；只用于单用户测试机。",
    "start_daemon_if_down": "启动服务器时学生的 daemon 没有运行（或不应答），就由 hub 启动它，而不是拒绝；用的是与 "
    "`rootless-gpu-admin start-daemon` 相同的代码（装有 systemd 用户服务时用它，否则手动启动）。"
    "默认关闭：反复挂掉的 daemon 应该让管理员看到。",
    "docker_api_timeout": "对学生 daemon 的一次调用最多用时（秒），从头到尾计算（是总时限，不是每次读取的超时："
    "每分钟只回一个字节的 daemon 也会被切断）。拉取镜像另有 `image_pull_timeout`。",
    "image_pull_timeout": "在学生 daemon 上拉取一个镜像最多用时（秒），从头到尾计算；超时后给出明确的错误"
    "（下次启动会接着用已下载的层）。",
    "host_gateway_ip": "rootless 容器内看到的主机回环地址（slirp4netns 的主机别名）。hub 监听回环地址时，"
    "容器内的 `JUPYTERHUB_API_URL` 和 `JUPYTERHUB_ACTIVITY_URL` 改用它；hub 自己的 `hub_connect_url` 不变。",
    "run_as_root": "以容器 root 运行服务器：rootless daemon 把它映射为学生本人的 uid，工作区里的文件归学生所有，"
    "并给单用户服务器加 `--allow-root`。设为 False 时用镜像自己的用户，文件在主机上属于学生无法管理的从属 uid。",
    "workspace_dir": "学生在主机上的工作区，相对于家目录（绝对路径必须在家目录内）。不存在时创建（归学生所有，"
    "新目录权限 0700），从不删除。",
    "workspace_mount": "工作区在容器内的路径，JupyterLab 在此打开。必须是绝对路径，且不能是 `/`、`/proc`、`/sys`、"
    "`/dev`、`/etc`。",
    "gpus": "每个服务器的 GPU，写法同 `docker run --gpus`：`\"all\"`、数量（`2`）、设备 id 列表（`[0, 3]`）或 `0`"
    "（不用 GPU）。`shared` 策略下它也是学生通过表单或 `user_options[\"gpus\"]` 能申请的上限；`exclusive` "
    "策略下它是默认申请量（`\"all\"` 视为 1）。",
    "gpu_policy": "`\"shared\"`：每个服务器都得到 `gpus` 指定的 GPU（多个服务器可能用同一块）。`\"exclusive\"`："
    "每块 GPU 同一时间只分给一个运行中的服务器，学生可在表单中申请，受各自上限约束。",
    "gpu_ids": "主机的 GPU id（`nvidia-smi` 显示的序号）。为空时通过 NVML（`nvidia-ml-py`）发现。没有 NVML 的主机上"
    "使用 `exclusive` 时必须设置。",
    "max_gpus_per_user": "每个学生最多能申请的 GPU 数（`exclusive` 下按其所有服务器合计）。0：除 `gpus` 和实际 GPU "
    "数量外不另设上限。",
    "group_gpu_limits": "按 JupyterHub 组设定的 GPU 上限，对组成员覆盖 `max_gpus_per_user`（属于多个组时取最大值）。",
    "gpu_device_mode": "向 Docker 申请 GPU 的方式：`\"nvidia\"`（NVIDIA Container Toolkit 钩子，同 `--gpus`）、"
    "`\"cdi\"`（`nvidia.com/gpu=ID`，需要 Docker 25+ 和 `nvidia-ctk cdi generate` 生成的 CDI spec）或 "
    "`\"auto\"`（daemon 报告的 CDI spec 目录里有 NVIDIA spec 时用 CDI，否则用钩子）。",
    "mirror_prefixes": "拉取 Docker Hub 镜像时依次尝试的前缀镜像（主机名，可带路径；`https://` 会被去掉），即 "
    "`registry_mirrors[\"docker.io\"]`（为兼容旧配置保留）。未设置（None，默认）时用 `registry_mirrors` 的 docker.io "
    "项；设置后替换该项；两者都设置且不同会报错。经镜像拉取后打上原始名称的标签。",
    "mirror_fallback_to_upstream": "实验室缓存和所有加速镜像都失败后，是否直接从原仓库（Docker Hub、quay.io 等）拉取。"
    "没有配置任何加速镜像的仓库总是直接拉取。",
    "registry_mirrors": "每个镜像仓库（`docker.io`、`quay.io`、`nvcr.io`、`ghcr.io`、`registry.k8s.io` 或任意 "
    "`host[:port]`）的加速镜像列表，按顺序在实验室缓存之后、原仓库之前尝试。镜像写作 `HOST[:PORT][/PATH]`：不带路径"
    "表示换主机（`quay.nju.edu.cn/jupyter/base-notebook`），带路径表示加前缀（`m.daocloud.io/quay.io/jupyter/"
    "base-notebook`）；Docker Hub 官方镜像保留 `library/`。回答 403 / \"not in allowlist\" 的镜像会在进度中说明，"
    "然后试下一个。直接赋值字典会替换全部默认值，用 `.update` 可保留其余默认项。默认值（2026 年在国内可用的镜像；"
    "DaoCloud 只服务白名单内的镜像）见 docs/zh/admin-guide.md。",
    "lab_cache_mirrors": "各仓库对应的实验室拉取缓存（pull-through cache），写作学生 daemon 访问它的 `HOST:PORT`"
    "（10.0.2.2 是 rootless daemon 看到的主机回环地址）。对该仓库最先尝试，早于 `registry_mirrors`，探测与冷却规则"
    "相同；进度条显示“from the lab cache”。缓存由 `rootless-gpu-admin` 搭建。为空：没有实验室缓存。",
    "mirror_probe_timeout": "拉取前探测前缀镜像 TCP 连接的超时秒数，连不上就跳过（否则一个失效的镜像每次拉取都要"
    "耗费 daemon 约 30 秒）。",
    "mirror_cooldown": "失败过的前缀镜像在多少秒内不再尝试。",
    "allow_own_images": "允许学生启动自己 rootless daemon 上已有的任何镜像（该学生 `docker images` 所列），"
    "`allowed_images` 之外另列在表单中（名称、大小、时间），`user_options[\"image\"]` 接受其 `仓库:标签`。"
    "默认开启：daemon 属于学生本人且是 rootless，这样的容器能做的事学生用 `docker run` 本来就能做；"
    "挂载、GPU 策略与上限与允许的镜像相同，且从不拉取。",
    "own_image_patterns": "自己的镜像名称必须匹配的通配符（`fnmatch`，区分大小写），按 `docker images` 的写法"
    "（`myenv:v1`）或完整写法（`docker.io/library/myenv:v1`）匹配；保存环境时的名称也须匹配。",
    "environment_save_timeout": "一次“保存我的环境”（在学生自己的 daemon 上对运行中的服务器容器执行 `docker commit`）"
    "最多用时（秒），超时给出明确的错误。",
    "max_concurrent_starts": "本机同时处于启动阶段（从启动容器到服务器应答）的服务器数量上限，其余排队。"
    "默认等于 CPU 核数；0 表示不限。",
    "docker_stacks_env": "Jupyter Docker Stacks 布局的镜像（start.sh）使用的环境变量：默认是上游的 rootless 三元组，服务器保持容器 root（即学生本人），工作区文件归学生。",
    "install_jupyter_if_missing": "镜像有 Python（3.9 及以上）但没有 JupyterHub 时，在学生自己的 daemon 上构建一层派生镜像，把 JupyterHub/JupyterLab 装进镜像自己的 Python 环境（每个镜像和 hub 版本只构建一次）。",
    "lab_pypi_index": "派生镜像安装用的 PyPI 索引（从容器构建内部访问）；国内常用清华 TUNA、中科大 USTC、阿里云、腾讯云镜像，或实验室自己的索引。",
    "lab_pip_packages": "派生镜像除 jupyterhub==<hub 版本> 之外安装的包。",
    "derived_build_timeout": "构建一个派生镜像最多用的秒数，超时后启动失败并显示 pip 最后的输出。",
}

#: Inherited traits that matter on this spawner: (name, en note, zh note).
INHERITED_USED = [
    ("image", "The image a server gets when the student does not choose one. It must contain `jupyterhub` "
     "(for `jupyterhub-singleuser`) at the hub's version.",
     "学生没有选择时使用的镜像。镜像里必须装有与 hub 版本一致的 `jupyterhub`（提供 `jupyterhub-singleuser`）。"),
    ("allowed_images", "What students may choose: a dict `{label: image}`, a list of images, `\"*\"` (anything) or a "
     "callable `f(spawner)` returning one of those. The form and `user_options[\"image\"]` use the label. Empty: no "
     "choice, always `image`.",
     "学生可选的镜像：字典 `{标签: 镜像}`、镜像列表、`\"*\"`（任意）或返回上述之一的函数 `f(spawner)`。表单和 "
     "`user_options[\"image\"]` 使用标签。为空：不能选择，总是用 `image`。"),
    ("pull_policy", "`ifnotpresent`: an image already on the student's daemon costs no network; `always`: pull every "
     "time; `never`: refuse when it is missing; `skip`: do not look. Images are pulled through the lab cache "
     "(`lab_cache_mirrors`) and `registry_mirrors` of their registry.",
     "`ifnotpresent`：学生 daemon 上已有的镜像不再联网；`always`：每次都拉取；`never`：没有就拒绝；`skip`：不检查。"
     "镜像经其仓库的实验室缓存（`lab_cache_mirrors`）和 `registry_mirrors` 拉取。"),
    ("remove", "A stopped server leaves no container (and no GPU held by one); files live in the workspace.",
     "服务器停止后删除容器（也不会有容器占着 GPU）；文件保存在工作区。"),
    ("port", "The port inside the container. Below 1024 is refused: a rootless daemon cannot publish it.",
     "容器内的端口。低于 1024 会被拒绝：rootless daemon 无法发布特权端口。"),
    ("host_ip", "Where the server's port is published on the host (an ephemeral port on this address).",
     "服务器端口在主机上发布的地址（该地址上的一个临时端口）。"),
    ("notebook_dir", "Where JupyterLab opens.", "JupyterLab 打开的目录。"),
    ("volumes", "Extra bind mounts `{host_path: container_path}`. The student's own daemon mounts them, so only paths "
     "the student can read work.",
     "额外的绑定挂载 `{主机路径: 容器路径}`。由学生自己的 daemon 挂载，只有学生能读的路径才有效。"),
    ("read_only_volumes", "Like `volumes`, read-only (e.g. a shared data set).",
     "同 `volumes`，但只读（例如共享数据集）。"),
    ("extra_create_kwargs", "Merged into the container request after RootlessGPUSpawner's own values (yours win).",
     "在 RootlessGPUSpawner 自己的参数之后合并到创建容器的请求中（以此处为准）。"),
    ("extra_host_config", "Merged into the container's host config after RootlessGPUSpawner's own values (yours win).",
     "在 RootlessGPUSpawner 自己的参数之后合并到容器的 host config 中（以此处为准）。"),
    ("mem_limit", "Passed to Docker. Ignored by a rootless daemon on cgroup v1, and on cgroup v2 without systemd "
     "delegation (`docker info`: `Cgroup Driver: none`).",
     "传给 Docker。cgroup v1 上、以及没有 systemd 委派的 cgroup v2 上，rootless daemon 会忽略它"
     "（`docker info` 显示 `Cgroup Driver: none`）。"),
    ("cpu_limit", "Like `mem_limit`: works only where the rootless daemon has a cgroup driver.",
     "同 `mem_limit`：只有 rootless daemon 有 cgroup 驱动时才生效。"),
    ("network_name", "Keep `\"bridge\"`. `\"host\"` is the rootless network namespace, not the host's, so nothing "
     "would be published; another network must exist on every student's daemon and turns on `use_internal_ip`.",
     "保持 `\"bridge\"`。`\"host\"` 是 rootless 的网络命名空间而不是主机的，端口不会被发布；其他网络必须在每个学生的 "
     "daemon 上都存在，并且会打开 `use_internal_ip`。"),
    ("use_internal_ip", "Keep `False`: a container's own address is inside the student's network namespace, which the "
     "hub cannot reach.",
     "保持 `False`：容器自己的地址位于学生的网络命名空间内，hub 无法访问。"),
    ("name_template", "The container's name on the student's daemon.", "容器在学生 daemon 上的名称。"),
    ("prefix", "The `{prefix}` in `name_template`.", "`name_template` 中的 `{prefix}`。"),
    ("post_start_cmd", "A command run in the container (`docker exec`) after it starts.",
     "容器启动后在其中执行（`docker exec`）的命令。"),
    ("cmd", "The server command; `--allow-root` is appended when `run_as_root` is on.",
     "服务器命令；`run_as_root` 打开时会追加 `--allow-root`。"),
    ("environment", "Extra environment variables for the container.", "容器的额外环境变量。"),
    ("options_form", "The spawn form.", "启动表单。"),
    ("options_from_form", "Turns the submitted form into `user_options`.", "把提交的表单转换成 `user_options`。"),
    ("start_timeout", "JupyterHub's limit for `start()`, which includes pulling the image.",
     "JupyterHub 给 `start()` 的时限，其中包括拉取镜像。"),
    ("http_timeout", "JupyterHub's limit for the started server to answer.", "JupyterHub 等待已启动的服务器应答的时限。"),
    ("poll_interval", "How often the hub polls each server; a dead container is removed and its GPUs released then.",
     "hub 轮询每个服务器的间隔；已退出的容器在轮询时被删除，其 GPU 随之释放。"),
]

#: Inherited traits that have no effect on RootlessGPUSpawner: (name, en, zh).
INHERITED_IGNORED = [
    ("client_kwargs", "Each student's daemon gets its own client, built from `docker_host_template`.",
     "每个学生的 daemon 各有一个客户端，由 `docker_host_template` 决定。"),
    ("tls_config", "Same: the per-student clients use no TLS settings.", "同上：每个学生的客户端不使用 TLS 设置。"),
    ("mounts", "Not passed to the container request; use `volumes` / `read_only_volumes`.",
     "不会传入创建容器的请求；请用 `volumes` / `read_only_volumes`。"),
    ("links", "Not passed to the container request.", "不会传入创建容器的请求。"),
]

TEXT = {
    "en": {
        "title": "Configuration reference",
        "intro": [
            "<!-- Generated by scripts/gen_config_reference.py from the code. Do not edit by hand. -->",
            "",
            "Every setting of `RootlessGPUSpawner`, generated from the traits' `help=` text by",
            "`scripts/gen_config_reference.py` (CI fails when this page differs from what the code produces:",
            "`python scripts/gen_config_reference.py --check`). Set them in `jupyterhub_config.py` as",
            "`c.RootlessGPUSpawner.NAME = value`. Inherited settings may also be given as `c.DockerSpawner.NAME`",
            "or `c.Spawner.NAME`; the most specific section wins. [中文](../zh/config-reference.md)",
        ],
        "summary": "Summary",
        "own": f"{CLASS_NAME}'s own settings",
        "inherited": "Inherited settings that matter here",
        "inherited_intro": [
            "These come from DockerSpawner or JupyterHub's `Spawner`; the note says how RootlessGPUSpawner uses",
            "them. For their full description see the",
            "[DockerSpawner](https://jupyterhub-dockerspawner.readthedocs.io/en/latest/api/index.html) and",
            "[JupyterHub Spawner](https://jupyterhub.readthedocs.io/en/stable/reference/api/spawner.html) references.",
            "Settings not listed here keep DockerSpawner's meaning.",
        ],
        "ignored": "Inherited settings with no effect here",
        "col_setting": "setting", "col_type": "type", "col_default": "default",
        "col_defined": "defined by", "col_note": "note",
        "type": "Type: ", "default": "Default: ",
    },
    "zh": {
        "title": "配置参考",
        "intro": [
            "<!-- 由 scripts/gen_config_reference.py 根据代码生成，请勿手工修改。 -->",
            "",
            "`RootlessGPUSpawner` 的全部设置，由 `scripts/gen_config_reference.py` 根据代码中各 trait 的 `help=`",
            "生成（本页与代码生成结果不一致时 CI 会失败：`python scripts/gen_config_reference.py --check`）。",
            "在 `jupyterhub_config.py` 中写作 `c.RootlessGPUSpawner.名称 = 值`；继承来的设置也可以写成",
            "`c.DockerSpawner.名称` 或 `c.Spawner.名称`，以最具体的类为准。每项先给出中文摘要，下面的说明文字",
            "（help）直接取自代码，保持英文原文。[English](../en/config-reference.md)",
        ],
        "summary": "一览",
        "own": f"{CLASS_NAME} 自身的设置",
        "inherited": "继承来的、在这里需要注意的设置",
        "inherited_intro": [
            "这些设置来自 DockerSpawner 或 JupyterHub 的 `Spawner`，说明一栏写的是 RootlessGPUSpawner 如何使用它们。",
            "完整说明见 [DockerSpawner](https://jupyterhub-dockerspawner.readthedocs.io/en/latest/api/index.html)",
            "和 [JupyterHub Spawner](https://jupyterhub.readthedocs.io/en/stable/reference/api/spawner.html) 的文档。",
            "这里没有列出的设置保持 DockerSpawner 原有含义。",
        ],
        "ignored": "继承来的、在这里不起作用的设置",
        "col_setting": "设置", "col_type": "类型", "col_default": "默认值",
        "col_defined": "定义于", "col_note": "说明",
        "type": "类型：", "default": "默认值：",
        "no_summary": "（暂无中文摘要，见下方英文说明。）",
    },
}


# ---------------------------------------------------------------------------
# Traits -> text
# ---------------------------------------------------------------------------


class GeneratorError(RuntimeError):
    pass


def dynamic_default(cls, name: str) -> str | None:
    """``Class.method`` of the ``@default`` method that computes ``name``'s default, or None.

    Walks the MRO: a handler found before the class that defines the trait wins.
    """
    for klass in cls.__mro__:
        for value in vars(klass).values():
            if isinstance(value, DefaultHandler) and value.trait_name == name:
                return f"{klass.__name__}.{value.func.__name__}"
        legacy = vars(klass).get(f"_{name}_default")
        if callable(legacy):
            return f"{klass.__name__}._{name}_default"
        if isinstance(vars(klass).get(name), TraitType):
            return None
    return None


def defining_class(cls, name: str) -> str:
    for klass in cls.__mro__:
        if isinstance(vars(klass).get(name), TraitType):
            return klass.__name__
    raise GeneratorError(f"{name} is not a trait of {cls.__name__}")


def type_text(trait, name: str | None = None) -> str:
    if name in TYPE_OVERRIDES:
        return TYPE_OVERRIDES[name]
    if isinstance(trait, Union):
        return " or ".join(type_text(t) for t in trait.trait_types)
    if isinstance(trait, CaselessStrEnum):
        return "one of " + ", ".join(f'`"{v}"`' for v in trait.values) + " (case-insensitive)"
    if isinstance(trait, Enum):
        return "one of " + ", ".join(f"`{v!r}`" for v in trait.values)
    if isinstance(trait, Bool):
        return "bool"
    if type(trait).__name__ == "ByteSpecification":
        return 'bytes (int, or str such as `"2G"`)'
    if isinstance(trait, Int):
        return "int"
    if isinstance(trait, Float):
        return "float"
    if type(trait).__name__ == "UnicodeOrFalse":
        return "str or `False`"
    if isinstance(trait, Unicode):
        return "str"
    if type(trait).__name__ == "Command":
        return "list of str, or `None`"
    if isinstance(trait, List):
        inner = getattr(trait, "_trait", None)
        return f"list of {type_text(inner)}" if inner is not None else "list"
    if isinstance(trait, Dict):
        key = getattr(trait, "_key_trait", None)
        value = getattr(trait, "_value_trait", None)
        if key is not None or value is not None:
            return f"dict ({type_text(key) if key is not None else 'any'} → " \
                   f"{type_text(value) if value is not None else 'any'})"
        return "dict"
    if isinstance(trait, Callable) or type(trait).__name__ == "Callable":  # jupyterhub.traitlets has its own
        return "callable"
    if isinstance(trait, Any):
        return "any (see the description)"
    raise GeneratorError(f"no type description for {type(trait).__name__}")


def literal(value) -> str:
    """A Python literal for a static default, deterministic and without addresses."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', '?')}"
    raise GeneratorError(f"cannot render default {type(value).__name__}")


def default_text(name: str, trait, lang: str) -> str:
    if name in DESCRIBED_DEFAULTS:
        return DESCRIBED_DEFAULTS[name][LANGS.index(lang)]
    where = dynamic_default(CLASS, name)
    if where:
        raise GeneratorError(
            f"{name}'s default is computed at run time by {where}: describe it in DESCRIBED_DEFAULTS "
            "(the page must not show values of the machine it was generated on)"
        )
    text = literal(trait.default())
    if re.search(r"0x[0-9a-fA-F]{6,}", text):
        raise GeneratorError(f"{name}'s default renders with a memory address: {text}")
    return f"`{text}`"


def help_markdown(help_text: str) -> str:
    """traitlets help (reST-ish) -> Markdown: ``x`` -> `x`, ``::`` + indented block -> fenced code."""
    text = textwrap.dedent(help_text.strip("\n")).strip()
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith((" ", "\t")) and (not out or out[-1] == ""):
            block = []
            while i < len(lines) and (lines[i].startswith((" ", "\t")) or not lines[i].strip()):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["```python", *textwrap.dedent("\n".join(block)).splitlines(), "```"]
            if i < len(lines):
                out.append("")
            continue
        if line.rstrip().endswith("::"):
            stripped = line.rstrip()[:-2].rstrip()
            line = stripped + ":" if stripped else ""
        out.append(re.sub(r"``(.+?)``", r"`\1`", line))
        i += 1
    return "\n".join(out).strip()


def own_traits_in_source_order():
    """(group, name, trait) for every configurable trait defined on the class, in source order."""
    own = CLASS.class_own_traits(config=True)
    # The spawner and the classes of this package it inherits (SpawnerConfig declares the settings).
    ours = [k for k in CLASS.__mro__ if k.__module__.split(".")[0] == CLASS.__module__.split(".")[0]]
    source = "\n".join(inspect.getsource(k) for k in reversed(ours))
    group = "other"
    seen = []
    for line in source.splitlines():
        m = re.match(r"\s*# -+ (.+?) -+\s*$", line)
        if m:
            group = m.group(1).strip()
            continue
        m = re.match(r"    (\w+) = \w+\(", line)
        if m and m.group(1) in own and m.group(1) not in {n for _, n, _ in seen}:
            seen.append((group, m.group(1), own[m.group(1)]))
    missing = sorted(set(own) - {n for _, n, _ in seen})
    seen += [("other", name, own[name]) for name in missing]
    return seen


def group_title(group: str, lang: str) -> str:
    titles = GROUP_TITLES.get(group)
    if titles:
        return titles[LANGS.index(lang)]
    return group[:1].upper() + group[1:]


def slug(text: str) -> str:
    """GitHub's heading anchor for plain text (enough for titles without markup)."""
    import unicodedata

    kept = "".join(
        ch for ch in text.lower()
        if ch in " -_" or unicodedata.category(ch)[0] in "LMN"
    )
    return kept.replace(" ", "-")


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(lang: str) -> str:
    t = TEXT[lang]
    traits = own_traits_in_source_order()
    names = {name for _, name, _ in traits}
    for group in {g for g, _, _ in traits}:
        if slug(group_title(group, lang)) in names:
            raise GeneratorError(f"section title {group_title(group, lang)!r} has the same anchor as a setting")
    out = [f"# {t['title']}", "", *t["intro"], ""]

    out += [f"## {t['summary']}", "", f"| {t['col_setting']} | {t['col_type']} | {t['col_default']} |", "|---|---|---|"]
    for _group, name, trait in traits:
        out.append(f"| [`{name}`](#{name}) | {md_cell(type_text(trait, name))} | {md_cell(default_text(name, trait, lang))} |")
    out.append("")

    out += [f"## {t['own']}", ""]
    current = None
    for group, name, trait in traits:
        if group != current:
            current = group
            out += [f"### {group_title(group, lang)}", ""]
        out += [f"#### `{name}`", ""]
        if lang == "zh":
            out += [ZH_SUMMARY.get(name, t["no_summary"]), ""]
        out += [
            f"- {t['type']}{type_text(trait, name)}",
            f"- {t['default']}{default_text(name, trait, lang)}",
            "",
            help_markdown(trait.help or ""),
            "",
        ]

    all_traits = CLASS.class_traits(config=True)
    out += [f"## {t['inherited']}", "", *t["inherited_intro"], ""]
    out += [f"| {t['col_setting']} | {t['col_type']} | {t['col_default']} | {t['col_defined']} | {t['col_note']} |",
            "|---|---|---|---|---|"]
    for name, en, zh in INHERITED_USED:
        if name not in all_traits:
            raise GeneratorError(f"inherited trait {name} no longer exists: update INHERITED_USED")
        trait = all_traits[name]
        note = en if lang == "en" else zh
        out.append(
            f"| `{name}` | {md_cell(type_text(trait, name))} | {md_cell(default_text(name, trait, lang))} | "
            f"{defining_class(CLASS, name)} | {md_cell(note)} |"
        )
    out.append("")

    out += [f"## {t['ignored']}", "", f"| {t['col_setting']} | {t['col_defined']} | {t['col_note']} |", "|---|---|---|"]
    for name, en, zh in INHERITED_IGNORED:
        if name not in all_traits:
            raise GeneratorError(f"inherited trait {name} no longer exists: update INHERITED_IGNORED")
        out.append(f"| `{name}` | {defining_class(CLASS, name)} | {md_cell(en if lang == 'en' else zh)} |")
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lang", choices=LANGS, help="only this language (default: both)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the checked-in pages; exit 1 with a diff when they differ")
    parser.add_argument("--stdout", action="store_true", help="print instead of writing the file(s)")
    args = parser.parse_args(argv)
    langs = [args.lang] if args.lang else list(LANGS)
    try:
        pages = {lang: render(lang) for lang in langs}
    except GeneratorError as e:
        print(f"gen_config_reference: {e}", file=sys.stderr)
        return 2
    if args.stdout:
        for lang in langs:
            sys.stdout.write(pages[lang])
        return 0
    if args.check:
        stale = 0
        for lang in langs:
            path = out_path(lang)
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != pages[lang]:
                stale += 1
                rel = path.relative_to(ROOT)
                sys.stdout.writelines(difflib.unified_diff(
                    current.splitlines(keepends=True), pages[lang].splitlines(keepends=True),
                    fromfile=f"{rel} (checked in)", tofile=f"{rel} (from the code)",
                ))
                print(f"\n{rel} is stale: run 'python scripts/gen_config_reference.py' and commit the result.",
                      file=sys.stderr)
        return 1 if stale else 0
    for lang in langs:
        path = out_path(lang)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pages[lang], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
