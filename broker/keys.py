"""Every Redis key name, spelled in this one place.

All keys of one pool carry the pool id as a Cluster hash tag (`dni:{pool}:...`), so every
script touching one pool runs on one slot. Only validated ids reach here: a pool id has no
braces, and anything after the first `{...}` cannot change the slot.
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str = "dni") -> None:
        self.prefix = prefix

    def _p(self, pool_id: str) -> str:
        return f"{self.prefix}:{{{pool_id}}}"

    def pool(self, pool_id: str) -> str:
        return self._p(pool_id) + ":pool"

    def numbers(self, pool_id: str) -> str:
        return self._p(pool_id) + ":numbers"

    def holders(self, pool_id: str) -> str:
        return self._p(pool_id) + ":holders"

    def visitor(self, pool_id: str, visitor_id: str) -> str:
        return self._p(pool_id) + ":v:" + visitor_id

    def admin_lock(self, pool_id: str) -> str:
        """Held while an admin change to the pool runs (one at a time per pool)."""
        return self._p(pool_id) + ":lock"

    def blocked(self, pool_id: str, minute: int) -> str:
        """HyperLogLog of the visitors answered fallback/unavailable in one minute."""
        return self._p(pool_id) + f":b:{minute}"

    def flush_marker(self, pool_id: str, process_id: str) -> str:
        """The last answer-count flush of one broker process to the pool (a minute's
        expiry; record_counts-5)."""
        return self._p(pool_id) + ":f:" + process_id

    def outbox(self, pool_id: str) -> str:
        return self._p(pool_id) + ":outbox"

    def inactive(self, pool_id: str) -> str:
        """Deactivated numbers: number -> free-from time, as in `numbers`."""
        return self._p(pool_id) + ":inactive"

    def flows(self, pool_id: str) -> str:
        """number -> the call flow it routes to."""
        return self._p(pool_id) + ":flows"

    def minute(self, pool_id: str, minute: int) -> str:
        """Answer counts and peak sessions of one minute (epoch minutes)."""
        return self._p(pool_id) + f":m:{minute}"

    def number_index(self) -> str:
        """Global hash: tracking number -> pool id (one slot, tag `{numbers}`)."""
        return f"{self.prefix}:index:{{numbers}}:tracking"

    def fixed_index(self) -> str:
        """Global hash: target/backup number -> count of pools naming it (same slot)."""
        return f"{self.prefix}:index:{{numbers}}:fixed"

    def events_stream(self) -> str:
        """Operational events (pool.pressure) for downstream consumers."""
        return f"{self.prefix}:events"

    def session_keys(self, pool_id: str, visitor_id: str) -> list[str]:
        """KEYS of session-5.lua (built in one go: this is the hot path)."""
        p = f"{self.prefix}:{{{pool_id}}}"
        return [p + ":pool", p + ":numbers", p + ":holders", p + ":v:" + visitor_id,
                p + ":outbox"]

    def heartbeat_keys(self, pool_id: str, visitor_id: str) -> list[str]:
        """KEYS of heartbeat-3.lua."""
        p = f"{self.prefix}:{{{pool_id}}}"
        return [p + ":pool", p + ":holders", p + ":v:" + visitor_id]

    def backup_index(self) -> str:
        """Hash: backup (fallback) number -> a pool id using it."""
        return f"{self.prefix}:backups"

    def sidecar_leader(self) -> str:
        """The sidecars' leader lease (SET NX PX)."""
        return f"{self.prefix}:sidecar:leader"

    def sidecar_stats(self) -> str:
        """Hash of the sidecar's counters (copied, trimmed, trim_dropped_pending...)."""
        return f"{self.prefix}:sidecar:stats"

    def call_seen(self, call_id: str) -> str:
        """Dedupe record of a call id, in the calls stream's slot ({dni:calls} tag)."""
        return f"{{{self.calls_stream()}}}:call:{call_id}"

    def dead_letters(self, stream: str) -> str:
        return f"{stream}:dead"

    def pool_index(self) -> str:
        """Set of all pool ids (admin listing; never used inside a script)."""
        return f"{self.prefix}:pools"

    def draining_pools(self) -> str:
        """Set of deleted pools whose outbox the sidecar has still to empty."""
        return f"{self.prefix}:pools:draining"

    def sessions_stream(self) -> str:
        return f"{self.prefix}:sessions"

    def calls_stream(self) -> str:
        return f"{self.prefix}:calls"
