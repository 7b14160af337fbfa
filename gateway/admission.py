"""Admission before the body: what one tenant may hold in this process, checked before a byte
of its body is read.

Two bounds, both per process (they are about this process's memory, not the account's slots):

- `tenants.NAME.max_queue`: the tenant's requests in the chat handler, in flight or waiting
  for a slot. Past it, 429 with `Retry-After`, and its body stays unread on the socket.
- `server.max_buffered_body_bytes`: the bytes of request bodies held, every request of every
  tenant together, from the moment a body is admitted to the end of its request (the body is
  needed for retries). One tenant may hold at most half of it, so that another always finds
  room: past its half, 429; past the whole, 503 `overloaded`. A declared `Content-Length` is
  reserved whole before reading; a chunked body is reserved chunk by chunk as it arrives.
"""

from __future__ import annotations

from types import TracebackType

from gateway.config import Tenant
from gateway.errors import Overloaded, TenantQueueFull

MIB = 1024 * 1024


class Admission:
    def __init__(self, max_buffered_body_bytes: int) -> None:
        self.max_bytes = max_buffered_body_bytes
        self.held = 0  # body bytes reserved, every tenant
        self._requests: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    def enter(self, tenant: Tenant, declared: int | None) -> Ticket:
        """A ticket for one request, its declared body reserved; TenantQueueFull or Overloaded
        if the tenant or the process is at its bound."""
        name = tenant.name
        count = self._requests.get(name, 0)
        if count >= tenant.max_queue:
            raise TenantQueueFull(
                f"Tenant {name!r} already has {count} requests in flight or waiting in this "
                f"gateway process (tenants.{name}.max_queue): retry after a moment."
            )
        ticket = Ticket(self, tenant)
        self._requests[name] = count + 1
        if declared:
            try:
                ticket.grow(declared)
            except Exception:
                ticket.close()
                raise
        return ticket

    def reserve(self, name: str, size: int) -> None:
        mine = self._bytes.get(name, 0) + size
        if mine > self.max_bytes // 2:
            raise TenantQueueFull(
                f"Tenant {name!r}'s requests already hold {mine // MIB} MiB of request bodies "
                f"in this gateway process, more than half of server.max_buffered_body_bytes "
                f"({self.max_bytes // MIB} MiB): retry after a moment."
            )
        if self.held + size > self.max_bytes:
            raise Overloaded(
                f"The gateway holds {self.held // MIB} MiB of request bodies, its bound "
                f"(server.max_buffered_body_bytes) is {self.max_bytes // MIB} MiB: retry after "
                "a moment."
            )
        self._bytes[name] = mine
        self.held += size

    def release(self, name: str, size: int) -> None:
        self.held -= size
        if (left := self._bytes.get(name, 0) - size) > 0:
            self._bytes[name] = left
        else:
            self._bytes.pop(name, None)
        if (count := self._requests[name] - 1) > 0:
            self._requests[name] = count
        else:
            del self._requests[name]

    def requests(self, name: str) -> int:
        return self._requests.get(name, 0)


class Ticket:
    """One request's place: its bytes reserved so far; released once, when the request ends."""

    __slots__ = ("_admission", "_name", "_open", "size")

    def __init__(self, admission: Admission, tenant: Tenant) -> None:
        self._admission = admission
        self._name = tenant.name
        self._open = True
        self.size = 0

    def grow(self, size: int) -> None:
        """Reserve `size` more bytes, or raise as `Admission.enter` does."""
        self._admission.reserve(self._name, size)
        self.size += size

    def close(self) -> None:
        if self._open:
            self._open = False
            self._admission.release(self._name, self.size)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
