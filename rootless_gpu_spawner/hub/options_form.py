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
    own_images: list = field(default_factory=list)  # [OwnImage] on the student's daemon (checked)
    own_note: str = ""  # why the student's own images could not be listed (printable)


def _gpu_choice(choices: FormChoices) -> bool:
    # Under exclusive the field stays even when nothing is free: "No GPU" is always a choice.
    return choices.max_count > 0 or choices.allow_all or (
        choices.gpu_policy == "exclusive" and bool(choices.gpus)
    )


def _image_choice(choices: FormChoices) -> bool:
    return len(choices.images) + len(choices.own_images) > 1 or bool(choices.own_note)


def needs_form(choices: FormChoices) -> bool:
    return _image_choice(choices) or _gpu_choice(choices)


def render_form(choices: FormChoices) -> str:
    parts = []
    if _image_choice(choices):
        parts.append(_image_field(choices))
    if _gpu_choice(choices):
        parts.append(_gpu_count_field(choices))
        if choices.gpu_policy == "exclusive" and choices.gpus:
            parts.append(_gpu_pick_field(choices))
    return "\n".join(parts)


def _image_field(choices: FormChoices) -> str:
    """The admin's images, then the student's own (value: their name; label: name, size, age)."""
    admin = "".join(
        f'<option value="{escape(label)}"{" selected" if image == choices.default_image else ""}>'
        f"{escape(label)}</option>"
        for label, image in choices.images.items()
    ) or f'<option value="" selected>{escape(choices.default_image)}</option>'
    options = admin
    if choices.own_images:
        own = "".join(
            f'<option class="rgs-own-image" value="{escape(image.name)}">{escape(image.describe())}</option>'
            for image in choices.own_images
        )
        options = (
            f'<optgroup label="Lab images / 实验室镜像">{admin}</optgroup>'
            f'<optgroup id="rgs-own-images" label="Your own images / 你自己的镜像">{own}</optgroup>'
        )
    note = f'<p class="help-block" id="rgs-own-note">{escape(choices.own_note)}</p>' if choices.own_note else ""
    return (
        '<div class="form-group">'
        '<label for="rgs-image">Image / 镜像</label>'
        f'<select class="form-control" name="image" id="rgs-image">{options}</select>'
        f"{note}</div>"
    )


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


def parse_form(formdata: dict, images: dict, own_allowed: bool = False) -> dict:
    """Turn submitted form fields (lists of strings) into ``user_options``.

    Only shape is checked here (one value, a number); limits, ids and the
    allow-list are checked by the same validation the REST API goes through.
    With ``own_allowed`` another name is one of the student's own images: its
    name is checked by that validation, its presence on the daemon at start.
    """
    options = {}
    label = _single(formdata, "image")
    if label:
        if label not in images and not own_allowed:
            raise web.HTTPError(400, f"image {label[:100]!r} is not one of the choices")
        options["image"] = label  # the allow-list key (as in DockerSpawner), or an own image's name
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
