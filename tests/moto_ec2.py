"""A local EC2 for tests: a moto server on a free loopback port that answers like EC2.

The real libcloud EC2 driver talks to it over HTTP, so tests exercise libcloud's request signing,
query encoding and XML parsing. Every request libcloud sends is recorded (action and parameters
as they arrived) so tests can assert on what reached "EC2"; the boto3 back door tests use to read
what EC2 stored is not recorded.

Two corrections make moto's answers byte-compatible with EC2 for libcloud (moto's newer response
serializer differs from the real service here): real EC2 sends the default namespace
``http://ec2.amazonaws.com/doc/2016-11-15/`` *with* the trailing slash, and error documents
(``<Response><Errors>...``) *without* a namespace. libcloud's XPath lookups depend on both.

The same server answers Elastic Load Balancing (classic ELB, API 2012-06-01): moto routes by the
service named in the SigV4 signature. libcloud's ELB driver posts to ``/2012-06-01/``, which the
real endpoint accepts and moto routes only as ``/``; the path is rewritten before moto sees it.
"""

from __future__ import annotations

import base64
import io
import re
import threading
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import boto3  # type: ignore[import-untyped]
from moto.moto_server import werkzeug_app
from werkzeug.serving import make_server

from healer.config import SecretRef
from providers.libcloud_generic import LibcloudProvider

REGION = "us-east-1"
_NS_BARE = b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15"'
_NS_EC2 = b'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'
_ERROR_ROOT = re.compile(rb"<Response xmlns=\"[^\"]*\">")
_ELB_PATH = "/2012-06-01/"

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class WireRequest:
    method: str
    action: str | None
    params: dict[str, str]  # query string and form body, as EC2 received them
    service: str = "ec2"  # or "elb" (classic Elastic Load Balancing)


class _EC2Wire:
    """WSGI middleware around moto: records requests, fixes the response namespaces."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.requests: list[WireRequest] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        # Hand moto the body we consumed.
        environ["wsgi.input"] = io.BytesIO(body)
        service = "ec2"
        if environ.get("PATH_INFO") == _ELB_PATH:
            environ["PATH_INFO"] = "/"
            service = "elb"
        params = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        if body and "form-urlencoded" in environ.get("CONTENT_TYPE", ""):
            params.update({k: v[-1] for k, v in parse_qs(body.decode()).items()})
        if environ.get("HTTP_USER_AGENT", "").startswith("libcloud/"):
            with self._lock:
                self.requests.append(
                    WireRequest(environ["REQUEST_METHOD"], params.get("Action"), params, service)
                )

        captured: dict[str, Any] = {}

        def _start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        chunks = self.app(environ, _start)
        try:
            out = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        out = _ERROR_ROOT.sub(b"<Response>", out).replace(_NS_BARE, _NS_EC2)
        headers = [
            (k, str(len(out)) if k.lower() == "content-length" else v)
            for k, v in captured["headers"]
        ]
        start_response(captured["status"], headers)
        return [out]


class Ec2Emulator:
    """A moto EC2 endpoint on 127.0.0.1 with a request log and a boto3 back door."""

    def __init__(self) -> None:
        self.wire = _EC2Wire(
            werkzeug_app.DomainDispatcherApplication(werkzeug_app.create_backend_app)
        )
        self._server = make_server(
            "127.0.0.1", 0, self.wire, True, request_handler=werkzeug_app.MotoRequestHandler
        )
        host, port = self._server.server_address[:2]
        self.host, self.port = str(host), int(port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.client = self.boto("ec2")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def boto(self, service: str, region: str = REGION) -> Any:
        """A boto3 client of ``service`` (``ec2``, ``elb``) in ``region``: the back door."""
        return boto3.client(
            service,
            region_name=region,
            endpoint_url=self.url,
            aws_access_key_id="AKIDBACKDOOR",
            aws_secret_access_key="backdoor",
        )

    def reset(self) -> None:
        reset = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(reset) as answer:
            assert answer.status == 200
        self.wire.requests.clear()

    def register_image(self, name: str) -> str:
        """An AMI owned by the test account ("self"), so name lookups are exercised."""
        image_id: str = self.client.register_image(
            Name=name, RootDeviceName="/dev/sda1", Architecture="x86_64"
        )["ImageId"]
        return image_id

    def user_data(self, instance_id: str) -> str:
        attr = self.client.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        value = attr.get("UserData", {}).get("Value")
        return base64.b64decode(value).decode() if value else ""

    def calls(self, action: str, service: str = "ec2") -> list[WireRequest]:
        return [r for r in self.wire.requests if r.action == action and r.service == service]

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


AWS_KEY_ID = "AKIDHEALERTEST"
AWS_SECRET = "healer-test-secret-value"


def ec2_options(emulator: Ec2Emulator, region: str = REGION) -> dict[str, Any]:
    """The ``libcloud`` plugin's options for libcloud's EC2 driver against ``emulator``."""
    return {
        "driver": "ec2",
        # moto routes a request by the service named in its SigV4 signature.
        "args": {"region": region, "signature_version": "4"},
        "host": emulator.host,
        "port": emulator.port,
        "secure": False,
    }


def ec2_provider(
    emulator: Ec2Emulator, *, cluster: str, state_dir: Path, **options: Any
) -> LibcloudProvider:
    """The generic plugin over libcloud's EC2 driver, pointed at ``emulator``.

    Credentials come from files, as an operator would configure them.
    """
    (state_dir / "aws-key").write_text(AWS_KEY_ID + "\n")
    (state_dir / "aws-secret").write_text(AWS_SECRET + "\n")
    return LibcloudProvider(
        cluster=cluster,
        options={**ec2_options(emulator), **options},
        credentials={
            "key": SecretRef(file=state_dir / "aws-key"),
            "secret": SecretRef(file=state_dir / "aws-secret"),
        },
        state_dir=state_dir,
    )
