"""`volley agent`: startup, serve until a signal, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc

from agent.auth import MalformedRequestGuard, TokenAuthInterceptor
from agent.config import AgentConfig
from agent.lifeline import exit_with_parent_from_env
from agent.procs import warm
from agent.service import AgentService
from volley.plan import parse_address
from volley.security import check_listen
from volley.v1 import control_pb2_grpc as pb_grpc

log = logging.getLogger("volley.agent")

#: The largest message the agent receives, from anyone: larger plans come in chunks
#: over UploadPlan, whose token is checked before any chunk is read.
MAX_RECEIVE_BYTES = 4 * 1024 * 1024
#: Concurrent streams per connection (HTTP/2 SETTINGS) and calls in all: an
#: unauthenticated one is refused at once and reads nothing, but still holds a stream.
MAX_STREAMS_PER_CONNECTION = 16
MAX_CONCURRENT_RPCS = 64

SERVER_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
    ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
]


class AgentServer:
    """An agent's gRPC server; `async with AgentServer(cfg) as s:` serves on s.port."""

    def __init__(self, cfg: AgentConfig) -> None:
        """Raises volley.security.SecurityError for a non-loopback listen address
        without authentication."""
        self.cfg = cfg
        host, _ = parse_address(cfg.listen, "--listen")
        check_listen(host, cfg.token, cfg.tls)
        self.auth = TokenAuthInterceptor(cfg.token) if cfg.token else None
        guards = [self.auth] if self.auth else []
        self.server = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[*guards, MalformedRequestGuard()],
            maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS,
        )
        self.service = AgentService(cfg)
        pb_grpc.add_AgentControlServicer_to_server(self.service, self.server)
        self.port = 0

    async def start(self) -> int:
        if self.cfg.tls is not None:
            self.port = self.server.add_secure_port(self.cfg.listen, self.cfg.tls.credentials())
        else:
            self.port = self.server.add_insecure_port(self.cfg.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.cfg.listen}")
        warm()  # the workers' fork server imports while the agent serves (agent.procs)
        await self.server.start()
        if self.cfg.port_file:
            tmp = Path(self.cfg.port_file + ".tmp")
            tmp.write_text(str(self.port))
            tmp.replace(self.cfg.port_file)
        tls = self.cfg.tls
        log.info(
            "agent %s listening on port %d with %d workers (%s, %s)",
            self.cfg.agent_id,
            self.port,
            self.cfg.workers,
            "mutual TLS" if tls and tls.mutual else "TLS" if tls else "plaintext",
            "token required" if self.cfg.token else "no token",
        )
        if not self.cfg.token and not (tls and tls.mutual):
            log.warning(
                "no token and no client certificates: this agent trusts every local user "
                "(any process on this host can make it send load, to any target)"
            )
        if self.cfg.header_secrets:
            log.info("header secrets: %s", ", ".join(name for name, _ in self.cfg.header_secrets))
        return self.port

    async def stop(self, grace: float = 2.0) -> None:
        session = self.service.session
        if session is not None:
            session.stop("agent shutting down")
            # let the workers drain and the spool close (records are never dropped quietly)
            await session.wait(timeout=max(grace, 5.0))
        await self.server.stop(grace)

    async def __aenter__(self) -> AgentServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(cfg: AgentConfig) -> None:
    """Run an agent until SIGINT/SIGTERM."""
    exit_with_parent_from_env()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with AgentServer(cfg):
        await stop.wait()
    log.info("agent stopped")
