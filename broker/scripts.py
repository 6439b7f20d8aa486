"""The registry of Lua scripts: one file per atomic operation, loaded once.

A file is named `<name>-<numkeys>.lua`; the registry reads the key count from the name and
checks it on every call. Scripts are sent as EVALSHA; the Redis client falls back to EVAL
(which also re-caches the script) when Redis answers NOSCRIPT, so a script cache flush or
a Redis restart costs no failed request.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

_NAME_RE = re.compile(r"^(?P<name>[a-z_]+)-(?P<numkeys>\d+)\.lua$")


def lua_dir() -> Path:
    """The scripts' folder: inside the installed package, else the source tree's `lua/`."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "lua", here.parent / "lua"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("no lua/ folder next to the broker package")


@dataclass(frozen=True)
class Script:
    name: str
    numkeys: int
    body: bytes
    sha: str

    def check(self, keys: list[str] | tuple[str, ...]) -> None:
        if len(keys) != self.numkeys:
            raise ValueError(f"{self.name} takes {self.numkeys} keys, got {len(keys)}")


def load_scripts(folder: Path | None = None) -> dict[str, Script]:
    scripts: dict[str, Script] = {}
    for path in sorted((folder or lua_dir()).glob("*.lua")):
        m = _NAME_RE.match(path.name)
        if not m:
            raise ValueError(f"{path.name}: script files are named <name>-<numkeys>.lua")
        body = path.read_bytes()
        scripts[m["name"]] = Script(
            m["name"], int(m["numkeys"]), body, hashlib.sha1(body).hexdigest()
        )
    return scripts
