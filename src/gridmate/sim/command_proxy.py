"""A stand-in for Tesla's vehicle-command proxy (``tesla-http-proxy``).

It mirrors ``pkg/proxy/proxy.go`` of teslamotors/vehicle-command (commit
724d8c8, 2026-07-22), the handler behind ``tesla-http-proxy``, as far as
gridmate meets it:

* TLS only (the README: "We do not offer an option to disable TLS"); the
  certificate is self-signed for 127.0.0.1 and written to ``ca_file``, as a
  user would copy ``tls-cert.pem`` to the client;
* ``GET /health`` answers ``OK``;
* the client's ``Authorization: Bearer`` token is required (403 "client did
  not provide an OAuth token" otherwise) and must be JWT-shaped (403 "client
  provided malformed OAuth token"); it is passed on to Tesla unchanged;
* ``POST /api/1/vehicles/{VIN}/command/{name}``: the VIN must have 17
  characters (404 "expected 17-character VIN in path (do not user Fleet API
  ID)", typo included), other methods get 405, a body that is not JSON gets a
  400 whose body is plain text, an unknown command 400 ``invalid_command``, a
  missing or non-numeric parameter (``percent`` of ``set_charge_limit``,
  ``charging_amps`` of ``set_charging_amps``) a 400 with ``{"response":
  {"result": false, "reason": "missing percent param"}, "error": ""}``.
  Known commands are signed with the proxy's key and sent to Tesla's
  ``signed_command`` endpoint; the answer is ``{"response": {"result": true,
  "reason": ""}}``, a refusal by the car (``is_charging``...) is a 200 with
  ``result`` false and the car's reason, a sleeping car is a 500 "vehicle
  unavailable: vehicle is offline or asleep" (the proxy does not wake it), a
  key the car does not know a 500 "vehicle rejected request: your public key
  has not been paired with the vehicle";
* a car that does not support the protocol (Tesla answers 422) is remembered
  and its commands are forwarded as REST commands from then on;
* everything else under ``/api/1/`` is forwarded to Tesla; a non-200 answer
  is replaced by ``{"error": "<HTTP status text>"}``, as ``forwardRequest``
  does.

Differences, on purpose: the real proxy finds Tesla's host from the token's
``aud`` claim; this one is given the simulator's URL. The signed message is
this module's own format (JSON signed with ECDSA P-256), not Tesla's
protobuf; the simulated car checks the signature against its enrolled keys
and a counter that must grow, which is what matters to a client. (There is no
expiry check: simulated clocks run up to hundreds of times faster than the
HTTP round trip.)
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gridmate.sim.tesla_cloud import (
    COMMAND_PARAMETERS,
    VEHICLE_COMMANDS,
    TeslaCloudSimulator,
    command_parameter_fault,
)
from gridmate.sim.tls import self_signed_certificate

__all__ = ["CommandProxySimulator", "command_proxy_simulator"]

VIN_LENGTH = 17
SIGNED_COMMANDS = frozenset(VEHICLE_COMMANDS)
"""Commands this stand-in signs (those the simulated cars carry out); the real
proxy knows many more."""
_KEY_NOT_PAIRED = "vehicle rejected request: your public key has not been paired with the vehicle"
_NOT_AWAKE = "vehicle unavailable: vehicle is offline or asleep"
_STATUS_TEXT = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    412: "Precondition Failed",
    421: "Misdirected Request",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class ProxyRequest:
    """One request as the proxy saw it and what it did with it."""

    method: str
    path: str
    status: int
    handling: str
    """``signed``, ``forwarded``, ``rest_fallback`` or ``refused``."""


@dataclass
class CommandProxySimulator:
    cloud: TeslaCloudSimulator
    fleet_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    """The command-authentication key (``-key-file fleet-key.pem``)."""
    base_url: str = ""
    ca_file: Path | None = None
    requests: list[ProxyRequest] = field(default_factory=list)
    signed_bodies: list[bytes] = field(default_factory=list)
    """Every ``signed_command`` request body sent to Tesla."""
    _unsupported: set[str] = field(default_factory=set)
    _counters: dict[str, int] = field(default_factory=dict)

    @property
    def public_key(self) -> bytes:
        """The key a car must have enrolled, as an uncompressed P-256 point."""
        return self.fleet_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def enroll(self, vin: str) -> None:
        """The owner approved the key in the Tesla app (``tesla.com/_ak/<domain>``)."""
        car = self.cloud.vehicles[vin]
        if self.public_key not in car.virtual_keys:
            car.virtual_keys.append(self.public_key)

    # ------------------------------------------------------------ handlers

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/health":
            if request.method != "GET":
                return self._error(request, 405, None, "refused")
            return self._log(request, web.Response(text="OK"), "health")
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return self._error(request, 403, "client did not provide an OAuth token", "refused")
        if len(header[len("Bearer ") :].split(".")) != 3:
            return self._error(request, 403, "client provided malformed OAuth token", "refused")
        parts = request.path.split("/")
        if parts[:4] == ["", "api", "1", "vehicles"] and len(parts) == 7 and parts[5] == "command":
            vin, command = parts[4], parts[6]
            if len(vin) != VIN_LENGTH:
                return self._error(
                    request,
                    404,
                    "expected 17-character VIN in path (do not user Fleet API ID)",
                    "refused",
                )
            if vin in self._unsupported:
                return await self._forward(request, "rest_fallback")
            return await self._vehicle_command(request, vin, command)
        return await self._forward(request, "forwarded")

    async def _vehicle_command(
        self, request: web.Request, vin: str, command: str
    ) -> web.StreamResponse:
        if request.method != "POST":
            return self._error(request, 405, None, "refused")
        raw = await request.read()
        parameters: object = {}
        if raw:
            try:
                parameters = json.loads(raw)
            except ValueError:
                # proxy.go answers an HTTPError with its bare message as the body.
                response = web.Response(
                    status=400, text="error occurred while parsing request parameters\n"
                )
                return self._log(request, response, "refused")
        if command not in SIGNED_COMMANDS:
            invalid = {"response": None, "error": "invalid_command", "error_description": ""}
            return self._log(request, web.json_response(invalid, status=400), "refused")
        if not isinstance(parameters, dict):
            parameters = {}
        fault = command_parameter_fault(command, parameters)
        if fault is not None:
            # command.go's missingParamError/invalidParamError: nominal errors, so
            # writeJSONError puts the text where the car's reason goes.
            refusal = {
                "response": {"result": False, "reason": fault},
                "error": "",
                "error_description": "",
            }
            return self._log(request, web.json_response(refusal, status=400), "refused")
        # command.go reads the number as a float64 and sends int32(value) to the car.
        key = COMMAND_PARAMETERS.get(command)
        signed = {key: int(parameters[key])} if key else {}
        upstream = await self._send_signed(request, vin, command, signed)
        if upstream.status_code == 422:
            # ErrProtocolNotSupported: remembered, and the REST command is sent instead.
            self._unsupported.add(vin)
            return await self._forward(request, "rest_fallback", body=raw)
        # inet.go: a 503, or a 408 saying "vehicle is offline", is ErrVehicleNotAwake.
        status = upstream.status_code
        if status == 503 or (status == 408 and "vehicle is offline" in upstream.text):
            return self._error(request, 500, _NOT_AWAKE, "signed")
        if upstream.status_code != 200:
            response = web.Response(
                status=upstream.status_code,
                body=upstream.content,
                content_type="application/json",
            )
            return self._log(request, response, "signed")
        answer = json.loads(base64.b64decode(upstream.json()["response"]))
        fault = answer.get("fault")
        if fault == "ERROR_UNKNOWN_KEY_ID":
            return self._error(request, 500, _KEY_NOT_PAIRED, "signed")
        if fault:
            return self._error(request, 500, f"vehicle rejected request: {fault}", "signed")
        body: dict[str, object]
        if answer.get("result"):
            body = {"response": {"result": True, "reason": ""}}
        else:
            # A nominal error: the answer came from the car, not from Tesla's servers.
            body = {
                "response": {"result": False, "reason": str(answer.get("reason", ""))},
                "error": "",
                "error_description": "",
            }
        return self._log(request, web.json_response(body), "signed")

    async def _send_signed(
        self, request: web.Request, vin: str, command: str, parameters: dict[str, int]
    ) -> httpx.Response:
        self._counters[vin] = self._counters.get(vin, 0) + 1
        payload = json.dumps(
            {
                "vin": vin,
                "command": command,
                "parameters": parameters,
                "counter": self._counters[vin],
            }
        ).encode()
        signature = self.fleet_key.sign(payload, ec.ECDSA(hashes.SHA256()))
        envelope = {
            "public_key": base64.b64encode(self.public_key).decode(),
            "payload": base64.b64encode(payload).decode(),
            "signature": base64.b64encode(signature).decode(),
        }
        routable = base64.b64encode(json.dumps(envelope).encode()).decode()
        body = json.dumps({"routable_message": routable}).encode()
        self.signed_bodies.append(body)
        async with httpx.AsyncClient(timeout=10.0) as client:
            return await client.post(
                f"{self.cloud.base_url}/api/1/vehicles/{vin}/signed_command",
                content=body,
                headers={
                    "Authorization": request.headers["Authorization"],
                    "Content-Type": "application/json",
                },
            )

    async def _forward(
        self, request: web.Request, handling: str, body: bytes | None = None
    ) -> web.StreamResponse:
        content = body if body is not None else await request.read()
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("authorization", "content-type", "accept")
        }
        async with httpx.AsyncClient(timeout=10.0) as client:
            upstream = await client.request(
                request.method,
                f"{self.cloud.base_url}{request.path_qs}",
                content=content or None,
                headers=headers,
            )
        if upstream.status_code != 200:
            return self._error(request, upstream.status_code, None, handling)
        response = web.Response(status=200, body=upstream.content, content_type="application/json")
        return self._log(request, response, handling)

    def _error(
        self, request: web.Request, status: int, error: str | None, handling: str
    ) -> web.Response:
        """proxy.go's writeJSONError: the error text, or the status text when there is none."""
        text = error if error is not None else _STATUS_TEXT.get(status, str(status))
        body = {"response": None, "error": text, "error_description": ""}
        return self._log(request, web.json_response(body, status=status), handling)

    def _log(self, request: web.Request, response: web.Response, handling: str) -> web.Response:
        self.requests.append(ProxyRequest(request.method, request.path, response.status, handling))
        return response

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app


@asynccontextmanager
async def command_proxy_simulator(
    cloud: TeslaCloudSimulator, *, enroll: bool = True
) -> AsyncIterator[CommandProxySimulator]:
    """Run the proxy over TLS on a free loopback port in front of ``cloud``.

    ``enroll`` puts the proxy's key on every car that needs signed commands,
    as the owner would by approving it in the Tesla app.
    """
    proxy = CommandProxySimulator(cloud=cloud)
    if enroll:
        for vin, car in cloud.vehicles.items():
            if car.command_signing_required:
                proxy.enroll(vin)
    with tempfile.TemporaryDirectory(prefix="gridmate-proxy-") as directory:
        cert_file, key_file = self_signed_certificate(Path(directory))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        runner = web.AppRunner(proxy.application(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
            proxy.base_url = f"https://127.0.0.1:{runner.addresses[0][1]}"
            proxy.ca_file = cert_file
            yield proxy
        finally:
            await runner.cleanup()
