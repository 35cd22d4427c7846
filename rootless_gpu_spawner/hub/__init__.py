"""What runs inside the hub's event loop: the student's daemon connection and pool, images and
pulls, registry mirrors, GPUs and their allocator, spawn options (validation and form), the
container request, and startup (progress, admission, readiness).

Imports only the core package (``rootless_gpu_spawner.*`` top-level modules), never ``host`` or
``admin``, and never starts a process.
"""
