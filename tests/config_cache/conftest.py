"""Fixtures: real LevelDB directories under tmp_path and a real SecantusDB
(MongoDB wire protocol) server on a free loopback port."""

from __future__ import annotations

import copy
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from secantus import SecantusDBServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MongoServer:
    """A SecantusDB server that can be stopped and restarted on the same port."""

    def __init__(self, storage: Path, port: int | None = None) -> None:
        self.storage = storage
        self.port = port or free_port()
        self._server: SecantusDBServer | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        server = SecantusDBServer(port=self.port, storage_path=str(self.storage))
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> MongoClient[dict[str, Any]]:
        return MongoClient(self.url, serverSelectionTimeoutMS=3000)


@pytest.fixture(scope="session")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """One shared running server; tests isolate themselves with `dbname`."""
    server = MongoServer(tmp_path_factory.mktemp("secantus"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mongo_down(tmp_path: Path) -> Iterator[MongoServer]:
    """A server not yet started: its port refuses connections until start()."""
    server = MongoServer(tmp_path / "secantus")
    yield server
    server.stop()


@pytest.fixture
def dbname() -> str:
    return "t" + uuid.uuid4().hex[:12]


_ACME: dict[str, Any] = {
    "id": "acme",
    "rev": 1,
    "name": "Acme",
    "timezone": "Europe/Paris",
    "numbers": {"+33100000001": {"route": "ivr:main"}, "+33100000002": "group:sales"},
    "users": {"100": {"name": "Alice", "password": "pw100"}, "101": {"password": "pw101"}},
    "ring_groups": {"sales": {"members": ["100", "101"]}},
    "outbound_routes": [
        {"prefix": "0", "trunk_group": "pstn", "strip": 1, "prepend": "+33"},
        {"prefix": "00", "trunk_group": "intl", "strip": 2, "prepend": "+"},
    ],
    "flows": {
        "main": {
            "start": "hello",
            "nodes": {
                "hello": {"type": "play", "prompts": ["welcome"], "next": "sales"},
                "sales": {"type": "transfer", "targets": ["group:sales"]},
            },
        }
    },
}


def _acme(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(_ACME)
    doc.update(changes)
    return doc


@pytest.fixture
def acme() -> Any:
    """Factory of a valid tenant document: ``acme(rev=2, ...)``."""
    return _acme
