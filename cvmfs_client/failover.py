"""Route choice and retry policy of the real CernVM-FS client, as a state machine without I/O.

The fetcher asks :class:`Failover` for a :class:`Route` (server x proxy), tries it, and reports
the outcome as an :class:`ErrorClass`; :meth:`Failover.record` answers with a :class:`Decision`
(retry the same route after a backoff, retry it with no-cache headers, switch proxy, switch
server, give up) and moves the shared route state. Nothing here opens a socket or sleeps, so
every branch of spec 7.3 (proxy groups), 7.2 (host chain), 7.5 (error classes) and 7.6 (retry
decision) is a unit test with a seeded ``random.Random`` and a fake clock.

Shared versus per-request state, as in the real client (``cvmfs/cvmfs:cvmfs/network/download.cc``):

* The current server, proxy group, chosen proxy and "burned" proxies are one state per client
  process, shared by all threads (one failing proxy is avoided by every later request).
* ``used_hosts``, ``used_proxies``, ``retries``, the backoff and the no-cache flag belong to one
  request (:class:`RequestState`); they bound the number of attempts of that request.
* A switch only happens if the failed route is still the current one: when several threads see
  the same proxy die, the first one switches and the others retry on the new route instead of
  skipping a healthy proxy.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

DIRECT = "DIRECT"
"""The proxy "name" of a direct connection, spelled as in ``CVMFS_HTTP_PROXY``."""

Clock = Callable[[], float]


class ErrorClass(enum.Enum):
    """Outcome of one failed attempt, as the real client classifies it (spec 7.5)."""

    HOST_RESOLVE = "host resolve"
    HOST_CONNECTION = "host connection"
    HOST_TOO_SLOW = "host too slow"
    HOST_SHORT_TRANSFER = "host short transfer"
    HOST_HTTP = "host HTTP"
    PROXY_RESOLVE = "proxy resolve"
    PROXY_CONNECTION = "proxy connection"
    PROXY_TOO_SLOW = "proxy too slow"
    PROXY_SHORT_TRANSFER = "proxy short transfer"
    PROXY_HTTP = "proxy HTTP"
    BAD_DATA = "bad data"

    @property
    def is_transfer(self) -> bool:
        """Connection, too slow or short transfer: the kind worth a same-URL retry."""
        return self in _TRANSFER

    @property
    def is_host(self) -> bool:
        return self in _HOST_CLASS

    @property
    def is_proxy(self) -> bool:
        return self in _PROXY_CLASS


_E = ErrorClass
_TRANSFER = frozenset(
    {
        _E.HOST_CONNECTION,
        _E.HOST_TOO_SLOW,
        _E.HOST_SHORT_TRANSFER,
        _E.PROXY_CONNECTION,
        _E.PROXY_TOO_SLOW,
        _E.PROXY_SHORT_TRANSFER,
    }
)
_HOST_CLASS = frozenset(
    {_E.HOST_RESOLVE, _E.HOST_CONNECTION, _E.HOST_TOO_SLOW, _E.HOST_SHORT_TRANSFER, _E.HOST_HTTP}
)
_PROXY_CLASS = frozenset(
    {_E.PROXY_RESOLVE, _E.PROXY_CONNECTION, _E.PROXY_TOO_SLOW, _E.PROXY_SHORT_TRANSFER, _E.PROXY_HTTP}
)


class Cause(enum.Enum):
    """What went wrong below HTTP; together with "via a proxy?" it gives the error class."""

    RESOLVE = "cannot resolve"
    CONNECT = "cannot connect"
    TIMEOUT = "timed out"
    SHORT_TRANSFER = "short transfer"
    TLS = "TLS error"
    REDIRECTS = "too many redirects"


# (cause, via a proxy) -> class. Spec 7.5: a failure to reach the next hop is the proxy's when
# there is one; TLS and redirect trouble is always the host's (the proxy only tunnels / relays).
_CAUSE_CLASS: dict[tuple[Cause, bool], ErrorClass] = {
    (Cause.RESOLVE, False): _E.HOST_RESOLVE,
    (Cause.RESOLVE, True): _E.PROXY_RESOLVE,
    (Cause.CONNECT, False): _E.HOST_CONNECTION,
    (Cause.CONNECT, True): _E.PROXY_CONNECTION,
    (Cause.TIMEOUT, False): _E.HOST_TOO_SLOW,
    (Cause.TIMEOUT, True): _E.PROXY_TOO_SLOW,
    (Cause.SHORT_TRANSFER, False): _E.HOST_SHORT_TRANSFER,
    (Cause.SHORT_TRANSFER, True): _E.PROXY_SHORT_TRANSFER,
    (Cause.TLS, False): _E.HOST_CONNECTION,
    (Cause.TLS, True): _E.HOST_CONNECTION,
    (Cause.REDIRECTS, False): _E.HOST_CONNECTION,
    (Cause.REDIRECTS, True): _E.HOST_CONNECTION,
}


def classify_failure(cause: Cause, *, via_proxy: bool) -> ErrorClass:
    """Error class of a transport-level failure (spec 7.5, lower half of the table)."""
    return _CAUSE_CLASS[(cause, via_proxy)]


def proxy_reported_error(headers: Mapping[str, str]) -> bool:
    """True if a proxy says it produced the error itself (``X-Squid-Error``, RFC 9209 ``Proxy-Status``).

    Squid answers e.g. 503 with ``X-Squid-Error: ERR_CONNECT_FAIL 111`` when it cannot reach the
    server; the real client then blames the proxy, not the server (spec 7.5).
    """
    for key, value in headers.items():
        lowered = key.lower()
        if lowered == "x-squid-error":
            return True
        if lowered == "proxy-status" and "error=" in value:
            return True
    return False


def classify_status(status: int, headers: Mapping[str, str], *, via_proxy: bool) -> ErrorClass | None:
    """Error class of an HTTP status (spec 7.5, upper half); ``None`` means success (2xx).

    3xx only reaches here when redirects are not followed: the real client then counts it as a
    host HTTP error (spec 7.1).
    """
    if 200 <= status < 300:
        return None
    if status == 429:  # "too many requests": the server is up, back off and retry
        return _E.HOST_CONNECTION
    if status in (400, 404) or 500 <= status < 600:
        return _E.PROXY_HTTP if via_proxy and proxy_reported_error(headers) else _E.HOST_HTTP
    if 300 <= status < 400:
        return _E.HOST_HTTP
    return _E.PROXY_HTTP if via_proxy else _E.HOST_HTTP


class Action(enum.Enum):
    """What the fetcher does next after a failed attempt."""

    RETRY = "retry the same route after a backoff"
    RETRY_NOCACHE = "retry the same route with no-cache headers"
    SWITCH_PROXY = "switch proxy"
    SWITCH_HOST = "switch server"
    GIVE_UP = "give up"


@dataclass(frozen=True)
class Decision:
    """The answer to one failed attempt.

    ``error`` is the class after reclassification (bad data that survived a no-cache retry
    becomes a host HTTP error). ``backoff`` is the sleep in seconds before a same-route retry.
    ``reset_proxies`` marks a proxy failure turned into a server failover: every proxy was tried
    for this server, so the next server starts again from the first proxy group.
    """

    action: Action
    error: ErrorClass
    backoff: float = 0.0
    reset_proxies: bool = False


@dataclass(frozen=True)
class RetryPolicy:
    """``CVMFS_MAX_RETRIES``, ``CVMFS_BACKOFF_INIT`` and ``CVMFS_BACKOFF_MAX`` (the latter two in ms).

    The real client converts the seconds of the configuration to whole milliseconds
    (``SetupHttpTuning``); keeping ms makes the random draw identical in granularity.
    """

    max_retries: int = 1
    backoff_init_ms: int = 2000
    backoff_max_ms: int = 10000


@dataclass
class RequestState:
    """Per-request counters of spec 7.6; start values are the real client's."""

    used_proxies: int = 1
    used_hosts: int = 1
    retries: int = 0
    backoff_ms: int = 0
    nocache: bool = False


