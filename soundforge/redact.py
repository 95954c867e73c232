"""The one masking function for secrets in text: URL user-info (`user:***@`), signed or secret
query parameters (`sig=***`, `X-Amz-Signature=***`, `token=***`...) and database passwords
(`password=***`, in URLs and libpq key=value strings, malformed ones too).

Everything SoundForge stores for display, logs, notifies or prints passes through `mask_text`
(or `mask_url` for one URL); the credential a download needs stays only where the download reads
it (`download_credentials`, a table no view shows). `install_log_redaction` applies it to every
log record, so a library logging a URL (httpx, yt-dlp, Procrastinate) cannot leak one either.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import Any

MASK = "***"
SECRET_PARAMETERS = frozenset({
    "sig", "signature", "token", "access_token", "refresh_token", "id_token", "key", "api_key",
    "apikey", "api-key", "password", "passwd", "pwd", "pass", "secret", "client_secret",
    "auth", "authorization", "credential", "credentials", "session", "sessionid",
    "key-pair-id", "policy", "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    "x-goog-signature", "x-goog-credential", "x-goog-security-token", "se", "sp", "sv",
})  # fmt: skip
"""Query parameter names (lower case) whose value is masked."""
SECRET_NAME_PARTS = ("signature", "token", "secret", "password", "credential")
"""A parameter whose name contains one of these is masked too (`X-Custom-Signature`)."""
SIGNED_COMPANIONS = frozenset({"expires", "x-amz-expires", "x-goog-expires", "x-amz-date"})
"""Masked alongside a signature: with it they complete a replayable signed request."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_KEYWORD_PASSWORD = re.compile(r"\b(password|passwd)(\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.I)
_AUTHORITY = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)")


def _is_secret_name(name: str) -> bool:
    lowered = name.strip().lower()
    return lowered in SECRET_PARAMETERS or any(part in lowered for part in SECRET_NAME_PARTS)


def _mask_pairs(text: str) -> str:
    """`a=1&sig=x` -> `a=1&sig=***` keeping every other byte as it was."""
    pieces = text.split("&")
    names = [urllib.parse.unquote_plus(piece.split("=", 1)[0]) for piece in pieces]
    signed = any(_is_secret_name(name) for name in names)
    masked = []
    for piece, name in zip(pieces, names, strict=True):
        secret = _is_secret_name(name) or (signed and name.strip().lower() in SIGNED_COMPANIONS)
        if secret and "=" in piece:
            masked.append(piece.split("=", 1)[0] + "=" + MASK)
        else:
            masked.append(piece)
    return "&".join(masked)


def _mask_userinfo(authority: str) -> str:
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return authority
    user, colon, _password = userinfo.partition(":")
    return f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"


def mask_url(url: str) -> str:
    """`url` with its user-info and secret query/fragment parameters masked. Never raises:
    a URL that does not parse is masked by pattern."""
    match = _AUTHORITY.match(url)
    if match is None:
        return mask_text(url) if "://" in url else url
    scheme, authority = match.groups()
    if scheme.lower().startswith("postgres"):
        # Database URLs are often malformed by an unescaped '@', '/', '?' or '#' in the
        # password: everything up to the last '@' is user-info.
        userinfo_end = url.rfind("@")
        if userinfo_end > len(scheme):
            authority = url[len(scheme) : userinfo_end + 1]
            masked = _mask_userinfo(authority + "host")[: -len("host")]
            return scheme + masked + _mask_rest(url[userinfo_end + 1 :])
    return scheme + _mask_userinfo(authority) + _mask_rest(url[match.end() :])


def _mask_rest(rest: str) -> str:
    path, hash_mark, fragment = rest.partition("#")
    path, query_mark, query = path.partition("?")
    if query:
        query = _mask_pairs(query)
    if fragment and "=" in fragment:
        fragment = _mask_pairs(fragment)
    return path + query_mark + query + hash_mark + fragment


def mask_text(text: str) -> str:
    """`text` with every URL in it masked (`mask_url`) and every `password=...` pair of a
    libpq connection string too."""
    masked = _URL.sub(lambda match: mask_url(match.group(0)), text)
    return _KEYWORD_PASSWORD.sub(lambda match: match[1] + match[2] + MASK, masked)


def _connection_secrets(conninfo: str) -> list[str]:
    """The password a connection string carries, as libpq might read it and as a person meant
    it (up to the last '@'), raw and percent-decoded."""
    found: list[str] = []
    match = _AUTHORITY.match(conninfo)
    if match is not None:
        userinfo = conninfo[len(match[1]) : max(conninfo.rfind("@"), len(match[1]))]
        first_at = userinfo.split("@", 1)[0]
        for candidate in (userinfo, first_at):
            if ":" in candidate:
                found.append(candidate.split(":", 1)[1])
        query = conninfo.partition("?")[2]
        for piece in query.split("&"):
            name, _, value = piece.partition("=")
            if name.lower() == "password":
                found.append(value)
    for keyword in _KEYWORD_PASSWORD.finditer(conninfo):
        found.append(keyword[3].strip("'"))
    decoded = [urllib.parse.unquote(secret) for secret in found]
    return sorted({secret for secret in found + decoded if secret}, key=len, reverse=True)


def mask_database_text(conninfo: str, text: str) -> str:
    """`text` (an error about `conninfo`) with the connection's password masked wherever it
    appears, however the driver quoted it, and every other secret as `mask_text` masks it."""
    for secret in _connection_secrets(conninfo):
        text = text.replace(secret, MASK)
    return mask_text(text)


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: logging reports it when it formats the record
        return
    masked = mask_text(message)
    if masked != message:
        record.msg, record.args = masked, ()


def install_log_redaction() -> None:
    """Mask secrets in every log record this process creates, whichever handler or library
    (httpx, yt-dlp, Procrastinate's job lines) it comes from: a record factory, so it holds
    however logging is configured later. Idempotent."""
    current = logging.getLogRecordFactory()
    if getattr(current, "soundforge_redacting", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        _redact_record(record)
        return record

    redacting_factory.soundforge_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
