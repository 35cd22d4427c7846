"""The spawner's options: the student's GPU limit, ``user_options`` validation, the image,
and the spawn form's choices.  The rules live in :mod:`.user_options` and :mod:`.options_form`;
:class:`SpawnOptions` (a mixin of :class:`~rootless_gpu_spawner.spawner.RootlessGPUSpawner`)
applies them to this server's settings.  The ``@default`` hooks JupyterHub reads stay on the
spawner class itself.
"""

from __future__ import annotations

import asyncio

from docker.errors import APIError

from ..errors import SpawnRefused
from ..safetext import printable
from . import gpu_alloc
from .images import InvalidImageReference, parse_image_reference
from .options_form import FormChoices, needs_form, parse_form, render_form
from .own_images import OwnImage, OwnImagePolicy, own_images_from_answer
from .pulls import PullResult
from .user_options import GPUPolicy, student_gpu_limit, validate_user_options


class SpawnOptions:
    """Options, validation and the form for one server (a mixin of RootlessGPUSpawner)."""

    def gpu_limit(self):
        """This student's GPU limit: the largest of their groups' limits, else max_gpus_per_user."""
        groups = [getattr(g, "name", g) for g in (getattr(self.user, "groups", None) or [])]
        return student_gpu_limit(groups, self.group_gpu_limits, self.max_gpus_per_user)

    def gpu_settings(self) -> GPUPolicy:
        return GPUPolicy(self.gpu_policy, self.gpus, self.gpu_limit(), list(self.gpu_ids))

    def validated_user_options(self, options=None) -> dict:
        """Check ``user_options`` (form or REST API); HTTP 400 on anything wrong."""
        options = self.user_options if options is None else options
        return validate_user_options(
            options, self.gpu_settings(), self._get_allowed_images(), self.own_image_policy()
        )

    def default_gpu_request(self):
        return self.gpu_settings().default_request

    async def _resolve_image(self, requested: str | None):
        image = self.image
        self._own_image = bool(requested) and self.own_image_policy().enabled and not self._is_admin_image(requested)
        if self._own_image:
            image = requested  # checked by validated_user_options; on the daemon: own_image_present
        elif requested:
            # DockerSpawner's allow-list check (raises HTTP 400), then our grammar.
            image = await self.check_allowed(requested)
        try:
            return parse_image_reference(image)
        except InvalidImageReference as e:
            status = 400 if requested else 500
            raise SpawnRefused(status, str(e)) from None

    # ---- the student's own images (hub/own_images.py) ----------------------------------

    _own_image = False  # this start uses one of the student's own images (never pulled)

    def own_image_policy(self) -> OwnImagePolicy:
        return OwnImagePolicy(bool(self.allow_own_images), tuple(self.own_image_patterns))

    def _is_admin_image(self, requested: str) -> bool:
        allowed = self._get_allowed_images()
        return allowed == "*" or requested in (allowed or {})

    async def own_image_present(self, ref, account) -> PullResult:
        """The student's own image is on their daemon (it is never pulled), or HTTP 400."""
        try:
            await self.docker("inspect_image", ref.familiar)
        except APIError as e:
            if e.status_code != 404:
                raise
            raise SpawnRefused(
                400,
                f"image {ref.familiar!r} is not one of the allowed images, nor an image on your own "
                f"Docker ({account.name}'s daemon has no image of that name). Choose one in the spawn "
                "form, or save your environment first (the 'Save environment' page).",
            ) from None
        return PullResult(ref.familiar)

    async def list_own_images(self) -> tuple[list[OwnImage], str]:
        """The student's images they may start (checked, at most 200) and a note when none could be read."""
        policy = self.own_image_policy()
        if not policy.enabled:
            return [], ""
        borrowed = self._connection is None
        docker_host = self.docker_host
        try:
            if borrowed:
                await self.connect(docker_host or None, check_rootless=not self.active)
            answer = await self.docker("images")
        except (SpawnRefused, APIError) as e:
            return [], f"Your own images could not be listed: {printable(e, 300)}"
        finally:
            if borrowed and not self.active:
                self._disconnect()
                self.docker_host = docker_host
        return own_images_from_answer(answer, policy, self.admin_image_names()), ""

    def admin_image_names(self) -> set:
        """The admin's ``allowed_images`` as ``docker images`` names them (not listed again as own).

        Not ``image``: DockerSpawner sets it to the student's last choice.
        """
        names = set()
        for image in self._image_choices().values():
            try:
                names.add(parse_image_reference(image).familiar)
            except (InvalidImageReference, TypeError):
                continue
        return names

    def hub_env_keys(self) -> list:
        """The variables the hub sets in a server's container (emptied in a saved environment)."""
        return list(self.get_env())

    def _image_choices(self) -> dict:
        allowed = self._get_allowed_images()
        return {} if allowed == "*" else dict(allowed or {})

    async def form_choices(self) -> FormChoices:
        gpus, free = [], []
        if self.gpu_policy == "exclusive":
            allocator = await self._allocator_with_inventory()
            free = allocator.free()
            gpus = await asyncio.to_thread(gpu_alloc.gpu_details, allocator.inventory)
            limit = self.gpu_limit()
            held = allocator.held_by_user(self.user.name)
            max_count = min(len(free), (limit - held) if limit is not None else len(free))
            allow_all = False
        else:
            ceiling = self.gpus
            limit = self.gpu_limit()
            known = len(self.gpu_ids)
            if ceiling == "all":
                max_count = known if limit is None else (min(limit, known) if known else limit)
            else:
                max_count = ceiling if isinstance(ceiling, int) else len(ceiling)
                if limit is not None:
                    max_count = min(max_count, limit)
            allow_all = ceiling == "all" and limit is None
        own, own_note = await self.list_own_images()
        return FormChoices(
            images=self._image_choices(),
            own_images=own,
            own_note=own_note,
            default_image=self.image,
            gpu_policy=self.gpu_policy,
            max_count=max(0, max_count),
            default_gpus=self.default_gpu_request(),
            allow_all=allow_all,
            gpus=gpus,
            free=free,
        )

    async def render_options_form(self) -> str:
        choices = await self.form_choices()
        return render_form(choices) if needs_form(choices) else ""

    def options_from_formdata(self, formdata) -> dict:
        """The form's answer, checked by the same validation as REST API ``user_options``."""
        options = parse_form(formdata, self._image_choices(), own_allowed=self.own_image_policy().enabled)
        self.validated_user_options(options)
        return options
