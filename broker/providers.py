"""Where tracking numbers are bought: a small provider interface and two providers.

- `sandbox`: numbers from the fictional 555-01XX ranges (+1 AAA 555 01XX, area code 555
  by default), for demos and tests. Buying and releasing cost nothing; a number is
  available while no pool tracks it and no pool names it as a target/backup number.
- `twilio`: Twilio's REST API (2010-04-01): `AvailablePhoneNumbers/{country}/Local.json`
  to search, `IncomingPhoneNumbers.json` to buy, `IncomingPhoneNumbers/{sid}.json` to
  release. A number bought for a call flow that is an http(s) URL gets it as `VoiceUrl`.
  The base URL is configurable (`DNI_TWILIO_API_URL`) so tests run against a local fake.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Protocol

from .keys import Keys


class ProviderError(RuntimeError):
    """The provider failed or refused (502 provider_error)."""


class ProviderNotConfigured(LookupError):
    """The provider is unknown or lacks its credentials (422 provider_not_configured)."""


class NotEnoughNumbers(LookupError):
    """The provider has fewer matching numbers than asked for (409 not_enough_numbers)."""


class Provider(Protocol):
    name: str

    async def search(self, count: int, area_code: str | None, contains: str | None,
                     country: str) -> list[str]:
        """Up to `count` numbers (E.164) that can be bought now."""

    async def buy(self, number: str, call_flow: str | None) -> None:
        """Buy one number found by `search`; ProviderError if that fails."""

    async def release(self, number: str) -> None:
        """Give a bought number back."""


class SandboxProvider:
    name = "sandbox"

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def search(self, count: int, area_code: str | None, contains: str | None,
                     country: str) -> list[str]:
        if country != "US":
            return []
        area = area_code or "555"
        candidates = [f"+1{area}55501{i:02d}" for i in range(100)]
        if contains:
            candidates = [n for n in candidates if contains in n[2:]]
        if not candidates:
            return []
        taken = await self.redis.execute("HMGET", self.keys.number_index(), *candidates)
        fixed = await self.redis.execute("HMGET", self.keys.fixed_index(), *candidates)
        free = [n for n, a, b in zip(candidates, taken, fixed) if a is None and b is None]
        return free[:count]

    async def buy(self, number: str, call_flow: str | None) -> None:
        return None

    async def release(self, number: str) -> None:
        return None


class TwilioProvider:
    name = "twilio"

    def __init__(self, account_sid: str, auth_token: str,
                 api_url: str = "https://api.twilio.com", timeout_s: float = 10.0) -> None:
        self.account_sid = account_sid
        self.base = f"{api_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}"
        self.auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, params: dict[str, str] | None = None) -> Any:
        url = self.base + path
        data = None
        if params and method == "GET":
            url += "?" + urllib.parse.urlencode(params)
        elif params:
            data = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": self.auth,
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as res:
                body = res.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise ProviderError(f"twilio {method} {path}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ProviderError(f"twilio {method} {path}: {exc}") from None
        return json.loads(body) if body else None

    async def _req(self, method: str, path: str, params: dict[str, str] | None = None) -> Any:
        return await asyncio.to_thread(self._call, method, path, params)

    async def search(self, count: int, area_code: str | None, contains: str | None,
                     country: str) -> list[str]:
        params = {"PageSize": str(count), "VoiceEnabled": "true"}
        if area_code:
            params["AreaCode"] = area_code
        if contains:
            params["Contains"] = contains
        out = await self._req("GET", f"/AvailablePhoneNumbers/{country}/Local.json", params)
        return [n["phone_number"] for n in out.get("available_phone_numbers", [])][:count]

    async def buy(self, number: str, call_flow: str | None) -> None:
        params = {"PhoneNumber": number}
        if call_flow and call_flow.startswith(("https://", "http://")):
            params["VoiceUrl"] = call_flow
        await self._req("POST", "/IncomingPhoneNumbers.json", params)

    async def release(self, number: str) -> None:
        out = await self._req("GET", "/IncomingPhoneNumbers.json", {"PhoneNumber": number})
        for item in out.get("incoming_phone_numbers", []):
            await self._req("DELETE", f"/IncomingPhoneNumbers/{item['sid']}.json")


def providers_from(settings: Any, redis: Any, keys: Keys) -> dict[str, Provider]:
    out: dict[str, Provider] = {"sandbox": SandboxProvider(redis, keys)}
    if settings.twilio_account_sid and settings.twilio_auth_token:
        out["twilio"] = TwilioProvider(settings.twilio_account_sid, settings.twilio_auth_token,
                                       settings.twilio_api_url)
    return out


async def buy_numbers(provider: Provider, count: int, area_code: str | None,
                      contains: str | None, country: str, call_flow: str | None) -> list[str]:
    """Search, then buy `count` numbers; all or none (bought ones are released on failure).

    Raises NotEnoughNumbers when the search finds fewer than `count`."""
    found = await provider.search(count, area_code, contains, country)
    if len(found) < count:
        raise NotEnoughNumbers(f"{provider.name} has {len(found)} of the {count} numbers "
                               f"asked for (area code {area_code or 'any'})")
    bought: list[str] = []
    try:
        for number in found[:count]:
            await provider.buy(number, call_flow)
            bought.append(number)
    except ProviderError:
        await release_all(provider, bought)
        raise
    return bought


async def release_all(provider: Provider, numbers: list[str]) -> None:
    for number in numbers:
        try:
            await provider.release(number)
        except ProviderError:
            pass  # best effort: the buy already failed and is reported