def next_backoff_ms(previous_ms: int, policy: RetryPolicy, rng: random.Random) -> int:
    """First sleep random in [0, init]; then double the previous one; never above max (spec 7.6)."""
    ms = rng.randint(0, policy.backoff_init_ms) if previous_ms == 0 else previous_ms * 2
    return min(ms, policy.backoff_max_ms)


def decide(
    state: RequestState,
    error: ErrorClass,
    *,
    n_hosts: int,
    n_proxies: int,
    policy: RetryPolicy,
    rng: random.Random,
) -> Decision:
    """The real client's retry decision after one failed attempt (spec 7.6); updates ``state``.

    ``n_proxies`` counts every member of every group (fallback included). The request ends after
    at most ``max_retries`` backoffs, one no-cache retry, and ``n_hosts`` rounds of at most
    ``n_proxies`` proxies, so the loop around it always terminates.
    """
    same_url = not state.nocache and state.retries < policy.max_retries and error.is_transfer
    if error is _E.BAD_DATA:
        if not state.nocache:
            # Perhaps a cache on the way holds poisoned bytes: ask it to refetch (spec 7.8).
            state.nocache = True
            return Decision(Action.RETRY_NOCACHE, error)
        error = _E.HOST_HTTP  # the same bytes twice: blame the server
    if same_url:
        state.retries += 1
        state.backoff_ms = next_backoff_ms(state.backoff_ms, policy, rng)
        return Decision(Action.RETRY, error, backoff=state.backoff_ms / 1000)
    if error.is_proxy and state.used_proxies < n_proxies:
        state.used_proxies += 1
        return Decision(Action.SWITCH_PROXY, error)
    if state.used_hosts < n_hosts:
        state.used_hosts += 1
        if error.is_proxy:
            state.used_proxies = 1
            return Decision(Action.SWITCH_HOST, error, reset_proxies=True)
        return Decision(Action.SWITCH_HOST, error)
    return Decision(Action.GIVE_UP, error)


