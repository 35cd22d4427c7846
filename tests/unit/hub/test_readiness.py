"""readiness.wait_until_answering: any HTTP answer is "up"; nothing listening is a bounded wait."""

import socket
import time

from tornado.web import Application, RequestHandler

from rootless_gpu_spawner.hub.readiness import wait_until_answering


class Forbidden(RequestHandler):
    def get(self):
        self.set_status(403)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_403_counts_as_answering():
    port = free_port()
    server = Application([(r"/.*", Forbidden)]).listen(port, "127.0.0.1")
    try:
        assert await wait_until_answering(f"http://127.0.0.1:{port}/api", 5) is True
    finally:
        server.stop()


async def test_nothing_listening_ends_after_the_timeout():
    port = free_port()
    start = time.monotonic()
    assert await wait_until_answering(f"http://127.0.0.1:{port}/api", 0.3) is False
    assert time.monotonic() - start < 5


async def test_a_watch_that_raises_ends_the_wait_at_once():
    port = free_port()
    calls = []

    async def exited():
        calls.append(1)
        raise RuntimeError("the container exited")

    start = time.monotonic()
    try:
        await wait_until_answering(f"http://127.0.0.1:{port}/api", 60, watch=exited)
    except RuntimeError as e:
        assert str(e) == "the container exited"
    else:
        raise AssertionError("the watch's error did not end the wait")
    assert calls == [1] and time.monotonic() - start < 30
