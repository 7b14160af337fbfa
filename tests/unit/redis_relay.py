"""A TCP relay in front of a redis-server, for tests: it can drop what flows on a connection, one
way or both, without closing anything. So a connection dies without a word (as when a NAT or a
proxy forgets it), or Redis does the work and its answers never arrive."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Relayed:
    """One connection through the relay."""

    subscriber: bool = False  # it sent a SUBSCRIBE
    drop_up: bool = False  # the client's bytes no longer reach Redis
    drop_down: bool = False  # Redis's bytes no longer reach the client
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class RedisRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.relayed: list[Relayed] = []
        self.drop_answers = False  # Redis's answers dropped, on every connection, new ones too
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        """Listen; returns the URL to give the client."""
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    def silence_subscribers(self) -> None:
        """Every subscriber's connection dies silently: nothing passes either way, no FIN."""
        for conn in self.relayed:
            if conn.subscriber:
                conn.drop_up = conn.drop_down = True

    def subscribers(self) -> int:
        return sum(conn.subscriber for conn in self.relayed)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        conn = Relayed(writers=[writer, up_writer])
        self.relayed.append(conn)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            while data := await src.read(65536):
                conn.subscriber = conn.subscriber or (up and b"SUBSCRIBE" in data.upper())
                if not (conn.drop_up if up else conn.drop_down or self.drop_answers):
                    dst.write(data)
                    await dst.drain()
            if not (conn.drop_up or conn.drop_down):
                dst.close()

        conn.tasks = [
            asyncio.create_task(pipe(reader, up_writer, True)),
            asyncio.create_task(pipe(up_reader, writer, False)),
        ]
        await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in self.relayed:
            for task in conn.tasks:
                task.cancel()
            for writer in conn.writers:
                writer.close()
        await asyncio.gather(*(t for c in self.relayed for t in c.tasks), return_exceptions=True)
        closing = [w.wait_closed() for c in self.relayed for w in c.writers]
        await asyncio.gather(*closing, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])
