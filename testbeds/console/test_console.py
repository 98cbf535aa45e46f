"""The web console in a real browser (Debian's Chromium, headless, driven by Playwright) against
a real gateway and the Rust sample service: what issue 17's "Done when" asks, one test each,
and the screenshots of every page in docs/console/.

The gateway runs with credentials required for reads too (`control.reads` not open), so every
page works only with the operator's token pasted in, as in production.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from harness import (
    HTTP_TIMEOUT_S,
    REPO_ROOT,
    Gateway,
    Launcher,
    SERVICE_READY,
    binary,
    child_env,
    operator,
    start_gateway,
    start_rust_service,
)

SCREENSHOTS = REPO_ROOT / "docs" / "console"
# Waits in the browser, in ms: each is a bound on a condition, not a sleep.
WAIT_MS = 15_000
LAPTOP = {"width": 1100, "height": 720}
PHONE = {"width": 390, "height": 844}
SERVICE = "sample"
INSTANCE = "s-1"


@pytest.fixture(scope="module")
def gateway(launcher: Launcher) -> Gateway:
    # keys_file given: reads need a credential too (the harness opens them otherwise).
    return start_gateway(launcher, "gw-console", "gw-console", keys_file=operator().keys_file)


@pytest.fixture(scope="module")
def sample(launcher: Launcher, gateway: Gateway) -> str:
    """The sample service's instance; returns its address."""
    proc = start_rust_service(launcher, gateway, SERVICE, INSTANCE, lease_ms=30_000)
    match = SERVICE_READY.search(proc.log_text())
    assert match, proc.log_tail()
    return match["addr"]


