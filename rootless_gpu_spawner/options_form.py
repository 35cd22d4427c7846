"""The spawn options form: what a student may choose (image, GPUs), as HTML and back.

Pure functions: the spawner gathers the facts (allowed images, limits, free
GPUs), this module renders them and turns the submitted form back into
``user_options``, which then go through the same validation as the REST API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

from tornado import web


@dataclass
class FormChoices:
    images: dict  # label -> image ({} when the student cannot choose)
    default_image: str
    gpu_policy: str  # "shared" | "exclusive"
    max_count: int  # largest GPU count the student may ask for now
    default_gpus: object  # "all", a count, or a list of ids
    allow_all: bool = False  # shared policy with gpus="all": offer "all GPUs"
    gpus: list = field(default_factory=list)  # [GPUInfo] known on the host (may be empty)
    free: list = field(default_factory=list)  # ids free now (exclusive)


def _gpu_choice(choices: FormChoices) -> bool:
    # Under exclusive the field stays even when nothing is free: "No GPU" is always a choice.
    return choices.max_count > 0 or choices.allow_all or (
        choices.gpu_policy == "exclusive" and bool(choices.gpus)
    )


def needs_form(choices: FormChoices) -> bool:
    return len(choices.images) > 1 or _gpu_choice(choices)


def render_form(choices: FormChoices) -> str:
    parts = []
    if len(choices.images) > 1:
        options = "".join(
            f'<option value="{escape(label)}"{" selected" if image == choices.default_image else ""}>'
            f"{escape(label)}</option>"
            for label, image in choices.images.items()
        )
        parts.append(
            '<div class="form-group">'
            '<label for="rgs-image">Image / 镜像</label>'
            f'<select class="form-control" name="image" id="rgs-image">{options}</select>'
            "</div>"
        )
    if _gpu_choice(choices):
        parts.append(_gpu_count_field(choices))
        if choices.gpu_policy == "exclusive" and choices.gpus:
            parts.append(_gpu_pick_field(choices))
    return "\n".join(parts)


def _gpu_count_field(choices: FormChoices) -> str:
    default = choices.default_gpus
    options = []
    if choices.allow_all:
        options.append(("all", "All GPUs / 全部 GPU", default == "all"))
    for n in range(0, choices.max_count + 1):
        label = "No GPU / 不使用 GPU" if n == 0 else f"{n} GPU" + ("s" if n > 1 else "") + f" / {n} 块 GPU"
        options.append((str(n), label, default == n or (n == 0 and not _offered(default, choices))))
    html_options = "".join(
        f'<option value="{v}"{" selected" if sel else ""}>{escape(label)}</option>'
        for v, label, sel in options
    )
    note = ""
    if choices.gpu_policy == "exclusive":
        total = len(choices.gpus) or "?"
        note = (
            f'<p class="help-block" id="rgs-gpu-free">{len(choices.free)} of {total} GPUs free now; '
            "each GPU is yours alone while your server runs. / "
            f"当前空闲 {len(choices.free)} / {total} 块 GPU，运行期间独占。</p>"
        )
    return (
        '<div class="form-group">'
        '<label for="rgs-gpus">GPUs / GPU 数量</label>'
        f'<select class="form-control" name="gpus" id="rgs-gpus">{html_options}</select>'
        f"{note}</div>"
    )


def _offered(default, choices: FormChoices) -> bool:
    """Is the default among the counts shown? (If not, preselect "No GPU".)"""
    if default == "all":
        return choices.allow_all
    return isinstance(default, int) and default <= choices.max_count


def _gpu_pick_field(choices: FormChoices) -> str:
    rows = []
    for gpu in choices.gpus:
        free = gpu.id in choices.free
        state = "free / 空闲" if free else "in use / 已占用"
        rows.append(
            '<div class="checkbox"><label>'
            f'<input type="checkbox" name="gpu_ids" value="{escape(gpu.id)}"'
            f'{"" if free else " disabled"}> {escape(gpu.describe())} — {state}'
            "</label></div>"
        )
    return (
        '<fieldset class="form-group"><legend style="font-size:inherit">'
        "Or pick specific GPUs (overrides the count) / 或指定 GPU</legend>"
        + "".join(rows)
        + "</fieldset>"
    )


def parse_form(formdata: dict, images: dict) -> dict:
    """Turn submitted form fields (lists of strings) into ``user_options``.

    Only shape is checked here (one value, a number); limits, ids and the
    allow-list are checked by the same validation the REST API goes through.
    """
    options = {}
    label = _single(formdata, "image")
    if label:
        if label not in images:
            raise web.HTTPError(400, f"image {label[:100]!r} is not one of the choices")
        options["image"] = label  # the allow-list key, as in DockerSpawner's user_options
    picked = [v for v in formdata.get("gpu_ids", []) if v]
    if picked:
        options["gpus"] = picked
    else:
        count = _single(formdata, "gpus")
        if count:
            if count != "all" and not (count.isascii() and count.isdigit()):
                raise web.HTTPError(400, f"GPU count {count[:20]!r} is not a number")
            options["gpus"] = count if count == "all" else int(count)
    return options


def _single(formdata: dict, key: str):
    values = formdata.get(key) or []
    if len(values) > 1:
        raise web.HTTPError(400, f"form field {key!r} was sent {len(values)} times")
    return values[0].strip() if values else None
