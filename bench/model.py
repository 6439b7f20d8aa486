"""The visitor model: a schedule of session and heartbeat requests, made of visits.

Visits arrive as a Poisson process. A visit is by a new visitor (`new_share`) or by a
visitor already seen (a returning visitor, whose session is most likely still live); it
views `1 + Geometric` pages (mean `pages`) at random moments of the visit, whose length is
uniform in [0, 2 * visit_s], and sends a heartbeat every `heartbeat_s` while it lasts.
`speed` compresses time (a 30-minute visit at speed 60 lasts 30 s); pair it with a short
pool session length. The arrival rate of visits is chosen so that the whole schedule
(pages and heartbeats) makes `rate` requests per second.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

SESSION, HEARTBEAT = 0, 1


@dataclass
class VisitorModel:
    rate: float  # requests per second (all ops), for this generator process
    new_share: float = 0.3  # share of visits by new visitors
    pages: float = 2.0  # mean page views per visit
    visit_s: float = 60.0  # mean visit length (s, before compression)
    heartbeat_s: float = 60.0  # heartbeat interval (s, before compression); 0 = none
    speed: float = 1.0  # time compression
    seed: int = 0
    prefix: str = "b"  # visitor id prefix (unique per process)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        # expected heartbeats per visit: E[floor(L / h)] for L uniform in [0, 2 visit_s]
        hb, k = 0.0, 1
        while self.heartbeat_s > 0 and k * self.heartbeat_s < 2 * self.visit_s:
            hb += 1 - k * self.heartbeat_s / (2 * self.visit_s)
            k += 1
        self.per_visit = self.pages + hb
        self.visit_rate = self.rate / self.per_visit
        # one entry per visit in progress: (time of its next request, seq, visit)
        self.heap: list[tuple[float, int, list]] = []
        self.seq = 0
        self.seen: list[str] = []
        self.count = 0
        # Start in the steady state: visits that began up to one longest visit ago are in
        # progress at time 0 (their earlier requests are dropped by prime()).
        self.next_visit = -2 * self.visit_s / self.speed

    def _visit(self, t0: float) -> None:
        rng = self.rng
        if not self.seen or rng.random() < self.new_share:
            self.count += 1
            vid = f"{self.prefix}{self.count}"
            self.seen.append(vid)
        else:
            vid = self.seen[rng.randrange(len(self.seen))]
        length = rng.uniform(0, 2 * self.visit_s) / self.speed
        pages = 1
        p_more = 1 - 1 / self.pages if self.pages > 1 else 0.0
        while rng.random() < p_more:
            pages += 1
        times = sorted(t0 + rng.uniform(0, length) for _ in range(pages - 1))
        times.reverse()  # pop() gives the next one
        hb = self.heartbeat_s / self.speed if self.heartbeat_s > 0 else math.inf
        # visit: [visitor, page times (last first), next heartbeat, end]
        visit = [vid, times, t0 + hb, t0 + length, hb]
        self.seq += 1
        heapq.heappush(self.heap, (t0, self.seq, visit))  # the landing page
        visit[1].append(t0)

    def _next(self, visit: list) -> float | None:
        nxt = visit[1][-1] if visit[1] else math.inf
        if visit[2] <= visit[3] and visit[2] < nxt:
            nxt = visit[2]
        return None if nxt == math.inf else nxt

    def _pop(self) -> tuple[float, int, str]:
        t, _, visit = heapq.heappop(self.heap)
        if visit[1] and visit[1][-1] == t:
            visit[1].pop()
            op = SESSION
        else:
            visit[2] += visit[4]
            op = HEARTBEAT
        nxt = self._next(visit)
        if nxt is not None:
            self.seq += 1
            heapq.heappush(self.heap, (nxt, self.seq, visit))
        return t, op, visit[0]

    def _arrivals(self, now: float) -> None:
        while self.next_visit <= now:
            self._visit(self.next_visit)
            self.next_visit += -math.log(1.0 - self.rng.random()) / self.visit_rate

    def prime(self) -> None:
        """Run the schedule up to time 0 without emitting anything (steady state)."""
        self._arrivals(0.0)
        while self.heap and self.heap[0][0] < 0:
            self._pop()

    def due(self, now: float) -> list[tuple[float, int, str]]:
        """Every (scheduled time, op, visitor id) due by `now` (seconds since start)."""
        self._arrivals(now)
        out = []
        heap = self.heap
        while heap and heap[0][0] <= now:
            out.append(self._pop())
        return out

    def next_at(self) -> float:
        return min(self.next_visit, self.heap[0][0]) if self.heap else self.next_visit

    def any(self) -> tuple[int, str]:
        """One request for closed-loop runs: the model's mix of ops, without timing."""
        if not self.heap:
            self._arrivals(self.next_visit)
        t, op, vid = self._pop()
        self._arrivals(t)
        return op, vid
