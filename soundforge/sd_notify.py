"""The sd_notify protocol, both ends: `Notifier` sends `READY=1`, `STATUS=...`, `WATCHDOG=1`,
`STOPPING=1` (and any other `KEY=value` lines) as one datagram to the AF_UNIX socket named by
`NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), and does nothing when the
variable is unset; `NotifyReceiver` binds such a socket and reads the messages, which is how the
supervisor hears from its worker processes (and how tests stand in for systemd).

Written here rather than taken from a library: the protocol is one `sendto` of newline-separated
`KEY=value` lines, and the maintained packages either wrap libsystemd (a C dependency) or lack
the abstract-namespace address and the receiving side.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import uuid
from collections.abc import Mapping
from types import TracebackType

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
WATCHDOG_PID = "WATCHDOG_PID"
MAX_DATAGRAM = 65536


def socket_address(name: str) -> str:
    """The address `socket.sendto/bind` takes: a leading `@` means the abstract namespace."""
    return "\0" + name[1:] if name.startswith("@") else name


def format_message(fields: Mapping[str, object]) -> bytes:
    """`KEY=value` lines; a value's newlines are flattened (STATUS is one line)."""
    lines = []
    for key, value in fields.items():
        text = " ".join(str(value).splitlines())
        lines.append(f"{key}={text}")
    return ("\n".join(lines) + "\n").encode()


def parse_message(data: bytes) -> dict[str, str]:
    """The `KEY=value` fields of one datagram (lines without `=` are ignored)."""
    fields: dict[str, str] = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value
    return fields


def watchdog_interval_s(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`, as systemd advises); None when
    no watchdog is asked for, or it is meant for another process (`WATCHDOG_PID`)."""
    usec = environ.get(WATCHDOG_USEC)
    if not usec:
        return None
    meant_for = environ.get(WATCHDOG_PID)
    if meant_for and int(meant_for) != (pid if pid is not None else os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring %s=%r: not a number of microseconds", WATCHDOG_USEC, usec)
        return None
    return value / 2_000_000 if value > 0 else None


class Notifier:
    """Sends notifications to one socket; never raises (a missing manager is not our failure)
    and never hangs: a receiver whose queue is full (a manager that stopped reading) makes a
    send wait at most `send_timeout_s`, then the message is dropped."""

    def __init__(self, address: str | None, send_timeout_s: float = 1.0) -> None:
        self.address = address
        self.send_timeout_s = send_timeout_s
        self._socket: socket.socket | None = None

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, send_timeout_s: float = 1.0
    ) -> Notifier:
        environ = os.environ if environ is None else environ
        return cls(environ.get(NOTIFY_SOCKET) or None, send_timeout_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: object) -> bool:
        """Send the fields as one datagram; False when disabled or the send failed."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.settimeout(self.send_timeout_s)
            self._socket.sendto(format_message(fields), socket_address(self.address))
        except OSError as error:
            log.debug("sd_notify to %s failed: %s", self.address, error)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields: dict[str, object] = {"READY": 1, "MAINPID": os.getpid()}
        if status is not None:
            fields["STATUS"] = status
        return self.send(**fields)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        fields: dict[str, object] = {"STOPPING": 1}
        if status is not None:
            fields["STATUS"] = status
        return self.send(**fields)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


SENDER_PID = "_PID"
"""The field a received message carries with the sender's pid as the kernel reports it
(SO_PASSCRED); a field of that name in the message body is dropped, as systemd does with its
trusted fields."""
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class NotifyReceiver:
    """A bound AF_UNIX datagram socket that reads sd_notify messages, each with the pid of its
    sender (`SENDER_PID`) from the kernel's credentials, so a message cannot speak for another
    process by naming it in `MAINPID`.

    With no address it binds a fresh abstract-namespace name (nothing on disk to clean up)."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address or f"@soundforge-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.passes_credentials = hasattr(socket, "SO_PASSCRED")
        if self.passes_credentials:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.socket.bind(socket_address(self.address))
        self.socket.setblocking(False)

    def fileno(self) -> int:
        return self.socket.fileno()

    def receive(self, timeout_s: float | None = None) -> dict[str, str] | None:
        """The next message's fields, waiting up to `timeout_s` (None: do not wait)."""
        if timeout_s is None:
            self.socket.setblocking(False)
        else:
            self.socket.settimeout(timeout_s)
        try:
            data, ancillary, _flags, _address = self.socket.recvmsg(
                MAX_DATAGRAM, socket.CMSG_SPACE(_UCRED.size)
            )
        except (BlockingIOError, TimeoutError):
            return None
        finally:
            self.socket.setblocking(False)
        fields = {k: v for k, v in parse_message(data).items() if k != SENDER_PID}
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, getattr(socket, "SCM_CREDENTIALS", None)):
                fields[SENDER_PID] = str(_UCRED.unpack(payload[: _UCRED.size])[0])
        return fields

    def drain(self) -> list[dict[str, str]]:
        """Every message waiting now."""
        messages = []
        while (message := self.receive()) is not None:
            messages.append(message)
        return messages

    def close(self) -> None:
        self.socket.close()
        if not self.address.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)

    def __enter__(self) -> NotifyReceiver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
