"""Synchronous, root-side work on the host: safe file I/O as root, running commands, /proc and
signals, the daemon's prerequisites, daemon.json, starting/stopping/inspecting each student's
rootless dockerd, the systemd user service, the NVIDIA container-toolkit config, workspaces.

Imports only the core package, never ``hub`` or ``admin``.
"""