class HostChain:
    """The ordered server list with a sticky current index (spec 7.2).

    A switch moves to the next server, wrapping around. Once the client has moved away from the
    first server, it goes back to it ``reset_after`` seconds later (0 = never): the first server
    is the preferred one, and an outage is usually temporary.
    """

    def __init__(
        self, hosts: Sequence[str], *, reset_after: float = 0, clock: Clock = time.monotonic
    ) -> None:
        if not hosts:
            raise ValueError("a host chain needs at least one server")
        self.hosts: tuple[str, ...] = tuple(hosts)
        self.reset_after = reset_after
        self._clock = clock
        self._current = 0
        self._backup_since: float | None = None

    def __len__(self) -> int:
        return len(self.hosts)

    def current(self) -> int:
        """Index of the server to use now (after applying the reset timer)."""
        if self._backup_since is not None and self._clock() > self._backup_since + self.reset_after:
            self._current = 0
            self._backup_since = None
        return self._current

    def fail(self, index: int) -> bool:
        """Server ``index`` failed: move on, unless another request already did."""
        if len(self.hosts) == 1 or index != self._current:
            return False
        self._current = (self._current + 1) % len(self.hosts)
        if self.reset_after > 0:
            if self._current == 0:
                self._backup_since = None
            elif self._backup_since is None:
                self._backup_since = self._clock()
        return True

    def reorder(self, order: Sequence[int], keep: int = 0) -> None:
        """Install a new order (Geo API) and keep the first ``keep`` servers (0 = all)."""
        if sorted(order) != list(range(len(self.hosts))):
            raise ValueError(f"not a permutation of {len(self.hosts)} servers: {list(order)}")
        hosts = [self.hosts[i] for i in order]
        self.hosts = tuple(hosts[:keep] if keep > 0 else hosts)
        self._current = 0
        self._backup_since = None


