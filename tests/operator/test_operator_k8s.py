"""conveyor_operator.k8s on its own: the Api's blocking calls made with aiohttp on another
thread's event loop (kopf's, in the operator), the credentials read with kopf's loaders, a
401 answered by reading them again. Against a small aiohttp server; the e2e tests cover the
Api against the emulator with a real kopf."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from aiohttp import web

from conveyor_operator import k8s, state
from conveyor_operator.k8s import Api, ApiError


class Server:
    """An event loop in a thread (kopf's, for the Api) serving a few API paths; only
    ``accepted`` bearer tokens get an answer other than 401."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.accepted = {"Bearer good"}
        self.seen: list[tuple[str, str, str, dict[str, str], str]] = []
        self.url = self.call(self._start())

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.seen.append((request.method, request.path, auth, dict(request.query),
                          request.headers.get("Content-Type", "")))
        if auth not in self.accepted:
            return web.json_response({"reason": "Unauthorized", "message": "who are you"}, status=401)
        if request.path.endswith("/missing"):
            return web.json_response({"reason": "NotFound", "message": "no such thing"}, status=404)
        body = await request.json() if request.can_read_body else None
        return web.json_response({"path": request.path, "body": body})

    def stop(self) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()


def api_with(server: Server, *tokens: str) -> Api:
    """An Api whose credentials are ``tokens``, one per read (the last one stays)."""
    left = list(tokens)

    def credentials() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server.url, token=left.pop(0) if len(left) > 1 else left[0])
    return Api(server.loop, credentials, timeout=5)


def test_calls_block_in_the_caller_and_run_on_the_loop_with_the_credentials(server: Server) -> None:
    api = api_with(server, "good")
    assert api.get("v1", "ConfigMap", "a", "c") == {"path": "/api/v1/namespaces/a/configmaps/c", "body": None}
    assert api.get("v1", "ConfigMap", "a", "missing") is None
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "a"}}
    assert api.apply(obj)["body"] == obj
    apply = server.seen[-1]
    assert apply[:3] == ("PATCH", "/apis/apps/v1/namespaces/a/deployments/d", "Bearer good")
    assert apply[3] == {"fieldManager": "conveyor-operator", "force": "true"}
    assert apply[4] == "application/apply-patch+yaml"
    server.call(api.close())


def test_a_401_reads_the_credentials_again_and_retries_once(server: Server) -> None:
    api = api_with(server, "rotated-away", "good")
    assert api.get("v1", "ConfigMap", "a", "c") is not None
    assert [s[2] for s in server.seen] == ["Bearer rotated-away", "Bearer good"]
    assert api.connection.token == "good"
    server.seen.clear()
    bad = api_with(server, "bad")  # the same credentials again: no second try
    with pytest.raises(ApiError) as caught:
        bad.get("v1", "ConfigMap", "a", "c")
    assert caught.value.status == 401 and len(server.seen) == 1
    server.call(api.close())
    server.call(bad.close())


def test_calls_on_the_loop_itself_and_after_close_fail_at_once(server: Server) -> None:
    api = api_with(server, "good")

    async def on_loop() -> None:
        api.get("v1", "ConfigMap", "a", "c")
    with pytest.raises(RuntimeError, match="event loop"):
        server.call(on_loop())
    server.call(api.close())
    with pytest.raises(ApiError, match="shutting down"):
        api.get("v1", "ConfigMap", "a", "c")


def test_login_reads_the_kubeconfig_and_fails_without_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text("apiVersion: v1\nkind: Config\ncurrent-context: c\n"
                      "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
                      "clusters: [{name: k, cluster: {server: 'https://k.example:6443'}}]\n"
                      "users: [{name: u, user: {token: t0}}]\n")
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: None)  # as outside a pod
    info = k8s.login(kopf.OperatorSettings())
    assert (info.server, info.token) == ("https://k.example:6443", "t0")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(kopf.LoginError, match="kubeconfig"):
        k8s.login(kopf.OperatorSettings())


def test_handlers_find_the_state_only_once_startup_put_it_in_the_memo() -> None:
    with pytest.raises(RuntimeError, match="startup"):
        state.of(kopf.Memo())
