"""aioftp's client as FTP Pooler uses it: TLS contexts per connection and FTPS data channels
opened the way vsftpd and ProFTPD expect them."""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aioftp
from aioftp.common import SSLSessionBoundContext

from models.connections import FtpConnection
from pools.wire import read_reply


@functools.lru_cache(maxsize=256)
def tls_context(connection: FtpConnection) -> ssl.SSLContext | None:
    """The TLS settings of ``connection`` (one context per connection, shared by its sessions)."""
    if connection.tls == "none":
        return None
    cafile = str(connection.tls_ca_file) if connection.tls_ca_file else None
    context = ssl.create_default_context(cafile=cafile)
    if not connection.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class FtpClient(aioftp.Client):
    """aioftp's client with FTPS data connections opened the way servers expect them.

    aioftp 0.28.3 wraps a data connection in TLS while opening it, before RETR/STOR is sent;
    vsftpd and ProFTPD start their side of the handshake only after their 150 reply, so that
    handshake would wait forever. Here a data connection opens as plain TCP and
    :meth:`protect_data` upgrades it after the 150, resuming the control connection's TLS
    session (vsftpd's ``require_ssl_reuse`` and ProFTPD's default refuse a data connection that
    does not) and checking the certificate against ``server_name`` on both channels.
    """

    def __init__(self, *, server_name: str | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_name = server_name
        # Whether the last protected data connection resumed the control connection's session.
        self.data_session_reused: bool | None = None
        self._data_writer: asyncio.StreamWriter | None = None

    async def parse_response(self) -> tuple[aioftp.Code, list[str]]:
        """aioftp's reply reader, bounded in lines and bytes and tolerant of non-UTF-8 text
        (see :func:`pools.wire.read_reply`), for the replies aioftp reads (login, TLS)."""
        code, info = await read_reply(self.stream.readline, self.stream.close)
        return aioftp.Code(code), info

    async def wait_closed(self) -> None:
        """Wait until the control and the last data connection are closed (after close()).

        A TLS transport closes only after its close_notify exchange; waiting for it releases
        the sockets now rather than whenever the exchange ends (or the event loop does).
        """
        writers = [w for w in (self._data_writer, self._stream and self._stream.writer) if w]
        for writer in writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)

    async def _open_connection(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # Control connection: TLS from the first byte when implicit. Data connection: plain here.
        context = self.ssl if self._stream is None else None
        extra: dict[str, Any] = {}
        if context:
            extra["server_hostname"] = self.server_name or host
        return await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context, **extra), self.connection_timeout
        )

    @property
    def control_tls(self) -> ssl.SSLObject | None:
        """The control connection's TLS state, or None while it is plain."""
        stream = self._stream
        if stream is None:
            return None
        tls: ssl.SSLObject | None = stream.writer.transport.get_extra_info("ssl_object")
        return tls

    async def upgrade_to_tls(self, sslcontext: ssl.SSLContext | None = None) -> None:
        """AUTH TLS on the control connection, verified against ``server_name``."""
        assert sslcontext is not None
        await self.command("AUTH TLS", "234")
        await self.stream.start_tls(sslcontext, self.server_name or self.server_host)

    async def protect_data(self, writer: asyncio.StreamWriter) -> None:
        """Upgrade an opened data connection to TLS, resuming the control connection's session."""
        control = self.control_tls
        if control is None:
            return
        context: ssl.SSLContext = control.context
        if control.session is not None:  # None: no ticket yet, so nothing to resume
            context = SSLSessionBoundContext(
                ssl.PROTOCOL_TLS_CLIENT, context=control.context, session=control.session
            )
        await writer.start_tls(
            context,
            server_hostname=self.server_name or self.server_host,
            ssl_handshake_timeout=self.socket_timeout,
        )

    @asynccontextmanager
    async def data_stream(
        self, command: str, reply_within: float | None = None
    ) -> AsyncIterator[aioftp.DataConnectionThrottleStreamIO]:
        """Open a passive data connection for ``command`` (RETR/STOR), protected when FTPS.

        Like aioftp's ``download_stream``/``upload_stream``: a clean exit closes the data
        connection and waits for the server's 2xx; an exception only closes it. Opening it
        (EPSV, connect, the 1xx, TLS) and the final reply must each come within ``reply_within``.
        """
        self.data_session_reused = None
        async with asyncio.timeout(reply_within):
            reader, writer = await self.get_passive_connection("I")
        self._data_writer = writer
        try:
            async with asyncio.timeout(reply_within):
                await self.command(command, "1xx")
                await self.protect_data(writer)
            data_tls = writer.transport.get_extra_info("ssl_object")
            if data_tls is not None:
                self.data_session_reused = bool(data_tls.session_reused)
        except BaseException:
            writer.close()
            raise
        stream = aioftp.DataConnectionThrottleStreamIO(
            self, reader, writer, throttles={"_": self.throttle}, timeout=self.socket_timeout
        )
        try:
            yield stream
        except BaseException:
            stream.close()
            raise
        async with asyncio.timeout(reply_within):
            await stream.finish()
