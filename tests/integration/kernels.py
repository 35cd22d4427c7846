"""Run code in a user's kernel as a notebook does: REST to start it, the kernel's websocket to execute."""

from __future__ import annotations

import asyncio
import json
import uuid

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


def run_in_kernel(hub, user: str, code: str, timeout: float = 60) -> str:
    """Start a kernel on ``user``'s server, run ``code``, return its stdout; the kernel is deleted after."""
    headers = {"Authorization": f"token {hub.token}"}
    base = f"{hub.url}/user/{user}/api/kernels"
    r = requests.post(base, json={"name": "python3"}, headers=headers, timeout=60)
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    try:
        return asyncio.run(asyncio.wait_for(_execute(hub, user, kernel, code), timeout))
    finally:
        requests.delete(f"{base}/{kernel}", headers=headers, timeout=60)


async def _execute(hub, user: str, kernel: str, code: str) -> str:
    url = hub.url.replace("http://", "ws://") + f"/user/{user}/api/kernels/{kernel}/channels"
    request = HTTPRequest(url, headers={"Authorization": f"token {hub.token}"})
    ws = await websocket_connect(request)
    msg_id = uuid.uuid4().hex
    session = uuid.uuid4().hex
    ws.write_message(json.dumps({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": session, "username": user,
                   "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    out, error = [], None
    try:
        for _ in range(10000):  # bounded: a reply comes long before
            raw = await ws.read_message()
            if raw is None:
                raise AssertionError("the kernel's websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg.get("msg_type") or msg["header"]["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                error = "\n".join(msg["content"].get("traceback", [])) or msg["content"].get("evalue")
            elif kind == "status" and msg["content"].get("execution_state") == "idle":
                break
    finally:
        ws.close()
    if error:
        raise AssertionError(f"the kernel raised: {error}")
    return "".join(out)
