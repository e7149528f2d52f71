"""The plugin's decisions as plain functions of their inputs (headers, settings, the clock),
so that `python -m unittest` checks them with any Python; app.py feeds them from the host.

The same checks, in the same order and with the same messages, as the Rust jwt-auth plugin.
Everything is imported at the top: a component holds only the modules imported while it was
built.
"""

import base64
import hashlib
import hmac
import json
import warnings  # noqa: F401  (hmac imports it lazily; the component must hold it)
from typing import Optional

PREFIX = "jwt-auth: "
DEFAULT_SEND_PREFIXES = "/topic/,/user/"
MAX_TOKEN_LEN = 16 * 1024

Headers = list[tuple[str, str]]


class Refused(Exception):
    """A refusal; its message is the client's ERROR message."""


def header(headers: Headers, name: str) -> Optional[str]:
    """The first value of header `name` (STOMP: the first occurrence wins)."""
    for key, value in headers:
        if key == name:
            return value
    return None


def printable(text: str) -> str:
    """Client text made safe to echo: control characters become `?`, cut at 64 characters."""
    shown = "".join("?" if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F else c for c in text[:64])
    return shown + "..." if len(text) > 64 else shown


def csv(setting: str) -> list[str]:
    """The non-empty, trimmed items of a comma-separated setting."""
    return [item.strip() for item in setting.split(",") if item.strip()]


def b64url(part: str) -> Optional[bytes]:
    """base64url, `=` padding tolerated; None for anything else."""
    bare = part.rstrip("=")
    if len(bare) % 4 == 1 or len(part) - len(bare) > 2:
        return None
    if any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in bare):
        return None
    data = base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    # One spelling per value: spare bits must be zero.
    if base64.urlsafe_b64encode(data).decode().rstrip("=") != bare:
        return None
    return data


def _json_object(part: str, not_b64: str, not_object: str) -> dict:
    data = b64url(part)
    if data is None:
        raise Refused(f"malformed token: {not_b64}")
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise Refused(f"malformed token: {not_object}") from None
    if not isinstance(value, dict):
        raise Refused(f"malformed token: {not_object}")
    return value


def _seconds(value: float) -> str:
    return f"{int(value) if float(value).is_integer() else value} (unix seconds)"


def _time_claim(claims: dict, name: str) -> Optional[float]:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(f"token claim '{name}' is not a number")
    return float(value)


def verify(token: str, secret: str, now_ms: int) -> tuple[str, dict]:
    """Verifies an HS256 `token`: the subject and every claim, or Refused."""
    if len(token) > MAX_TOKEN_LEN:
        raise Refused(f"token is longer than {MAX_TOKEN_LEN} bytes")
    parts = token.split(".")
    if len(parts) != 3:
        raise Refused(
            "malformed token: expected three dot-separated parts (header.payload.signature)"
        )
    header_b64, payload_b64, signature_b64 = parts
    head = _json_object(header_b64, "header is not base64url", "header is not a JSON object")
    alg = head.get("alg")
    if alg is None:
        raise Refused("malformed token: header has no 'alg'")
    if not isinstance(alg, str):
        raise Refused("malformed token: header 'alg' is not a string")
    if alg != "HS256":
        raise Refused(f"token algorithm '{alg}' is not accepted (only HS256 is)")
    if "crit" in head:
        raise Refused("token header has 'crit' extensions, not supported")
    signature = b64url(signature_b64)
    if signature is None:
        raise Refused("malformed token: signature is not base64url")
    expected = hmac.new(
        secret.encode(), f"{header_b64}.{payload_b64}".encode(), hashlib.sha256
    ).digest()
    if not hmac.compare_digest(expected, signature):
        raise Refused("bad token signature")
    claims = _json_object(payload_b64, "payload is not base64url", "payload is not a JSON object")
    now_s = now_ms / 1000
    exp = _time_claim(claims, "exp")
    if exp is None:
        raise Refused("token has no 'exp' claim (expiry is required)")
    if now_s >= exp:
        raise Refused(f"token expired at {_seconds(exp)}")
    nbf = _time_claim(claims, "nbf")
    if nbf is not None and now_s < nbf:
        raise Refused(f"token is not valid before {_seconds(nbf)}")
    sub = claims.get("sub")
    if not isinstance(sub, str) or sub == "":
        raise Refused("token has no 'sub' claim (the user)")
    return sub, claims


