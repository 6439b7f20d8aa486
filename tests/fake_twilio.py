"""A local fake of the parts of Twilio's REST API the `twilio` provider uses."""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ACCOUNT = "AC00000000000000000000000000000000"
TOKEN = "secret-token"


class FakeTwilio:
    def __init__(self, inventory: list[str]) -> None:
        self.inventory = list(inventory)  # available to buy, in order
        self.owned: dict[str, dict] = {}  # number -> incoming phone number resource
        self.fail_buying: set[str] = set()
        self.calls: list[tuple[str, str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: object | None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(url.query))
                if method == "POST":
                    length = int(self.headers.get("Content-Length", "0"))
                    params.update(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                fake.calls.append((method, url.path, params))
                expected = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self._send(401, {"code": 20003, "message": "Authenticate"})
                base = f"/2010-04-01/Accounts/{ACCOUNT}"
                path = url.path
                if method == "GET" and path.startswith(base + "/AvailablePhoneNumbers/"):
                    found = [n for n in fake.inventory if n not in fake.owned
                             and n[2:5] == params.get("AreaCode", n[2:5])
                             and params.get("Contains", "") in n]
                    size = int(params.get("PageSize", "50"))
                    return self._send(200, {"available_phone_numbers": [
                        {"phone_number": n, "friendly_name": n} for n in found[:size]]})
                if path == base + "/IncomingPhoneNumbers.json" and method == "POST":
                    number = params["PhoneNumber"]
                    if number in fake.fail_buying or number not in fake.inventory:
                        return self._send(400, {"code": 21422, "message": "not available"})
                    sid = f"PN{len(fake.calls):032d}"
                    fake.owned[number] = {"sid": sid, "phone_number": number,
                                          "voice_url": params.get("VoiceUrl")}
                    return self._send(201, fake.owned[number])
                if path == base + "/IncomingPhoneNumbers.json" and method == "GET":
                    items = [v for n, v in fake.owned.items()
                             if n == params.get("PhoneNumber", n)]
                    return self._send(200, {"incoming_phone_numbers": items})
                if path.startswith(base + "/IncomingPhoneNumbers/") and method == "DELETE":
                    sid = path.rsplit("/", 1)[1].removesuffix(".json")
                    for n, v in list(fake.owned.items()):
                        if v["sid"] == sid:
                            del fake.owned[n]
                            return self._send(204, None)
                    return self._send(404, {"code": 20404, "message": "not found"})
                return self._send(404, {"code": 20404, "message": "not found"})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FakeTwilio":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