@pytest.fixture
def page(browser, gateway: Gateway) -> Iterator[object]:
    """A fresh browser tab (its own session storage) on the console, at laptop width, that
    fails the test on any Content-Security-Policy violation or script error."""
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on(
        "console",
        lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.set_default_timeout(WAIT_MS)
    try:
        yield page
    finally:
        context.close()
    assert not problems, problems


def open_console(page, gateway: Gateway, where: str, token: str | None) -> None:
    page.goto(f"{gateway.control}/console/#/{where}")
    if token is not None:
        page.get_by_label("Control token").fill(token)
        page.get_by_role("button", name="Use").click()
        page.get_by_text("Token held in this tab's session storage.").wait_for()


def shot(page, name: str) -> None:
    """A screenshot of the page for docs/console/ (PNG, the viewport only, to stay small)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), animations="disabled")


def control_api(method: str, gateway: Gateway, path: str, **kw) -> requests.Response:
    return requests.request(
        method,
        f"{gateway.control}{path}",
        headers=operator().headers(),
        timeout=HTTP_TIMEOUT_S,
        **kw,
    )


def test_a_bad_token_is_refused_with_a_visible_message(page, gateway: Gateway) -> None:
    open_console(page, gateway, "cluster", "not-a-token")
    alert = page.get_by_role("alert").filter(has_text="refused the control token")
    alert.wait_for()
    assert "401 unauthenticated" in alert.inner_text()
    # The subscription is refused the same way, over its WebSocket.
    page.get_by_role("link", name="Services").click()
    page.get_by_role("alert").filter(has_text="refused the control token").wait_for()
    page.get_by_text("Registry changes: stopped").wait_for()
    shot(page, "bad-token")


def test_an_instance_registered_through_the_control_api_appears_and_goes_without_a_reload(
    page, gateway: Gateway, sample: str
) -> None:
    open_console(page, gateway, "services", operator().token)
    page.get_by_text("Registry changes: live").wait_for()
    page.locator(f'tr[data-instance="{SERVICE}/{INSTANCE}"]').wait_for()
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    put = control_api(
        "PUT",
        gateway,
        f"/v1/services/{SERVICE}/instances/manual-1",
        json={"addr": sample, "metadata": {"zone": "eu-1", "team": "console"}, "lease_ms": 60_000},
    )
    assert put.status_code in (200, 202), put.text
    row = page.locator(f'tr[data-instance="{SERVICE}/manual-1"]')
    row.wait_for()
    assert "zone=eu-1" in row.inner_text()
    assert "gw-console" in row.inner_text(), "the origin gateway"
    assert re.search(r"\b\d+ s\b|min", row.inner_text()), "a lease countdown"
    assert "changed" in (row.get_attribute("class") or ""), "a change arriving is highlighted"
    shot(page, "services")

    gone = control_api("DELETE", gateway, f"/v1/services/{SERVICE}/instances/manual-1")
    assert gone.status_code in (200, 202), gone.text
    row.wait_for(state="detached")
    page.locator(f'tr[data-instance="{SERVICE}/{INSTANCE}"]').wait_for()
    assert navigations == [], f"the page reloaded: {navigations}"


def test_a_removal_missed_while_disconnected_is_gone_after_reconnecting(
    page, gateway: Gateway, sample: str
) -> None:
    # The browser's WebSocket goes through Playwright, which loses the one message that says
    # missed-1 was deregistered, then drops the connection: the console reconnects, and the
    # new snapshot must replace what it showed.
    lost: list[str] = []
    routes: list = []

    def route(ws) -> None:
        server = ws.connect_to_server()
        routes.append(ws)
        if len(routes) > 1:
            return  # later connections pass everything

        def from_server(message) -> None:
            text = message if isinstance(message, str) else message.decode()
            if "DEREGISTER" in text and "missed-1" in text:
                lost.append(text)
                return
            ws.send(message)

        server.on_message(from_server)

    put = control_api(
        "PUT", gateway, f"/v1/services/{SERVICE}/instances/missed-1", json={"addr": sample}
    )
    assert put.status_code in (200, 202), put.text
    # The token first, on a page without a socket; then the socket, routed.
    open_console(page, gateway, "cluster", operator().token)
    page.route_web_socket(re.compile(r".*/graphql$"), route)
    page.get_by_role("link", name="Services").click()
    row = page.locator(f'tr[data-instance="{SERVICE}/missed-1"]')
    row.wait_for()
    gone = control_api("DELETE", gateway, f"/v1/services/{SERVICE}/instances/missed-1")
    assert gone.status_code in (200, 202), gone.text
    deadline = time.monotonic() + WAIT_MS / 1000
    while not lost and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # lets Playwright deliver the socket's messages to `route`
    assert lost, "the deregistration never came over the socket"
    assert row.is_visible(), "shown while the removal is missed"
    routes[0].close(code=1001, reason="test: connection lost")
    page.get_by_text("Registry changes: retrying").wait_for()
    page.get_by_text("Registry changes: live").wait_for()
    row.wait_for(state="detached")
    page.locator(f'tr[data-instance="{SERVICE}/{INSTANCE}"]').wait_for()
    assert len(routes) == 2


def test_the_subscription_gives_up_after_its_bounded_retries(page, gateway: Gateway) -> None:
    # Every connection is refused at once, and the page's clock is Playwright's, advanced by
    # hand: 1 s doubling to 30 s between attempts, and after 12 failures in a row it stops.
    attempts_max = 12
    page.clock.install()
    open_console(page, gateway, "cluster", operator().token)
    routes: list = []

    def refuse(ws) -> None:
        routes.append(ws)
        ws.close(code=1011, reason="test: the gateway is unreachable")

    page.route_web_socket(re.compile(r".*/graphql$"), refuse)
    page.get_by_role("link", name="Services").click()
    stopped = page.get_by_text("Registry changes: stopped")
    deadline = time.monotonic() + WAIT_MS / 1000
    while not stopped.is_visible() and time.monotonic() < deadline:
        seen = len(routes)
        page.clock.fast_forward(31_000)
        # Each retry opens a socket (the route sees it) unless the page has stopped.
        while len(routes) == seen and not stopped.is_visible() and time.monotonic() < deadline:
            page.wait_for_timeout(20)
    assert stopped.is_visible(), f"still retrying after {len(routes)} connections"
    assert len(routes) == 1 + attempts_max, len(routes)
    page.get_by_role("alert").filter(has_text=f"after {attempts_max} attempts").wait_for()


def test_try_it_shows_the_services_echo_and_what_it_received(
    page, gateway: Gateway, sample: str
) -> None:
    open_console(page, gateway, "try", operator().token)
    page.get_by_label("Service").fill(SERVICE)
    page.get_by_label("Method").select_option("POST")
    page.get_by_label("Path").fill("/echo")
    page.get_by_label("Query").fill("from=console")
    page.get_by_label('Headers, one "name: value" a line').fill("x-console-test: yes")
    page.get_by_label("Body").fill('{"hello": "service"}')
    page.get_by_role("button", name="Send").click()
    page.locator('[data-field="status"]').filter(has_text="200").wait_for()
    assert page.locator('[data-field="instance"]').inner_text() == INSTANCE
    request_id = page.locator('[data-field="request-id"]').inner_text()
    assert request_id.strip(), "a request id"
    assert re.fullmatch(r"[0-9a-f]{32}", page.locator('[data-field="trace-id"]').inner_text())
    received = page.locator('[data-field="received"]').inner_text()
    for expected in ("x-console-test", '{"hello": "service"}', "from=console", request_id, "POST"):
        assert expected in received, f"{expected!r} not in what the service received:\n{received}"
    # Kept in this browser's history.
    page.get_by_role("button", name="POST /sample/echo → 200").wait_for()
    shot(page, "try-it")
    page.locator('[data-field="received"]').scroll_into_view_if_needed()
    shot(page, "try-it-answer")


def test_a_graphql_call_shows_the_same_echo(page, gateway: Gateway, sample: str) -> None:
    open_console(page, gateway, "try", operator().token)
    page.get_by_label("Service").fill(SERVICE)
    page.get_by_label("Path").fill("/echo")
    page.get_by_role("tab", name="GraphQL").click()
    operation = page.get_by_label("GraphQL operation (sent to this gateway's /graphql)")
    assert "call(service: \"sample\"" in operation.input_value()
    page.get_by_role("button", name="Run").click()
    answer = page.locator('[data-field="graphql-answer"]')
    answer.filter(has_text='"status": 200').wait_for()
    text = answer.inner_text()
    assert f'\\"instance\\":\\"{INSTANCE}\\"' in text, text
    assert '"requestId"' in text
    shot(page, "graphql")


def test_the_history_is_bounded_and_keeps_no_credential(
    page, gateway: Gateway, sample: str
) -> None:
    open_console(page, gateway, "try", operator().token)
    # More entries than the bound, as an older page (or another tab) might have left them.
    page.evaluate(
        """localStorage.setItem("switchyard.console.history", JSON.stringify(
             Array.from({length: 25}, (_, i) => ({at: i + 1, status: 200, ms: 1,
               form: {service: "old", method: "GET", path: "/" + i, query: "",
                      headers: "", body: ""}}))))"""
    )
    page.reload()
    history = page.locator("ol.history > li")
    history.first.wait_for()
    assert history.count() == 20
    page.get_by_label("Service").fill(SERVICE)
    page.get_by_label("Path").fill("/hello")
    page.get_by_label('Headers, one "name: value" a line').fill("authorization: Bearer secret-1")
    page.get_by_role("button", name="Send").click()
    page.get_by_role("button", name="GET /sample/hello → 200").wait_for()
    assert history.count() == 20, "the newest in, the oldest out"
    stored = page.evaluate('localStorage.getItem("switchyard.console.history")')
    assert "secret-1" not in stored
    assert "authorization: (not kept)" in stored


def test_the_cluster_page_shows_this_gateway(page, gateway: Gateway) -> None:
    open_console(page, gateway, "cluster", operator().token)
    page.locator('[data-field="node-id"]').filter(has_text="gw-console").wait_for()
    digest = control_api("GET", gateway, "/v1/cluster").json()["registry_digest"]
    page.locator('[data-field="digest"]').filter(has_text=digest).wait_for()
    assert "yes (/readyz 200)" in page.locator("dl.facts").inner_text()
    shot(page, "cluster")


def test_the_cluster_page_puts_peers_side_by_side_and_marks_a_diverged_digest(
    page, gateway: Gateway
) -> None:
    # A gateway serves no peers.json; a proxy in front of several does (the cluster testbed's
    # nginx, tested there). Here the browser is handed one naming a second gateway whose
    # registry differs.
    page.route(
        "**/console/peers.json",
        lambda route: route.fulfill(json=[{"name": "gw-other", "base": "gw/other/"}]),
    )
    other = {
        "node_id": "gw-other", "ready": True, "shutting_down": False, "bus_position": 7,
        "catch_up_target": 7, "registry_entries": 1, "registry_digest": "00000000deadbeef",
        "events_applied": 7, "events_rejected": 0, "outbox_pending": 0,
    }
    page.route("**/gw/other/v1/cluster", lambda route: route.fulfill(json=other))
    page.route("**/gw/other/readyz", lambda route: route.fulfill(json={"ready": True}))
    open_console(page, gateway, "cluster", operator().token)
    page.get_by_text("The registry digests differ").wait_for()
    rows = page.locator("table tbody tr")
    assert rows.count() == 2
    assert "gw-console" in rows.nth(0).inner_text()
    assert "00000000deadbeef (differs)" in rows.nth(1).inner_text()
    assert "diverged" in (rows.nth(1).get_attribute("class") or "")
    shot(page, "cluster-diverged")


def test_the_charts_show_traffic_after_a_burst(page, gateway: Gateway, sample: str) -> None:
    open_console(page, gateway, "traffic", operator().token)
    # Two readings of /metrics make the first rates.
    page.get_by_text("the first rates come with the second reading").wait_for(state="detached")
    url = f"{gateway.public}/{SERVICE}/hello"
    with requests.Session() as session:
        for _ in range(200):
            assert session.get(url, timeout=HTTP_TIMEOUT_S).status_code == 200
    chart = page.locator(f'article[data-service="{SERVICE}"] svg').first
    chart.wait_for()

    # The chart's label says its highest point over the window: above zero once the burst
    # falls between two readings.
    page.wait_for_function(
        """(selector) => {
            const svg = document.querySelector(selector);
            const m = svg && /highest ([0-9.]+)/.exec(svg.getAttribute("aria-label") || "");
            return m !== null && Number(m[1]) > 0;
        }""",
        arg=f'article[data-service="{SERVICE}"] svg',
        timeout=WAIT_MS,
    )
    p99 = page.locator(f'article[data-service="{SERVICE}"] [data-field="p99"]').inner_text()
    assert p99.endswith("ms") or p99.endswith(" s"), p99
    # And back to zero once a reading falls after it: the chart shows the burst as a peak.
    page.locator(f'article[data-service="{SERVICE}"] [data-field="requests/s"]').filter(
        has_text=re.compile(r"^0\.0$")
    ).wait_for()
    shot(page, "traffic")


def test_keyboard_and_phone_width(page, gateway: Gateway, sample: str) -> None:
    open_console(page, gateway, "services", operator().token)
    page.locator(f'tr[data-instance="{SERVICE}/{INSTANCE}"]').wait_for()
    # From the top: the skip link, then the pages, each reachable by Tab and opened by Enter.
    page.reload()  # the token stays: session storage is the tab's
    page.locator(f'tr[data-instance="{SERVICE}/{INSTANCE}"]').wait_for()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(3):
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Try it"
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Try it").wait_for()
    # Every form control has a label.
    unlabeled = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')]
             .filter(e => !e.labels || e.labels.length === 0).map(e => e.id || e.name)"""
    )
    assert unlabeled == [], unlabeled
    # At a phone's width nothing makes the page scroll sideways.
    page.set_viewport_size(PHONE)
    page.get_by_role("link", name="Services").click()
    page.locator(f'tr[data-instance="{SERVICE}/{INSTANCE}"]').wait_for()
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"the page is {width[0]} px wide in a {width[1]} px window"
    shot(page, "services-phone")


def test_the_demo_prints_the_consoles_address_and_serves_it(launcher: Launcher) -> None:
    exe = binary("SWITCHYARD_BIN", "target/debug/switchyard")
    argv = [str(exe), "demo", "--public-listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"]
    console_line = re.compile(r"console\s+(?P<url>http://\S+/console/)")
    proc = launcher.start("demo", argv, console_line, child_env())
    url = proc.wait_ready()["url"]
    page = requests.get(url, timeout=HTTP_TIMEOUT_S)
    assert page.status_code == 200
    assert "./assets/console.js" in page.text


def test_the_screenshots_are_small_pngs() -> None:
    """Run last (pytest keeps file order): every page's screenshot exists and stays small."""
    names = [
        "bad-token", "services", "try-it", "try-it-answer", "graphql", "cluster",
        "cluster-diverged", "traffic", "services-phone",
    ]
    for name in names:
        path: Path = SCREENSHOTS / f"{name}.png"
        assert path.is_file(), path
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path
        assert len(data) < 150_000, f"{path} is {len(data)} bytes"