def _strip_bearer(token: str) -> str:
    token = token.strip()
    return token[7:].lstrip() if token[:7].lower() == "bearer " else token


def authenticate(headers: Headers, secret: Optional[str], now_ms: int) -> tuple[str, Headers]:
    """Decides a CONNECT: the user and its attributes, or Refused."""
    if secret is None:
        raise Refused(f"{PREFIX}tenant setting jwt_secret is not set")
    if secret == "":
        raise Refused(f"{PREFIX}tenant setting jwt_secret is empty")
    tokens = [_strip_bearer(t) for t in (header(headers, "token"), header(headers, "passcode")) if t is not None]
    token = next((t for t in tokens if t), None)
    if token is None:
        raise Refused(
            f"{PREFIX}no token: send the JWT in the CONNECT 'token' (or 'passcode') header"
        )
    try:
        sub, claims = verify(token, secret, now_ms)
    except Refused as refusal:
        raise Refused(f"{PREFIX}{refusal}") from None
    userid = header(headers, "userid")
    if userid and userid != sub:
        raise Refused(f"{PREFIX}userid '{printable(userid)}' does not match the token's subject")
    attributes = [("auth", "jwt")]
    attributes += [
        (name, value)
        for name, value in sorted(claims.items())
        if name not in ("sub", "auth") and isinstance(value, str)
    ]
    return sub, attributes


def _under(text: str, prefix: str) -> bool:
    return text.startswith(prefix) and len(text) > len(prefix)


def authorize(user: str, subscribe: bool, destination: str, send_prefixes: Optional[str]) -> None:
    """Allows, or raises Refused: SUBSCRIBE to /topic/... and the user's own /user/...
    destinations; SEND to the send_prefixes; never a path with an empty, . or .. segment."""
    shown = printable(destination)
    segments = destination.split("/")[1:]
    if not destination.startswith("/") or any(s in ("", ".", "..") for s in segments):
        raise Refused(f"{PREFIX}destination '{shown}' has an empty, '.' or '..' path segment")
    if subscribe:
        if _under(destination, "/topic/"):
            return
        if destination.startswith("/user/"):
            rest = destination[len("/user/"):]
            if _under(rest, "queue/") or _under(rest, "topic/"):
                return
            if user and _under(rest, f"{user}/"):
                return
            if not user:
                raise Refused(f"{PREFIX}an anonymous session cannot subscribe to '{shown}'")
            raise Refused(
                f"{PREFIX}'{printable(user)}' may not subscribe to '{shown}': only to its own "
                "/user/queue/... and /user/topic/... destinations"
            )
        raise Refused(
            f"{PREFIX}subscribing to '{shown}' is not allowed: only /topic/... and your own "
            "/user/queue/... or /user/topic/... destinations"
        )
    allowed = csv(DEFAULT_SEND_PREFIXES if send_prefixes is None else send_prefixes)
    if any(destination.startswith(p) for p in allowed):
        return
    if not allowed:
        raise Refused(f"{PREFIX}SEND is not allowed on this tenant")
    raise Refused(
        f"{PREFIX}sending to '{shown}' is not allowed: allowed prefixes are {', '.join(allowed)}"
    )


def resolve_channel(table: Optional[str], code: str) -> Optional[str]:
    """Looks `code` up in `CODE=/destination,...`; None when unknown."""
    if table is None:
        return None
    for item in csv(table):
        name, sep, destination = item.partition("=")
        if sep and name.strip() == code:
            return destination.strip() or None
    return None
