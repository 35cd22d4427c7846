"""Test and benchmark helpers shared by tests/ and bench/ (not installed by pip).

- :mod:`testkit.testbed`: the machine-global rootless testbed (users, their daemons, the local
  registry as the Docker Hub mirror, the lab image); ``python -m tests.testbed up|down|status``
  runs it.
- :mod:`testkit.hub`: a real JupyterHub with configurable-http-proxy on 127.0.0.1.
"""
