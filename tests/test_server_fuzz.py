"""The local server under bad input: a hypothesis state machine mixing valid writes (checked
against a model of the store) with random bodies, paths, query strings and methods, wrong
credentials, oversized bodies and concurrent writers.

After every step the store must be consistent (versions of a name are exactly those the model
holds, 1..n with no gap unless a version was deleted; each label on at most one version of a
name; ``latest`` on the newest), equal to the model, and the server must keep answering. No
input may get a 5xx or a non-JSON error.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from asyncpromptcache.server import MAX_BODY_BYTES, PromptStore, ServerThread, basic_auth_header

PUBLIC, SECRET = "pk-lf-fuzz", "sk-lf-fuzz"
AUTH = {"Authorization": basic_auth_header(PUBLIC, SECRET)}
PROMPTS = "/api/public/v2/prompts"
NAMES = ["p", "p/q", "..", "ü 名", "a%2Fb"]
LABELS = ["production", "staging", "dev", "a.b-c"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=6,
)
# Create bodies that look almost right: every field present or not, of any type.
near_bodies = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(NAMES) | json_values | st.text(max_size=3),
        "prompt": st.text(max_size=10) | json_values
        | st.just([{"role": "user", "content": "hi"}])
        | st.just([{"type": "placeholder", "name": ""}]),
        "type": st.sampled_from(["text", "chat", "image", None, 1]),
        "labels": st.lists(st.sampled_from([*LABELS, "latest", "Bad", "", "a/b"]), max_size=3)
        | json_values,
        "tags": st.lists(st.text(max_size=4), max_size=2) | json_values,
        "config": json_values,
        "commitMessage": st.text(max_size=5) | json_values,
    },
)
known_garbage = st.sampled_from([
    b"", b"{", b"[]", b"null", b'{"name": "p", "prompt": "x"} trailing', b"\xff\xfe",
    b'{"name": "p", "prompt": NaN}', b'{"name": "\\ud800", "prompt": "x"}',
    b"[" * 5000 + b"]" * 5000, b'{"name": "p", "prompt": "x", "config": ' + b"9" * 5000 + b"}",
])
raw_bodies = st.binary(max_size=64) | known_garbage | known_garbage
# Path tails and query strings, sent byte for byte.
segments = st.sampled_from(
    ["p", "p%2Fq", "%2E%2E", "..", ".", "", "%", "%zz", "%FF", "%C3%BC%20%E5%90%8D", "a%2Fb",
     "a%252Fb", "versions", "1", "0", "-1", "99999999999", "%00", "x" * 300]
)
path_tails = st.lists(segments, min_size=0, max_size=4).map("/".join)
query_values = st.sampled_from(
    ["", "1", "0", "-1", "1.5", "abc", "production", "latest", "staging", "%FF", "%00",
     "1%26version%3D2", "x" * 50, "2147483648"]
)
queries = st.lists(
    st.tuples(st.sampled_from(["version", "label", "name", "page", "limit", "tag", "x"]),
              query_values),
    max_size=3,
).map(lambda pairs: "?" + "&".join(f"{k}={v}" for k, v in pairs) if pairs else "")
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
wrong_auth = st.sampled_from([
    {}, {"Authorization": basic_auth_header(PUBLIC, "wrong")},
    {"Authorization": basic_auth_header(SECRET, PUBLIC)},
    {"Authorization": basic_auth_header(PUBLIC, SECRET + " ")},
    {"Authorization": basic_auth_header(PUBLIC + ":" + SECRET, "")},
    {"Authorization": "Bearer " + SECRET}, {"Authorization": "Basic !!!"},
    {"Authorization": "Basic " + base64.b64encode(PUBLIC.encode()).decode()},
    {"Authorization": "basic"}, {"Authorization": ""},
])


class Server:
    """The server on its own thread and a raw HTTP/1.1 client that sends paths as given."""

    def __init__(self) -> None:
        self.store = PromptStore()
        self.thread = ServerThread(self.store, public_key=PUBLIC, secret_key=SECRET).start()
        address = urlsplit(self.thread.base_url)
        self.host, self.port = address.hostname or "", address.port or 0

    def close(self) -> None:
        self.thread.stop()
        self.store.close()

    def request(
        self, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        if response.status >= 400 and method != "HEAD":
            data = json.loads(raw)  # every error is Langfuse's JSON error body
            assert set(data) == {"message", "error"}, data
            assert isinstance(data["message"], str) and data["message"]
        assert response.status < 500, (method, path, response.status, raw[:200])
        return response.status, (json.loads(raw) if raw and method != "HEAD" else None)

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        return self.request(method, path, data, {**AUTH, "Content-Type": "application/json"})

    def dump(self) -> dict[str, dict[int, tuple[str, frozenset[str]]]]:
        """Everything stored, read through the store: name -> version -> (prompt, labels)."""
        return self.thread.call(_dump, self.store)


async def _dump(store: PromptStore) -> dict[str, dict[int, tuple[str, frozenset[str]]]]:
    result: dict[str, dict[int, tuple[str, frozenset[str]]]] = {}
    page = 1
    while True:
        listing = await store.list_prompts(page=page, limit=100)
        for summary in listing.items:
            versions = result.setdefault(summary.name, {})
            for version in summary.versions:
                stored = await store.get(summary.name, version=version)
                assert stored is not None
                versions[version] = (json.dumps(stored.prompt.to_dict()["prompt"]),
                                     frozenset(stored.prompt.labels))
        if page >= listing.total_pages:
            return result
        page += 1


def item(name: str) -> str:
    return f"{PROMPTS}/{quote(name, safe='')}"


class ServerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.server = Server()
        # The model: name -> version -> [prompt (as stored JSON), labels without "latest"].
        self.model: dict[str, dict[int, list[Any]]] = {}
        self.types: dict[str, str] = {}
        self.deleted: set[str] = set()  # names that lost a version: gaps are allowed there

    def teardown(self) -> None:
        try:
            status, data = self.server.request("GET", "/api/public/health")
            assert (status, data["status"]) == (200, "OK")
            self.check_over_http()
        finally:
            self.server.close()

    # -- the model -------------------------------------------------------------------------

    def _created(self, name: str, version: int, prompt: Any, labels: list[str], kind: str) -> None:
        versions = self.model.setdefault(name, {})
        assert version == max(versions, default=0) + 1, (name, version, sorted(versions))
        for entry in versions.values():
            entry[1] = [label for label in entry[1] if label not in labels]
        versions[version] = [json.dumps(prompt), list(dict.fromkeys(labels))]
        self.types[name] = kind

    def _sync(self, data: dict[str, Any]) -> None:
        """A write the model did not predict succeeded (a random body that happened to be
        valid): take it as the model's, after checking its version number."""
        labels = [label for label in data["labels"] if label != "latest"]
        self._created(data["name"], data["version"], data["prompt"], labels, data["type"])

    # -- valid writes ----------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), kind=st.sampled_from(["text", "text", "chat"]),
          labels=st.lists(st.sampled_from(LABELS), max_size=3), text=st.text(max_size=20))
    def create(self, name: str, kind: str, labels: list[str], text: str) -> None:
        prompt: Any = text if kind == "text" else [{"role": "user", "content": text}]
        status, data = self.server.api("POST", PROMPTS, {"name": name, "type": kind,
                                                         "prompt": prompt, "labels": labels})
        if name in self.model and self.types[name] != kind:
            assert status == 400, data  # a name keeps its type
            return
        assert status == 201, data
        assert (data["name"], data["type"]) == (name, kind)
        self._created(name, data["version"], data["prompt"], labels, kind)

    @precondition(lambda self: bool(self.model))
    @rule(pick=st.integers(0, 100), version=st.integers(1, 6),
          labels=st.lists(st.sampled_from(LABELS), max_size=2))
    def patch(self, pick: int, version: int, labels: list[str]) -> None:
        name = sorted(self.model)[pick % len(self.model)]
        status, data = self.server.api("PATCH", f"{item(name)}/versions/{version}",
                                       {"newLabels": labels})
        versions = self.model[name]
        if version not in versions:
            assert status == 404, data
            return
        assert status == 200, data
        for number, entry in versions.items():
            if number != version:
                entry[1] = [label for label in entry[1] if label not in labels]
        versions[version][1] = list(dict.fromkeys([*labels, *versions[version][1]]))

    @precondition(lambda self: bool(self.model))
    @rule(pick=st.integers(0, 100), how=st.sampled_from(["all", "version", "label", "latest"]),
          version=st.integers(1, 6), label=st.sampled_from(LABELS))
    def delete(self, pick: int, how: str, version: int, label: str) -> None:
        name = sorted(self.model)[pick % len(self.model)]
        versions = self.model[name]
        query = {"all": "", "version": f"?version={version}", "label": f"?label={label}",
                 "latest": "?label=latest"}[how]
        doomed = {
            "all": set(versions),
            "version": {version} & set(versions),
            "label": {v for v, entry in versions.items() if label in entry[1]},
            "latest": {max(versions)},
        }[how]
        status, data = self.server.api("DELETE", item(name) + query)
        assert status == (204 if doomed else 404), data
        for number in doomed:
            del versions[number]
        self.deleted.add(name)
        if not versions:
            del self.model[name]
            del self.types[name]

    # -- bad input: nothing changes (or, when it happens to be valid, it is a valid write) -

    @rule(body=near_bodies)
    def create_near_miss(self, body: dict[str, Any]) -> None:
        status, data = self.server.api("POST", PROMPTS, body)
        if status == 201:
            self._sync(data)
        else:
            assert status == 400, data

    @rule(raw=raw_bodies, content_type=st.sampled_from(["application/json", "text/plain", ""]))
    def create_garbage(self, raw: bytes, content_type: str) -> None:
        headers = {**AUTH, "Content-Type": content_type} if content_type else dict(AUTH)
        status, data = self.server.request("POST", PROMPTS, raw, headers)
        assert status in (400, 413), data

    @precondition(lambda self: bool(self.model))
    @rule(pick=st.integers(0, 100), version=segments, body=json_values | near_bodies)
    def patch_garbage(self, pick: int, version: str, body: Any) -> None:
        name = sorted(self.model)[pick % len(self.model)]
        status, data = self.server.api("PATCH", f"{item(name)}/versions/{version}", body)
        assert status in (400, 404, 405), (version, body, data)

    @rule(method=methods, tail=path_tails, query=queries)
    def anything(self, method: str, tail: str, query: str) -> None:
        """Any method, path and query below the prompts API: an answer, never a crash.
        Writes are sent without a body, so none of them can succeed."""
        status, _ = self.server.request(method, PROMPTS + "/" + tail + query, None, dict(AUTH))
        if method in ("POST", "PATCH"):
            assert status in (400, 404, 405), (method, tail, query, status)
        if method == "DELETE" and status == 204:
            # A valid delete (e.g. of "p?version=1"): the model follows the store.
            self.deleted |= set(self.model)
            self._resync()

    @rule(method=st.sampled_from(["GET", "POST", "PATCH", "DELETE"]), tail=path_tails,
          headers=wrong_auth)
    def wrong_credentials(self, method: str, tail: str, headers: dict[str, str]) -> None:
        body = json.dumps({"name": "p", "prompt": "x"}).encode()
        status, data = self.server.request(method, PROMPTS + "/" + tail, body, headers)
        assert status == 401, data
        status, _ = self.server.request(method, PROMPTS, body, headers)
        assert status == 401

    @rule(extra=st.integers(1, 1000), chunked=st.booleans())
    def oversized(self, extra: int, chunked: bool) -> None:
        body = json.dumps({"name": "p", "prompt": "a" * (MAX_BODY_BYTES + extra)}).encode()
        headers = {**AUTH, "Content-Type": "application/json"}
        if chunked:
            headers["Transfer-Encoding"] = "chunked"
            chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
            connection = http.client.HTTPConnection(self.server.host, self.server.port,
                                                    timeout=10)
            try:
                connection.request("POST", PROMPTS, body=chunks, headers=headers,
                                   encode_chunked=True)
                status = connection.getresponse().status
            except (BrokenPipeError, ConnectionResetError):
                status = 413  # the server refused and closed while we were still sending
            finally:
                connection.close()
        else:
            status, _ = self.server.request("POST", PROMPTS, body, headers)
        assert status == 413

    # -- concurrent writers ----------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), writers=st.integers(2, 12))
    def concurrent_writers(self, name: str, writers: int) -> None:
        """Creates that all take "production" and patches that move "staging", at once, from
        threads. The order is unknown, so the model takes the store's state after, which the
        invariant then checks for consistency; the creates must get distinct, new versions.
        (No delete here: deleting the newest version frees its number for the next create.)"""
        before = max(self.model.get(name, {0: None}))
        kind = self.types.get(name, "text")
        created: list[int] = []

        def write(i: int) -> None:
            if i % 4 == 3:
                self.server.api("PATCH", f"{item(name)}/versions/{1 + i % 3}",
                                {"newLabels": ["staging"]})
            else:
                prompt: Any = f"w{i}" if kind == "text" else [{"role": "user", "content": "w"}]
                status, data = self.server.api("POST", PROMPTS, {
                    "name": name, "type": kind, "prompt": prompt, "labels": ["production"]})
                assert status == 201, data
                created.append(data["version"])

        threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive()
        assert sorted(created) == list(range(before + 1, before + 1 + len(created)))
        self._resync()
        if created and max(created) in self.model.get(name, {}):
            # "production" went with every create: it ends on the newest of them.
            assert "production" in self.model[name][max(created)][1]

    def _resync(self) -> None:
        self.model = {
            name: {v: [prompt, sorted(labels - {"latest"})] for v, (prompt, labels) in vs.items()}
            for name, vs in self.server.dump().items()
        }
        self.types = {name: self.types.get(name, "text") for name in self.model}
        for name in self.model:
            status, data = self.server.api("GET", item(name) + "?label=latest")
            assert status == 200, data
            self.types[name] = data["type"]

    # -- checks ----------------------------------------------------------------------------

    @invariant()
    def store_is_consistent_and_equal_to_the_model(self) -> None:
        stored = self.server.dump()
        for name, versions in stored.items():
            numbers = sorted(versions)
            if name not in self.deleted:
                assert numbers == list(range(1, len(numbers) + 1)), (name, numbers)
            labels = [label for _, held in versions.values() for label in held]
            assert len(labels) == len(set(labels)), (name, versions)  # one version per label
            newest = max(numbers)
            assert all(("latest" in held) == (v == newest) for v, (_, held) in versions.items())
        assert {
            name: {v: (prompt, frozenset(labels)) for v, (prompt, labels) in vs.items()}
            for name, vs in self.model.items()
        } == {
            name: {v: (prompt, held - {"latest"}) for v, (prompt, held) in vs.items()}
            for name, vs in stored.items()
        }

    def check_over_http(self) -> None:
        """What the API answers agrees with the store, label by label."""
        for name, versions in self.model.items():
            for label in [*LABELS, "latest"]:
                holders = [v for v, entry in versions.items() if label in entry[1]]
                if label == "latest":
                    holders = [max(versions)]
                status, data = self.server.api("GET", f"{item(name)}?label={label}")
                if holders:
                    assert (status, data["name"], data["version"]) == (200, name, holders[0])
                else:
                    assert status == 404, data


ServerMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestServerFuzz = ServerMachine.TestCase


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    try:
        yield running
    finally:
        running.close()


def test_many_concurrent_writers_leave_a_consistent_store(server: Server) -> None:
    """Forty threads create, move labels and delete on one name at once."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(40)

    def write(i: int) -> None:
        try:
            barrier.wait()
            for j in range(5):
                if (i + j) % 3 == 0:
                    server.api("PATCH", f"{item('hot')}/versions/{1 + (i * j) % 20}",
                               {"newLabels": [LABELS[j % len(LABELS)]]})
                elif (i + j) % 7 == 0:
                    server.api("DELETE", item("hot") + f"?version={1 + i % 30}")
                else:
                    status, data = server.api("POST", PROMPTS, {
                        "name": "hot", "prompt": f"{i}.{j}", "labels": [LABELS[i % 2]]})
                    assert status == 201, data
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    versions = server.dump()["hot"]
    labels = [label for _, held in versions.values() for label in held]
    assert len(labels) == len(set(labels))
    assert "latest" in versions[max(versions)][1]
    assert server.request("GET", "/api/public/health")[0] == 200


def test_health_needs_no_credentials_and_survives_garbage(server: Server) -> None:
    for raw in (b"\x00" * 100, b"GET / HTTP/1.1\r\n" * 3, b"A" * 10_000):
        connection = http.client.HTTPConnection(server.host, server.port, timeout=5)
        try:
            connection.connect()
            assert connection.sock is not None
            connection.sock.sendall(raw + b"\r\n\r\n")
            connection.sock.recv(65536)
        finally:
            connection.close()
    assert server.request("GET", "/api/public/health")[0] == 200
