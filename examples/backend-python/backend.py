"""A stompbox backend in Python: what a Spring @MessageMapping method did, for any language.

Clients SEND to /app/...; the node appends each message to the tenant's Redis stream
(``[tenants.upstream] stream = true``). This backend reads the stream with a consumer group,
answers each message through the publish API to the sender (``receiver`` = its user) at its
``reply-to`` destination, with its ``correlation-id``, and acknowledges the entry once the
answer was accepted (202). Entries it did not acknowledge stay pending and are read again.

    REDIS_URL=redis://127.0.0.1:6379 STOMPBOX_URL=http://127.0.0.1:8080 API_KEY=... \\
    TENANT=default python backend.py

Handles /app/echo (replies "echo: BODY") and /app/upper (replies BODY in upper case).
"""

import json
import os
import socket
import time
import urllib.error
import urllib.request

import redis

TENANT = os.environ.get("TENANT", "default")
STREAM = os.environ.get("STREAM", "sb:{%s}:upstream" % TENANT)
GROUP = os.environ.get("GROUP", "backend-python")
CONSUMER = os.environ.get("CONSUMER", "%s-%d" % (socket.gethostname(), os.getpid()))
API = os.environ.get("STOMPBOX_URL", "http://127.0.0.1:8080")
API_KEY = os.environ.get("API_KEY", "")

HANDLERS = {
    "/app/echo": lambda body: "echo: " + body,
    "/app/upper": lambda body: body.upper(),
}


def reply(entry):
    """Answers one message; True when there was nothing to answer or the answer was taken."""
    handler = HANDLERS.get(entry.get("destination"))
    headers = json.loads(entry.get("headers") or "{}")
    reply_to = headers.get("reply-to", "")
    if handler is None or not entry.get("user") or not reply_to.startswith("/user/"):
        return True
    body = {
        "receiver": entry["user"],
        "destination": reply_to[len("/user"):],
        "content": handler(entry.get("body", "")),
        "headers": {"correlation-id": headers["correlation-id"]} if "correlation-id" in headers else {},
    }
    request = urllib.request.Request(
        "%s/api/v1/tenants/%s/publish" % (API, TENANT),
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + API_KEY, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status == 202
    except urllib.error.HTTPError as e:
        print("publish answered %d: %s" % (e.code, e.read().decode(errors="replace")), flush=True)
        return False
    except OSError as e:
        print("publish failed: %s" % e, flush=True)
        return False


def main():
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"), decode_responses=True)
    try:
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except redis.ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
    print("backend-python reading %s as %s/%s" % (STREAM, GROUP, CONSUMER), flush=True)
    start = "0"  # first what this consumer was given and never acknowledged
    while True:
        read = client.xreadgroup(GROUP, CONSUMER, {STREAM: start}, count=100, block=2000)
        entries = read[0][1] if read else []
        if start == "0" and not entries:
            start = ">"
        failed = False
        for entry_id, fields in entries:
            if not fields:
                continue  # deleted meanwhile
            if fields.get("type") != "message" or reply(fields):
                client.xack(STREAM, GROUP, entry_id)
            else:
                failed = True
        if failed:
            time.sleep(1)
            start = "0"


if __name__ == "__main__":
    main()