class ProxyChain:
    """Proxy failover groups (``;``) of load-balanced members (``|``), regular then fallback (spec 7.3).

    One member of the current group is in use at a time, picked at random so that the clients
    of a site spread over the members; it stays in use (keep-alive, cache affinity) until it
    fails. A failed member is "burned" and another random unburned member of the group is
    picked; when the whole group is burned, the next group is used (wrapping around) with no
    member burned. ``reset_after`` seconds (0 = never) after moving to a later group, the first
    group is used again; the same delay after an in-group failover, the burned members become
    eligible again.
    """

    def __init__(
        self,
        groups: Sequence[Sequence[str]],
        *,
        fallback_groups: Sequence[Sequence[str]] = (),
        reset_after: float = 0,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        all_groups = tuple(tuple(g) for g in (*groups, *fallback_groups))
        if not all_groups or any(not g for g in all_groups):
            raise ValueError("a proxy chain needs at least one non-empty group")
        self.groups: tuple[tuple[str, ...], ...] = all_groups
        self.first_fallback = len(groups)
        self.reset_after = reset_after
        self._rng = rng or random.Random()
        self._clock = clock
        self._group = 0
        self._burned: set[int] = set()
        self._member = 0
        self._backup_since: float | None = None
        self._failover_since: float | None = None
        self._rebalance()

    @property
    def total(self) -> int:
        """Number of members of all groups: how many proxies one request may try per server."""
        return sum(len(g) for g in self.groups)

    @property
    def on_fallback(self) -> bool:
        return self._group >= self.first_fallback

    def current(self) -> tuple[int, int, str]:
        """``(group, member, proxy)`` to use now, after applying the reset timers."""
        if self.reset_after > 0:
            now = self._clock()
            if self._backup_since is not None and now > self._backup_since + self.reset_after:
                self._group = 0
                self._backup_since = None
                self._rebalance()
            if self._failover_since is not None and now > self._failover_since + self.reset_after:
                self._rebalance()
        return self._group, self._member, self.groups[self._group][self._member]

    def fail(self, group: int, member: int) -> bool:
        """Member ``member`` of ``group`` failed; returns False if the state had already moved on."""
        if group != self._group or member in self._burned:
            return False
        self._burned.add(member)
        members = self.groups[self._group]
        if len(self._burned) >= len(members):
            self._group = (self._group + 1) % len(self.groups)
            self._failover_since = None
            if self.reset_after > 0:
                if self._group == 0:
                    self._backup_since = None
                elif self._backup_since is None:
                    self._backup_since = self._clock()
            self._rebalance()
            return True
        if self.reset_after > 0 and self._failover_since is None:
            self._failover_since = self._clock()
        if member == self._member:
            self._member = self._rng.choice([i for i in range(len(members)) if i not in self._burned])
        return True

    def reset(self) -> None:
        """Back to the first group with nothing burned (a server failover after all proxies failed)."""
        if self._group == 0 and not self._burned:
            return
        self._group = 0
        self._backup_since = None
        self._rebalance()

    def reorder_fallback(self, order: Sequence[int]) -> None:
        """Install a new order of the fallback groups (Geo API); indices are 0-based among them."""
        fallback = self.groups[self.first_fallback :]
        if sorted(order) != list(range(len(fallback))):
            raise ValueError(f"not a permutation of {len(fallback)} fallback groups: {list(order)}")
        self.groups = self.groups[: self.first_fallback] + tuple(fallback[i] for i in order)
        if self.on_fallback:
            self._rebalance()

    def _rebalance(self) -> None:
        self._burned.clear()
        self._failover_since = None
        self._member = self._rng.randrange(len(self.groups[self._group]))


@dataclass(frozen=True)
class Route:
    """One attempt's server and proxy; the indices let :meth:`Failover.record` tell stale reports."""

    host_index: int
    host: str
    proxy: str
    proxy_group: int | None = None
    proxy_member: int | None = None

    @property
    def direct(self) -> bool:
        return self.proxy == DIRECT

    def describe(self, name: str) -> str:
        """``<url>`` or ``<url> via <proxy>``: how attempts are listed in errors and logs."""
        url = f"{self.host}/{name}"
        return url if self.direct else f"{url} via {self.proxy}"


def uses_proxies(host: str) -> bool:
    """Only network servers go through proxies; a ``file://`` server is read directly."""
    return not host.startswith("file:")


class Failover:
    """The route state one client process shares among its threads, behind one lock."""

    def __init__(
        self,
        hosts: HostChain,
        proxies: ProxyChain,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.hosts = hosts
        self.proxies = proxies
        self.policy = policy or RetryPolicy()
        self._rng = rng or random.Random()
        self._lock = threading.Lock()

    def route(self) -> Route:
        with self._lock:
            index = self.hosts.current()
            host = self.hosts.hosts[index]
            if not uses_proxies(host):
                return Route(index, host, DIRECT)
            group, member, proxy = self.proxies.current()
            return Route(index, host, proxy, group, member)

    def record(self, state: RequestState, route: Route, error: ErrorClass) -> Decision:
        """Decide what follows the failed attempt on ``route`` and move the shared state."""
        with self._lock:
            decision = decide(
                state,
                error,
                n_hosts=len(self.hosts),
                n_proxies=self.proxies.total if uses_proxies(route.host) else 1,
                policy=self.policy,
                rng=self._rng,
            )
            if decision.action is Action.SWITCH_PROXY and route.proxy_group is not None:
                assert route.proxy_member is not None
                self.proxies.fail(route.proxy_group, route.proxy_member)
            elif decision.action is Action.SWITCH_HOST:
                if decision.reset_proxies:
                    self.proxies.reset()
                self.hosts.fail(route.host_index)
            return decision

    def reorder(self, host_order: Sequence[int], fallback_order: Sequence[int], keep_hosts: int = 0) -> None:
        """Apply a Geo API answer (and ``CVMFS_MAX_SERVERS``)."""
        with self._lock:
            self.hosts.reorder(host_order, keep_hosts)
            if fallback_order:
                self.proxies.reorder_fallback(fallback_order)

    def all_routes(self) -> list[Route]:
        """Every server x every proxy (fallback included), for probing; does not move the state."""
        with self._lock:
            routes: list[Route] = []
            for i, host in enumerate(self.hosts.hosts):
                if not uses_proxies(host):
                    routes.append(Route(i, host, DIRECT))
                    continue
                for g, group in enumerate(self.proxies.groups):
                    routes.extend(Route(i, host, proxy, g, m) for m, proxy in enumerate(group))
            return routes
