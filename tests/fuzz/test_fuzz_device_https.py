"""Fuzz target: the device download port over HTTPS at the service level (issue 12,
finding 10): the pre-signed URL endpoint (path, query, Range) and the iot-jobs-data API
(paths, methods, request bodies), through the real ASGI app with the real job, object
and audit services (tests/fuzz/device_world.py).

Every request is answered with one of the statuses the endpoint documents, never 500:
downloads 200/206/400/403/404/416 (and the router's 307 for a path missing its
key), the Jobs API its model's 2xx/4xx (501 for the one
operation overair does not implement).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overair.server.delivery.nginx_front import AUTH_PREFIX
from tests.fuzz.device_strategies import HOSTILE_TEXT, JSON_VALUES, job_messages, json_bytes, json_payloads
from tests.fuzz.device_world import JOB, OTHER_THING, THING, DeviceWorld, build, call_asgi

# 307: the router's own redirect of `/ota/x` to `/ota/x/` (a path no URL has).
DOWNLOAD_STATUSES = {200, 206, 307, 400, 403, 404, 416}
JOBS_API_STATUSES = {200, 400, 404, 409, 410, 501}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceWorld]:
    world = build(tmp_path_factory.mktemp("fuzz-https"))
    yield world
    world.server.db.close()


def _ascii_target(path: str, query: dict[str, str] | str) -> str:
    encoded = query if isinstance(query, str) else urlencode(query)
    return quote(path.encode("utf-8", "surrogatepass"), safe="/%") + ("?" + encoded if encoded else "")


_RANGES = st.one_of(
    st.none(),
    HOSTILE_TEXT.filter(lambda t: t.isascii() and t.isprintable()),
    st.text(alphabet="bytes=0123456789-, ", max_size=20),
    st.integers(0, 10**30).map(lambda n: f"bytes=0-{n}"),
)


@given(
    st.dictionaries(
        st.sampled_from(["version", "thing", "expires", "signature"]) | HOSTILE_TEXT, HOSTILE_TEXT, max_size=4
    ),
    st.one_of(st.none(), HOSTILE_TEXT),
    _RANGES,
    st.sampled_from(["GET", "HEAD"]),
)
def test_fuzz_download_endpoint_answers_only_documented_statuses(
    world: DeviceWorld, changes: dict[str, str], path: str | None, range_header: str | None, method: str
) -> None:
    query = {**world.url_query, **changes}
    target_path = world.url_path if path is None else "/ota/" + path
    headers = [] if range_header is None else [("range", range_header)]
    target = _ascii_target(target_path, urlencode(query, encoding="utf-8", errors="surrogatepass"))
    status, _ = call_asgi(world.app, method, target, headers, b"", None)
    assert status in DOWNLOAD_STATUSES, (target, range_header, status)


@given(
    st.dictionaries(
        st.sampled_from(["version", "thing", "expires", "signature"]) | HOSTILE_TEXT, HOSTILE_TEXT, max_size=4
    ),
    st.one_of(st.none(), HOSTILE_TEXT),
    st.sampled_from(["GET", "HEAD"]),
)
def test_fuzz_download_front_decision_route_answers_only_204_or_403(
    world: DeviceWorld, changes: dict[str, str], path: str | None, method: str
) -> None:
    # The download front's auth_request question (`/auth/ota/...`): nginx passes on only
    # 2xx and 401/403, so every refusal must be a 403 (its real status in a header), never
    # a 500 nginx would turn into "unavailable" for a hostile URL.
    query = {**world.url_query, **changes}
    target_path = AUTH_PREFIX + (world.url_path if path is None else "/ota/" + path)
    target = _ascii_target(target_path, urlencode(query, encoding="utf-8", errors="surrogatepass"))
    status, _ = call_asgi(world.app, method, target, [], b"", None)
    assert status in {204, 403, 307, 404}, (target, status)  # 307/404: the router's, for no key


def test_the_download_front_decision_route_grants_a_valid_url(world: DeviceWorld) -> None:
    status, _ = call_asgi(world.app, "GET", _ascii_target(AUTH_PREFIX + world.url_path, world.url_query),
                          [], b"", None)
    assert status == 204


def test_the_download_world_serves_a_valid_url(world: DeviceWorld) -> None:
    status, body = call_asgi(
        world.app, "GET", _ascii_target(world.url_path, world.url_query), [("range", "bytes=0-9")], b"", None
    )
    assert (status, len(body)) == (206, 10)


_OPERATIONS = st.sampled_from(
    [
        ("GET", f"/things/{THING}/jobs"),
        ("PUT", f"/things/{THING}/jobs/$next"),
        ("GET", f"/things/{THING}/jobs/{JOB}"),
        ("POST", f"/things/{THING}/jobs/{JOB}"),
        ("POST", f"/things/{OTHER_THING}/jobs/{JOB}"),
        ("GET", f"/things/{THING}/jobs/$next"),
        ("POST", "/command-executions"),
    ]
)


@given(
    _OPERATIONS,
    st.one_of(json_payloads(job_messages()), JSON_VALUES.map(json_bytes)),
    st.dictionaries(
        st.sampled_from(["includeJobDocument", "executionNumber", "x"]), HOSTILE_TEXT, max_size=2
    ),
)
def test_fuzz_device_jobs_api_answers_only_its_models_statuses(
    world: DeviceWorld, operation: tuple[str, str], body: bytes, query: dict[str, Any]
) -> None:
    method, path = operation
    target = _ascii_target(path, urlencode(query, encoding="utf-8", errors="surrogatepass"))
    status, reply = call_asgi(
        world.app, method, target, [("content-type", "application/json")], body, world.cert_der
    )
    assert status in JOBS_API_STATUSES, (method, target, body[:200], status, reply[:300])
    if status >= 400:
        assert json.loads(reply)  # the model's error shape


@given(
    st.lists(HOSTILE_TEXT.filter(lambda t: "/" not in t), min_size=1, max_size=4),
    st.sampled_from(["GET", "PUT", "POST", "DELETE"]),
)
def test_fuzz_device_jobs_api_hostile_paths(world: DeviceWorld, segments: list[str], method: str) -> None:
    target = _ascii_target(
        "/things/" + "/".join(quote(s.encode("utf-8", "surrogatepass"), safe="") for s in segments), ""
    )
    status, _ = call_asgi(world.app, method, target, [], b"", world.cert_der)
    assert status in JOBS_API_STATUSES | {307, 405}, (method, target, status)  # 307, 405: the router's
