"""The route state machine of spec 7.2-7.6, without any I/O: seeded randomness, fake clocks."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from cvmfs_client.failover import (
    DIRECT,
    Action,
    Cause,
    ErrorClass,
    Failover,
    HostChain,
    ProxyChain,
    RequestState,
    RetryPolicy,
    Route,
    classify_failure,
    classify_status,
    decide,
    next_backoff_ms,
)

E = ErrorClass


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- classification (spec 7.5) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "via_proxy", "expected"),
    [
        (200, {}, False, None),
        (204, {}, True, None),
        (404, {}, False, E.HOST_HTTP),
        (404, {}, True, E.HOST_HTTP),
        (400, {}, True, E.HOST_HTTP),
        (503, {}, True, E.HOST_HTTP),
        (503, {"X-Squid-Error": "ERR_CONNECT_FAIL 111"}, True, E.PROXY_HTTP),
        (502, {"x-squid-error": "ERR_READ_ERROR 104"}, True, E.PROXY_HTTP),
        (503, {"Proxy-Status": "squid; error=connection_refused"}, True, E.PROXY_HTTP),
        (503, {"Proxy-Status": "squid; received-status=503"}, True, E.HOST_HTTP),
        (503, {"X-Squid-Error": "ERR_CONNECT_FAIL 111"}, False, E.HOST_HTTP),
        (429, {}, True, E.HOST_CONNECTION),
        (429, {}, False, E.HOST_CONNECTION),
        (403, {}, True, E.PROXY_HTTP),
        (407, {}, True, E.PROXY_HTTP),
        (403, {}, False, E.HOST_HTTP),
        (302, {"Location": "http://elsewhere/"}, True, E.HOST_HTTP),
        (301, {}, False, E.HOST_HTTP),
    ],
)
def test_http_status_classes_follow_the_real_client(status, headers, via_proxy, expected):
    assert classify_status(status, headers, via_proxy=via_proxy) is expected


@pytest.mark.parametrize(
    ("cause", "via_proxy", "expected"),
    [
        (Cause.RESOLVE, False, E.HOST_RESOLVE),
        (Cause.RESOLVE, True, E.PROXY_RESOLVE),
        (Cause.CONNECT, False, E.HOST_CONNECTION),
        (Cause.CONNECT, True, E.PROXY_CONNECTION),
        (Cause.TIMEOUT, False, E.HOST_TOO_SLOW),
        (Cause.TIMEOUT, True, E.PROXY_TOO_SLOW),
        (Cause.SHORT_TRANSFER, False, E.HOST_SHORT_TRANSFER),
        (Cause.SHORT_TRANSFER, True, E.PROXY_SHORT_TRANSFER),
        (Cause.TLS, True, E.HOST_CONNECTION),
        (Cause.REDIRECTS, True, E.HOST_CONNECTION),
    ],
)
def test_transport_failures_blame_the_next_hop(cause, via_proxy, expected):
    assert classify_failure(cause, via_proxy=via_proxy) is expected


def test_every_error_class_is_exactly_one_of_host_proxy_or_bad_data():
    for error in ErrorClass:
        kinds = [error.is_host, error.is_proxy, error is E.BAD_DATA]
        assert kinds.count(True) == 1, error
    transfer = {e for e in ErrorClass if e.is_transfer}
    assert transfer == {
        E.HOST_CONNECTION,
        E.HOST_TOO_SLOW,
        E.HOST_SHORT_TRANSFER,
        E.PROXY_CONNECTION,
        E.PROXY_TOO_SLOW,
        E.PROXY_SHORT_TRANSFER,
    }


# -- backoff (spec 7.6 item 6) ------------------------------------------------------------------


def test_backoff_starts_random_below_init_then_doubles_up_to_max():
    policy = RetryPolicy(max_retries=10, backoff_init_ms=2000, backoff_max_ms=10000)
    rng = random.Random(7)
    first = next_backoff_ms(0, policy, rng)
    assert 0 <= first <= 2000
    assert next_backoff_ms(1500, policy, rng) == 3000
    assert next_backoff_ms(6000, policy, rng) == 10000
    assert next_backoff_ms(10000, policy, rng) == 10000


def test_backoff_first_draws_cover_the_whole_range():
    policy = RetryPolicy(backoff_init_ms=3)
    rng = random.Random(1)
    assert {next_backoff_ms(0, policy, rng) for _ in range(200)} == {0, 1, 2, 3}


def test_backoff_is_capped_even_when_init_exceeds_max():
    policy = RetryPolicy(backoff_init_ms=5000, backoff_max_ms=100)
    assert all(next_backoff_ms(0, policy, random.Random(s)) <= 100 for s in range(50))


# -- the decision (spec 7.6) ---------------------------------------------------------------------


def _decide(state: RequestState, error: ErrorClass, *, hosts: int = 2, proxies: int = 2, retries: int = 1):
    policy = RetryPolicy(max_retries=retries, backoff_init_ms=1000, backoff_max_ms=4000)
    return decide(state, error, n_hosts=hosts, n_proxies=proxies, policy=policy, rng=random.Random(0))


def test_host_transfer_error_retries_same_url_with_backoff_then_switches_host():
    state = RequestState()
    first = _decide(state, E.HOST_CONNECTION)
    assert first.action is Action.RETRY
    assert 0 <= first.backoff <= 1.0
    assert state.retries == 1
    second = _decide(state, E.HOST_CONNECTION)
    assert second.action is Action.SWITCH_HOST
    assert second.backoff == 0
    assert state.used_hosts == 2
    assert _decide(state, E.HOST_TOO_SLOW).action is Action.GIVE_UP


def test_backoff_doubles_within_one_request():
    state = RequestState(backoff_ms=800)
    decision = _decide(state, E.HOST_SHORT_TRANSFER, retries=3)
    assert decision.backoff == pytest.approx(1.6)
    assert _decide(state, E.HOST_SHORT_TRANSFER, retries=3).backoff == pytest.approx(3.2)
    assert _decide(state, E.HOST_SHORT_TRANSFER, retries=3).backoff == pytest.approx(4.0)  # capped


def test_without_retries_a_transfer_error_switches_host_at_once():
    state = RequestState()
    assert _decide(state, E.HOST_TOO_SLOW, retries=0).action is Action.SWITCH_HOST


def test_host_http_error_never_retries_the_same_url():
    state = RequestState()
    assert _decide(state, E.HOST_HTTP).action is Action.SWITCH_HOST
    assert _decide(state, E.HOST_HTTP).action is Action.GIVE_UP


def test_single_server_host_http_error_gives_up():
    assert _decide(RequestState(), E.HOST_HTTP, hosts=1).action is Action.GIVE_UP


def test_bad_data_retries_once_uncached_then_blames_the_host():
    state = RequestState()
    first = _decide(state, E.BAD_DATA)
    assert first.action is Action.RETRY_NOCACHE
    assert state.nocache
    second = _decide(state, E.BAD_DATA)
    assert second.action is Action.SWITCH_HOST
    assert second.error is E.HOST_HTTP
    third = _decide(state, E.BAD_DATA)
    assert third.action is Action.GIVE_UP
    assert third.error is E.HOST_HTTP


def test_after_a_nocache_retry_transfer_errors_are_not_retried_on_the_same_url():
    state = RequestState(nocache=True)
    assert _decide(state, E.HOST_CONNECTION).action is Action.SWITCH_HOST


def test_proxy_http_error_switches_proxy_without_backoff():
    state = RequestState()
    decision = _decide(state, E.PROXY_HTTP, proxies=3)
    assert decision.action is Action.SWITCH_PROXY
    assert decision.backoff == 0
    assert state.used_proxies == 2


def test_proxy_transfer_error_retries_then_switches_proxy():
    state = RequestState()
    assert _decide(state, E.PROXY_CONNECTION).action is Action.RETRY
    assert _decide(state, E.PROXY_CONNECTION).action is Action.SWITCH_PROXY


def test_all_proxies_failed_turns_into_host_failover_with_proxy_reset():
    state = RequestState(used_proxies=2)
    decision = _decide(state, E.PROXY_HTTP, proxies=2, hosts=2)
    assert decision.action is Action.SWITCH_HOST
    assert decision.reset_proxies
    assert state.used_proxies == 1
    assert state.used_hosts == 2


def test_all_proxies_of_all_hosts_failed_gives_up():
    state = RequestState(used_proxies=2, used_hosts=2)
    assert _decide(state, E.PROXY_RESOLVE, proxies=2, hosts=2).action is Action.GIVE_UP


@pytest.mark.parametrize("seed", range(20))
def test_every_request_ends_within_the_attempt_bound(seed):
    """Whatever fails, a request stops: retries + one no-cache + hosts x proxies switches."""
    rng = random.Random(seed)
    hosts, proxies, retries = rng.randint(1, 4), rng.randint(1, 4), rng.randint(0, 3)
    bound = retries + 1 + hosts * proxies
    state = RequestState()
    attempts = 0
    while True:
        attempts += 1
        assert attempts <= bound, "request did not end"
        decision = _decide(state, rng.choice(list(ErrorClass)), hosts=hosts, proxies=proxies, retries=retries)
        if decision.action is Action.GIVE_UP:
            break


# -- host chain (spec 7.2) -----------------------------------------------------------------------


def test_host_chain_is_sticky_and_wraps():
    chain = HostChain(["a", "b", "c"])
    assert chain.current() == 0
    assert chain.fail(0)
    assert chain.current() == 1
    assert chain.current() == 1
    assert chain.fail(1) and chain.fail(2)
    assert chain.current() == 0


def test_host_chain_ignores_stale_failures():
    chain = HostChain(["a", "b", "c"])
    chain.fail(0)
    assert not chain.fail(0)  # a second request saw the same server die: no double switch
    assert chain.current() == 1


def test_host_chain_returns_to_first_server_after_reset_delay():
    clock = FakeClock()
    chain = HostChain(["a", "b"], reset_after=1800, clock=clock)
    chain.fail(0)
    clock.now += 1800
    assert chain.current() == 1
    clock.now += 1
    assert chain.current() == 0


def test_host_chain_without_reset_delay_stays_on_backup():
    clock = FakeClock()
    chain = HostChain(["a", "b"], reset_after=0, clock=clock)
    chain.fail(0)
    clock.now += 10**6
    assert chain.current() == 1


def test_host_chain_reset_timer_starts_at_first_move_away():
    clock = FakeClock()
    chain = HostChain(["a", "b", "c"], reset_after=100, clock=clock)
    chain.fail(0)
    clock.now += 60
    chain.fail(1)
    clock.now += 41
    assert chain.current() == 0


def test_single_host_never_switches():
    chain = HostChain(["a"])
    assert not chain.fail(0)
    assert chain.current() == 0


def test_host_chain_reorder_and_truncate():
    chain = HostChain(["a", "b", "c"])
    chain.fail(0)
    chain.reorder([2, 0, 1], keep=2)
    assert chain.hosts == ("c", "a")
    assert chain.current() == 0
    with pytest.raises(ValueError):
        chain.reorder([0, 0])


# -- proxy chain (spec 7.3) ----------------------------------------------------------------------


def test_proxy_choice_is_random_per_client_and_sticky():
    chosen = set()
    for seed in range(20):
        chain = ProxyChain([["p1", "p2", "p3"]], rng=random.Random(seed))
        first = chain.current()
        assert all(chain.current() == first for _ in range(5))
        chosen.add(first[2])
    assert chosen == {"p1", "p2", "p3"}


def test_failed_member_is_burned_and_another_member_of_the_group_used():
    chain = ProxyChain([["p1", "p2"], ["q"]], rng=random.Random(3))
    group, member, proxy = chain.current()
    assert chain.fail(group, member)
    g2, m2, other = chain.current()
    assert g2 == 0 and other != proxy
    assert chain.fail(g2, m2)
    assert chain.current() == (1, 0, "q")


def test_proxy_groups_wrap_around_with_nothing_burned():
    chain = ProxyChain([["p"], [DIRECT]], rng=random.Random(0))
    chain.fail(0, 0)
    assert chain.current()[2] == DIRECT
    chain.fail(1, 0)
    assert chain.current() == (0, 0, "p")


def test_stale_proxy_failure_is_ignored():
    chain = ProxyChain([["p1", "p2"], ["q"]], rng=random.Random(0))
    g, m, _ = chain.current()
    chain.fail(g, m)
    assert not chain.fail(g, m)  # a second thread saw the same proxy fail
    assert chain.current()[0] == 0
    chain.fail(*chain.current()[:2])
    assert not chain.fail(0, 1 - m)  # report for a group no longer in use


def test_backup_group_is_left_after_reset_delay():
    clock = FakeClock()
    chain = ProxyChain([["p"], ["q"], ["r"]], reset_after=300, clock=clock, rng=random.Random(0))
    chain.fail(0, 0)
    clock.now += 200
    chain.fail(1, 0)
    assert chain.current()[2] == "r"
    clock.now += 101  # counted from the first move away from group 0
    assert chain.current() == (0, 0, "p")


def test_burned_members_become_eligible_again_after_reset_delay():
    clock = FakeClock()
    chain = ProxyChain([["p1", "p2"]], reset_after=300, clock=clock, rng=random.Random(0))
    g, m, _ = chain.current()
    chain.fail(g, m)
    clock.now += 301
    chain.current()
    # Nothing burned any more: failing the current member keeps us in the group.
    g, m, _ = chain.current()
    chain.fail(g, m)
    assert chain.current()[0] == 0
    assert chain.current()[1] != m


def test_proxy_reset_delay_zero_never_resets():
    clock = FakeClock()
    chain = ProxyChain([["p"], ["q"]], reset_after=0, clock=clock, rng=random.Random(0))
    chain.fail(0, 0)
    clock.now += 10**6
    assert chain.current()[2] == "q"


def test_proxy_reset_returns_to_primary_group():
    chain = ProxyChain([["p"], ["q"]], rng=random.Random(0))
    chain.fail(0, 0)
    chain.reset()
    assert chain.current() == (0, 0, "p")


def test_fallback_groups_follow_regular_ones_and_can_be_reordered():
    chain = ProxyChain([["p"]], fallback_groups=[["f1"], ["f2a", "f2b"]], rng=random.Random(0))
    assert chain.total == 4
    assert chain.first_fallback == 1
    assert not chain.on_fallback
    chain.fail(0, 0)
    assert chain.on_fallback
    chain.reorder_fallback([1, 0])
    assert chain.groups == (("p",), ("f2a", "f2b"), ("f1",))
    with pytest.raises(ValueError):
        chain.reorder_fallback([0])


def test_empty_proxy_chain_is_refused():
    with pytest.raises(ValueError):
        ProxyChain([])
    with pytest.raises(ValueError):
        ProxyChain([[]])


# -- the shared state (Failover) -----------------------------------------------------------------


def _failover(hosts: list[str], groups: list[list[str]], seed: int = 0, retries: int = 1) -> Failover:
    rng = random.Random(seed)
    return Failover(
        HostChain(hosts),
        ProxyChain(groups, rng=rng),
        RetryPolicy(max_retries=retries, backoff_init_ms=100, backoff_max_ms=400),
        rng,
    )


def run_request(failover: Failover, outcome: Callable[[Route], ErrorClass | None]) -> list[tuple[str, str]]:
    """Drive one request the way the fetcher does; returns the routes tried."""
    state = RequestState()
    tried = []
    while True:
        route = failover.route()
        tried.append((route.host, route.proxy))
        error = outcome(route)
        if error is None:
            return tried
        if failover.record(state, route, error).action is Action.GIVE_UP:
            return tried


def test_dead_proxy_then_next_group():
    fo = _failover(["h1"], [["dead"], ["good"]])

    def outcome(route: Route) -> ErrorClass | None:
        return E.PROXY_CONNECTION if route.proxy == "dead" else None

    assert run_request(fo, outcome) == [("h1", "dead"), ("h1", "dead"), ("h1", "good")]
    assert run_request(fo, outcome) == [("h1", "good")]  # shared and sticky


def test_server_missing_a_file_through_every_proxy_fails_over_to_next_server_and_first_proxy():
    fo = _failover(["h1", "h2"], [["p"], [DIRECT]])

    def outcome(route: Route) -> ErrorClass | None:
        if route.host == "h1":
            return E.PROXY_HTTP if route.proxy == "p" else E.HOST_HTTP
        return None

    assert run_request(fo, outcome) == [("h1", "p"), ("h1", DIRECT), ("h2", DIRECT)]


def test_proxy_exhaustion_resets_to_first_group_for_next_server():
    fo = _failover(["h1", "h2"], [["p"], ["q"]], retries=0)

    def outcome(route: Route) -> ErrorClass | None:
        return E.PROXY_HTTP if route.host == "h1" else None

    assert run_request(fo, outcome) == [("h1", "p"), ("h1", "q"), ("h2", "p")]


def test_file_servers_bypass_proxies():
    fo = _failover(["file:///srv/a", "http://h"], [["p"]])
    route = fo.route()
    assert route.proxy == DIRECT and route.proxy_group is None

    def outcome(route: Route) -> ErrorClass | None:
        return E.HOST_HTTP if route.host.startswith("file:") else None

    assert run_request(fo, outcome) == [("file:///srv/a", DIRECT), ("http://h", "p")]


def test_concurrent_reports_of_one_failure_switch_once():
    fo = _failover(["h1", "h2", "h3"], [[DIRECT]])
    route = fo.route()
    a, b = RequestState(), RequestState()
    fo.record(a, route, E.HOST_HTTP)
    fo.record(b, route, E.HOST_HTTP)
    assert fo.route().host == "h2"  # not h3: the second report was stale


def test_everything_failing_gives_up_after_bounded_attempts():
    fo = _failover(["h1", "h2"], [["p1", "p2"], [DIRECT]])
    tried = run_request(fo, lambda route: E.PROXY_CONNECTION if route.proxy != DIRECT else E.HOST_CONNECTION)
    assert len(tried) <= 1 + 1 + 2 * 3
    assert {h for h, _ in tried} == {"h1", "h2"}


def test_all_routes_lists_every_server_and_proxy_without_moving_state():
    fo = _failover(["h1", "file:///x"], [["p1", "p2"], [DIRECT]], seed=4)
    before = fo.route()
    routes = [(r.host, r.proxy) for r in fo.all_routes()]
    assert routes == [("h1", "p1"), ("h1", "p2"), ("h1", DIRECT), ("file:///x", DIRECT)]
    assert fo.route() == before


def test_geo_reorder_through_failover():
    fo = Failover(HostChain(["a", "b", "c"]), ProxyChain([[DIRECT]], fallback_groups=[["f1"], ["f2"]]))
    fo.reorder([2, 1, 0], [1, 0], keep_hosts=2)
    assert fo.hosts.hosts == ("c", "b")
    assert fo.proxies.groups == ((DIRECT,), ("f2",), ("f1",))
