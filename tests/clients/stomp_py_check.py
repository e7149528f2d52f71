#!/usr/bin/env python3
"""Checks a running stompbox node with stomp.py (9.0.0), a STOMP client nobody on the team wrote.

    python stomp_py_check.py --http 127.0.0.1:PORT --stomp 127.0.0.1:PORT --api-key KEY

Every scenario runs over each transport/version the library offers:

    tcp-1.1  stomp.Connection11 over TCP
    tcp-1.2  stomp.Connection12 over TCP
    ws-1.2   stomp.WSStompConnection (1.2 only) at /ws, offering no subprotocol (the library's
             default: websocket-client sends no Sec-WebSocket-Protocol unless told)
    ws-1.1   the library's WSTransport under its Protocol11, offering subprotocol v11.stomp

Each scenario prints `ok <variant>/<scenario>` or `FAIL <variant>/<scenario>: why`; the exit
code is 1 when any failed. Every wait is bounded (WAIT seconds), and a watchdog ends the
process if the whole run takes longer than --deadline seconds.
"""

import argparse
import json
import os
import socket
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid

import stomp
from stomp.adapter.ws import WSStompConnection, WSTransport
from stomp.connect import BaseConnection
from stomp.protocol import Protocol11

WAIT = 5.0  # longest wait for something that should happen
QUIET = 0.3  # how long to watch for something that should not happen


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def uniq(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def addr(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


# --- clients -------------------------------------------------------------------------------


class Recorder(stomp.ConnectionListener):
    """Remembers what a connection received, and lets the checks wait for it."""

    def __init__(self, name):
        self.name = name
        self.cond = threading.Condition()
        self.connected = None
        self.messages = []
        self.receipts = []
        self.errors = []
        self.disconnected = False
        self.cursor = 0

    def _add(self, fn):
        with self.cond:
            fn()
            self.cond.notify_all()

    def on_connected(self, frame):
        self._add(lambda: setattr(self, "connected", frame))

    def on_message(self, frame):
        self._add(lambda: self.messages.append(frame))

    def on_receipt(self, frame):
        self._add(lambda: self.receipts.append(frame.headers.get("receipt-id")))

    def on_error(self, frame):
        self._add(lambda: self.errors.append(frame))

    def on_disconnected(self):
        self._add(lambda: setattr(self, "disconnected", True))

    def describe(self):
        msgs = [(m.headers.get("destination"), m.body) for m in self.messages]
        errs = [(e.headers.get("message"), e.body) for e in self.errors]
        return (
            f"[{self.name}: messages={msgs} receipts={self.receipts} errors={errs} "
            f"disconnected={self.disconnected}]"
        )

    def wait_for(self, predicate, what, timeout=WAIT):
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise CheckFailed(
                    f"{self.name}: no {what} within {timeout}s {self.describe()}"
                )

    def next_message(self, what="MESSAGE", timeout=WAIT):
        self.wait_for(lambda: len(self.messages) > self.cursor, what, timeout)
        with self.cond:
            frame = self.messages[self.cursor]
            self.cursor += 1
            return frame

    def no_message(self, why, seconds=QUIET):
        time.sleep(seconds)
        with self.cond:
            extra = self.messages[self.cursor :]
        check(
            not extra,
            f"{self.name}: expected no MESSAGE ({why}), got "
            f"{[(m.headers, m.body) for m in extra]}",
        )

    def wait_receipt(self, receipt_id):
        self.wait_for(lambda: receipt_id in self.receipts, f"RECEIPT {receipt_id}")


class WSConnection11(BaseConnection, Protocol11):
    """STOMP 1.1 over stomp.py's own WebSocket transport (the library ships the 1.2 pairing
    only as WSStompConnection; this is the same composition with its Protocol11)."""

    def __init__(self, host_and_ports, ws_path, header, timeout):
        transport = WSTransport(
            host_and_ports,
            reconnect_attempts_max=1,
            timeout=timeout,
            ws_path=ws_path,
            header=header,
        )
        BaseConnection.__init__(self, transport)
        Protocol11.__init__(self, transport, (0, 0))

    def connect(self, *args, **kwargs):
        self.transport.start()
        Protocol11.connect(self, *args, **kwargs)

    def disconnect(self, receipt=None, headers=None, **keyword_headers):
        Protocol11.disconnect(self, receipt, headers, **keyword_headers)
        if receipt is not None:
            self.transport.stop()


class Variant:
    def __init__(self, name, version, make):
        self.name = name
        self.version = version
        self.make = make


def variants(args):
    tcp = [addr(args.stomp)]
    http = [addr(args.http)]
    # Over TCP, stomp.py uses `timeout` for connecting only. Its WebSocket transport hands it to
    # websocket-client, where it also bounds every read: an idle connection would be closed by
    # the client after that long, so the WebSocket variants leave it unset.
    return [
        Variant(
            "tcp-1.1",
            "1.1",
            lambda: stomp.Connection11(tcp, reconnect_attempts_max=1, timeout=WAIT),
        ),
        Variant(
            "tcp-1.2",
            "1.2",
            lambda: stomp.Connection12(tcp, reconnect_attempts_max=1, timeout=WAIT),
        ),
        Variant(
            "ws-1.2",
            "1.2",
            lambda: WSStompConnection(http, ws_path="/ws", reconnect_attempts_max=1),
        ),
        Variant(
            "ws-1.1",
            "1.1",
            lambda: WSConnection11(http, "/ws", ["Sec-WebSocket-Protocol: v11.stomp"], None),
        ),
    ]


class Client:
    """One connection, its recorder, and helpers that know the version's ACK rules."""

    def __init__(self, run, variant, name, user=None, login=None, expect_error=False):
        self.variant = variant
        self.name = f"{variant.name}:{name}"
        self.rec = Recorder(self.name)
        self.conn = variant.make()
        self.conn.set_listener("recorder", self.rec)
        run.clients.append(self)
        headers = {}
        if user is not None:
            headers["userid"] = user
        self.conn.connect(username=login, headers=headers, wait=False)
        self.rec.wait_for(
            lambda: self.rec.connected is not None or self.rec.errors,
            "CONNECTED",
        )
        check(
            not self.rec.errors,
            f"{self.name}: CONNECT answered with ERROR {self.rec.describe()}",
        )
        connected = self.rec.connected.headers
        self.connected = connected
        check(
            connected.get("version") == variant.version,
            f"{self.name}: CONNECTED version {connected.get('version')!r}, "
            f"expected {variant.version!r} ({connected})",
        )
        self.sub_ids = 0

    def subscribe(self, destination, ack="auto", receipt=True):
        self.sub_ids += 1
        sub_id = f"sub-{self.sub_ids}"
        headers = {}
        rid = None
        if receipt:
            rid = uniq("sub")
            headers["receipt"] = rid
        self.conn.subscribe(destination, id=sub_id, ack=ack, headers=headers)
        if rid:
            self.rec.wait_receipt(rid)
        return sub_id

    def send(self, destination, body, headers=None, receipt=True, transaction=None):
        headers = dict(headers or {})
        rid = None
        if receipt:
            rid = uniq("send")
            headers["receipt"] = rid
        if transaction is not None:
            headers["transaction"] = transaction
        self.conn.send(destination, body, headers=headers)
        if rid:
            self.rec.wait_receipt(rid)

    def next_message(self, what="MESSAGE"):
        return self.rec.next_message(what)

    def _ack_args(self, frame):
        if self.variant.version == "1.2":
            ack = frame.headers.get("ack")
            check(ack, f"{self.name}: 1.2 MESSAGE in client ack mode has no ack header {frame.headers}")
            return (ack,)
        return (frame.headers["message-id"], frame.headers["subscription"])

    def ack(self, frame, receipt=True):
        rid = uniq("ack") if receipt else None
        self.conn.ack(*self._ack_args(frame), receipt=rid)
        if rid:
            self.rec.wait_receipt(rid)

    def nack(self, frame, receipt=True):
        rid = uniq("nack") if receipt else None
        self.conn.nack(*self._ack_args(frame), receipt=rid)
        if rid:
            self.rec.wait_receipt(rid)

    def disconnect(self):
        """DISCONNECT with a receipt, bounded: stomp.py itself waits without a limit."""
        rid = uniq("bye")
        done = threading.Event()
        failure = []

        def run():
            try:
                self.conn.disconnect(receipt=rid)
            except Exception as e:  # reported below
                failure.append(e)
            done.set()

        threading.Thread(target=run, daemon=True).start()
        check(done.wait(WAIT), f"{self.name}: DISCONNECT did not finish within {WAIT}s {self.rec.describe()}")
        check(not failure, f"{self.name}: DISCONNECT failed: {failure}")
        self.rec.wait_receipt(rid)
        self.rec.wait_for(lambda: self.rec.disconnected, "close after DISCONNECT")

    def drop(self):
        """Closes the socket without DISCONNECT (as a crashed client would)."""
        raw = getattr(self.conn.transport, "socket", None)
        # stomp.py's WebSocket transport only close()s the socket, which (with its reader thread
        # blocked in recv) sends nothing to the server until the process exits; shut the TCP
        # socket down first, as its TCP transport does, so the server sees the connection end.
        raw = getattr(raw, "sock", raw)
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except Exception:
            pass
        try:
            self.conn.transport.disconnect_socket()
        except Exception:
            pass
        self.rec.wait_for(lambda: self.rec.disconnected, "socket close")

    def close_quietly(self):
        try:
            if self.conn.is_connected():
                self.conn.transport.disconnect_socket()
        except Exception:
            pass


def expect_message(client, destination, body, headers=None, what=None):
    frame = client.next_message(what or f"MESSAGE {body!r}")
    check(
        frame.headers.get("destination") == destination,
        f"{client.name}: destination {frame.headers.get('destination')!r}, expected {destination!r} ({frame.headers})",
    )
    check(
        frame.body == body,
        f"{client.name}: body {frame.body!r}, expected {body!r} ({frame.headers})",
    )
    for k, v in (headers or {}).items():
        check(
            frame.headers.get(k) == v,
            f"{client.name}: header {k}={frame.headers.get(k)!r}, expected {v!r} ({frame.headers})",
        )
    check("message-id" in frame.headers, f"{client.name}: MESSAGE without message-id {frame.headers}")
    check("subscription" in frame.headers, f"{client.name}: MESSAGE without subscription {frame.headers}")
    return frame


# --- HTTP publish API ----------------------------------------------------------------------


def publish(args, payload):
    url = f"http://{args.http}/api/v1/tenants/default/publish"
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={
            "Authorization": f"Bearer {args.api_key}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    check(status == 202, f"publish {payload}: HTTP {status} {body!r}, expected 202")
    answer = json.loads(body)
    check("id" in answer, f"publish {payload}: answer has no id: {answer}")
    return answer


# --- scenarios -----------------------------------------------------------------------------


def scenario_connect(run, v):
    alice = Client(run, v, "alice", user=f"alice-{run.tag(v)}")
    h = alice.connected
    check(
        h.get("user-name") == f"alice-{run.tag(v)}",
        f"CONNECTED user-name {h.get('user-name')!r}, expected the userid header ({h})",
    )
    check(str(h.get("server", "")).startswith("stompbox/"), f"CONNECTED server header {h}")
    hb = h.get("heart-beat", "")
    parts = hb.split(",")
    check(
        len(parts) == 2 and all(p.strip().isdigit() for p in parts),
        f"CONNECTED heart-beat {hb!r} is not 'x,y' ({h})",
    )
    if run.args.expect_heartbeat:
        check(
            hb == run.args.expect_heartbeat,
            f"CONNECTED heart-beat {hb!r}, expected the server's offer {run.args.expect_heartbeat!r}",
        )
    # Without userid, the login header names the user.
    bob = Client(run, v, "login-only", login=f"login-{run.tag(v)}")
    check(
        bob.connected.get("user-name") == f"login-{run.tag(v)}",
        f"CONNECTED user-name {bob.connected.get('user-name')!r}, expected the login header ({bob.connected})",
    )
    alice.disconnect()
    bob.disconnect()


def scenario_user_api(run, v):
    tag = run.tag(v)
    alice = Client(run, v, "alice", user=f"alice-{tag}")
    carol = Client(run, v, "carol", user=f"carol-{tag}")
    alice.subscribe("/user/queue/notice")
    carol.subscribe("/user/queue/notice")

    answer = publish(
        run.args,
        {
            "receiver": f"alice-{tag}",
            "destination": "/queue/notice",
            "content": f"hi {tag}",
            "headers": {"x-k": "v"},
        },
    )
    check(answer.get("delivered") == 1, f"publish to alice: delivered {answer}, expected 1")
    expect_message(
        alice,
        "/user/queue/notice",
        f"hi {tag}",
        {"content-type": "text/plain", "x-k": "v"},
    )

    content = {"n": 1, "s": "json ünïcode", "list": [1, 2]}
    answer = publish(
        run.args,
        {"receiver": f"alice-{tag}", "destination": "/queue/notice", "content": content},
    )
    check(answer.get("delivered") == 1, f"publish JSON to alice: {answer}")
    frame = alice.next_message("JSON MESSAGE")
    check(
        frame.headers.get("content-type") == "application/json",
        f"JSON content: content-type {frame.headers.get('content-type')!r} ({frame.headers})",
    )
    check(json.loads(frame.body) == content, f"JSON content: body {frame.body!r}, expected {content}")

    # Carol's first message must be her own: alice's went to alice only.
    publish(
        run.args,
        {"receiver": f"carol-{tag}", "destination": "/queue/notice", "content": "for carol"},
    )
    expect_message(carol, "/user/queue/notice", "for carol", what="carol's own message (alice's must not reach her)")
    carol.rec.no_message("nothing else was addressed to carol")
    alice.rec.no_message("only two messages were addressed to alice")
    alice.disconnect()
    carol.disconnect()


def scenario_topic(run, v):
    tag = run.tag(v)
    topic = f"/topic/news-{tag}"
    a = Client(run, v, "a", user=f"a-{tag}")
    b = Client(run, v, "b", user=f"b-{tag}")
    a.subscribe(topic)
    b.subscribe(topic)
    answer = publish(run.args, {"destination": topic, "content": "from the API", "headers": {"x-k": "v"}})
    check(answer.get("delivered") == 2, f"topic publish: delivered {answer}, expected 2")
    for c in (a, b):
        expect_message(c, topic, "from the API", {"x-k": "v", "content-type": "text/plain"})
    # A SEND from one subscriber reaches both, the sender included, with its own headers.
    a.send(topic, "from a", headers={"x-from": "a", "content-type": "text/x-note"})
    for c in (a, b):
        expect_message(c, topic, "from a", {"x-from": "a", "content-type": "text/x-note"})
    a.disconnect()
    b.disconnect()


def scenario_user_send(run, v):
    tag = run.tag(v)
    bob = f"bob-{tag}"
    alice = Client(run, v, "alice", user=f"alice-{tag}")
    bob1 = Client(run, v, "bob#1", user=bob)
    bob2 = Client(run, v, "bob#2", user=bob)
    for c in (alice, bob1, bob2):
        c.subscribe("/user/queue/notice")
    # A value with ':' and '\\' exercises header escaping both ways (1.1 and 1.2).
    alice.send(f"/user/{bob}/queue/notice", "hello bob", headers={"x-k": "v", "x-odd": "a:b\\c"})
    for c in (bob1, bob2):
        expect_message(c, "/user/queue/notice", "hello bob", {"x-k": "v", "x-odd": "a:b\\c"})
    alice.send(f"/user/alice-{tag}/queue/notice", "note to self")
    expect_message(alice, "/user/queue/notice", "note to self", what="alice's own message (bob's must not reach her)")
    for c in (alice, bob1, bob2):
        c.rec.no_message("one message each")
        c.disconnect()


def scenario_queue_nack(run, v):
    tag = run.tag(v)
    q = f"/queue/jobs-{tag}"
    a = Client(run, v, "a", user=f"a-{tag}")
    b = Client(run, v, "b", user=f"b-{tag}")
    producer = Client(run, v, "producer", user=f"p-{tag}")
    a.subscribe(q, ack="client-individual")
    producer.send(q, "job 1")
    m1 = expect_message(a, q, "job 1")
    b.subscribe(q, ack="client-individual")
    # A NACKs: the message goes to the other consumer.
    a.nack(m1)
    m1b = expect_message(b, q, "job 1", what="the NACKed message, redelivered to b")
    b.ack(m1b)
    a.rec.no_message("b acknowledged job 1")
    # An unacknowledged message comes back when its consumer goes away.
    producer.send(q, "job 2")
    got = None
    deadline = time.monotonic() + WAIT
    while got is None and time.monotonic() < deadline:
        for c in (a, b):
            with c.rec.cond:
                if len(c.rec.messages) > c.rec.cursor:
                    got = c
                    break
        time.sleep(0.02)
    check(got is not None, f"job 2 reached neither consumer {a.rec.describe()} {b.rec.describe()}")
    other = b if got is a else a
    expect_message(got, q, "job 2")
    got.drop()
    m2 = expect_message(other, q, "job 2", what="job 2, redelivered after its consumer dropped")
    other.ack(m2)
    other.rec.no_message("every job was acknowledged")
    for c in (other, producer):
        c.disconnect()


def scenario_transaction(run, v):
    tag = run.tag(v)
    topic = f"/topic/tx-{tag}"
    sub = Client(run, v, "subscriber", user=f"s-{tag}")
    pub = Client(run, v, "publisher", user=f"p-{tag}")
    sub.subscribe(topic)
    tx = pub.conn.begin()
    pub.send(topic, "tx 1", transaction=tx)
    pub.send(topic, "tx 2", transaction=tx)
    sub.rec.no_message("the transaction is not committed yet")
    rid = uniq("commit")
    pub.conn.commit(tx, headers={"receipt": rid})
    pub.rec.wait_receipt(rid)
    expect_message(sub, topic, "tx 1")
    expect_message(sub, topic, "tx 2")
    # Aborted: nothing arrives; the plain message after it is the next one.
    tx = pub.conn.begin()
    pub.send(topic, "aborted", transaction=tx)
    rid = uniq("abort")
    pub.conn.abort(tx, headers={"receipt": rid})
    pub.rec.wait_receipt(rid)
    pub.send(topic, "after abort")
    expect_message(sub, topic, "after abort", what="the message after ABORT (the aborted one must not arrive)")
    sub.rec.no_message("the aborted message must never arrive")
    sub.disconnect()
    pub.disconnect()


def scenario_receipts(run, v):
    tag = run.tag(v)
    topic = f"/topic/receipts-{tag}"
    c = Client(run, v, "c", user=f"c-{tag}")
    sub_id = c.subscribe(topic)  # waits for its RECEIPT
    c.send(topic, "one")  # waits for its RECEIPT
    expect_message(c, topic, "one")
    rid = uniq("unsub")
    c.conn.unsubscribe(sub_id, headers={"receipt": rid})
    c.rec.wait_receipt(rid)
    answer = publish(run.args, {"destination": topic, "content": "nobody listens"})
    check(answer.get("delivered") == 0, f"after UNSUBSCRIBE: delivered {answer}, expected 0")
    c.rec.no_message("unsubscribed")
    c.disconnect()  # DISCONNECT with receipt: RECEIPT, then the server closes


def scenario_errors(run, v):
    tag = run.tag(v)
    c = Client(run, v, "bad-send", user=f"e-{tag}")
    c.conn.send("/nowhere/x", "lost", headers={"receipt": "bad-send-1"})
    c.rec.wait_for(lambda: c.rec.errors, "ERROR for SEND to /nowhere/x")
    err = c.rec.errors[0]
    check(
        err.headers.get("receipt-id") == "bad-send-1",
        f"ERROR receipt-id {err.headers.get('receipt-id')!r}, expected 'bad-send-1' ({err.headers})",
    )
    check(err.headers.get("message"), f"ERROR without message header ({err.headers})")
    check("/nowhere/x" in (err.body or "") + err.headers.get("message", ""),
          f"ERROR does not name the destination: {err.headers} {err.body!r}")
    c.rec.wait_for(lambda: c.rec.disconnected, "close after ERROR")
    check("bad-send-1" not in c.rec.receipts, "a failed SEND was also answered with RECEIPT")

    # A user destination needs a user: a session without one is refused.
    anon = Client(run, v, "anonymous")
    check("user-name" not in anon.connected, f"anonymous CONNECTED has user-name {anon.connected}")
    anon.conn.subscribe("/user/queue/notice", id="s1", headers={"receipt": "anon-1"})
    anon.rec.wait_for(lambda: anon.rec.errors, "ERROR for /user/ subscription without a user")
    err = anon.rec.errors[0]
    check(err.headers.get("receipt-id") == "anon-1", f"ERROR receipt-id ({err.headers})")
    anon.rec.wait_for(lambda: anon.rec.disconnected, "close after ERROR")


SCENARIOS = [
    ("connect", scenario_connect),
    ("user-via-api", scenario_user_api),
    ("topic-broadcast", scenario_topic),
    ("send-to-user", scenario_user_send),
    ("queue-nack-redelivery", scenario_queue_nack),
    ("transaction", scenario_transaction),
    ("receipts", scenario_receipts),
    ("error", scenario_errors),
]


def scenario_cross_transport(run, variants_by_name):
    """A TCP 1.1 session and a WebSocket 1.2 session of one user see each other's sends."""
    tag = uniq("x")
    tcp = Client(run, variants_by_name["tcp-1.1"], "tcp", user=f"dana-{tag}")
    ws = Client(run, variants_by_name["ws-1.2"], "ws", user=f"dana-{tag}")
    topic = f"/topic/cross-{tag}"
    for c in (tcp, ws):
        c.subscribe(topic)
        c.subscribe("/user/queue/notice")
    tcp.send(topic, "tcp to all", headers={"x-k": "v"})
    ws.send(f"/user/dana-{tag}/queue/notice", "ws to dana")
    for c in (tcp, ws):
        expect_message(c, topic, "tcp to all", {"x-k": "v"})
        expect_message(c, "/user/queue/notice", "ws to dana")
        c.disconnect()


# --- runner --------------------------------------------------------------------------------


class Run:
    def __init__(self, args):
        self.args = args
        self.clients = []
        self.passed = 0
        self.failed = []
        self.run_id = uuid.uuid4().hex[:6]

    def tag(self, v):
        return f"{v.name.replace('.', '')}-{self.run_id}"

    def one(self, name, fn, *fn_args):
        started = time.monotonic()
        try:
            fn(self, *fn_args)
        except CheckFailed as e:
            self.failed.append(name)
            print(f"FAIL {name}: {e}", flush=True)
        except Exception:
            self.failed.append(name)
            print(f"FAIL {name}: unexpected exception\n{traceback.format_exc()}", flush=True)
        else:
            self.passed += 1
            print(f"ok {name} ({time.monotonic() - started:.2f}s)", flush=True)
        finally:
            for c in self.clients:
                c.close_quietly()
            self.clients.clear()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", required=True, help="HOST:PORT of the node's HTTP listener")
    parser.add_argument("--stomp", required=True, help="HOST:PORT of the node's STOMP/TCP listener")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--expect-heartbeat", help="the server's heart-beat offer, e.g. 10000,10000")
    parser.add_argument("--only", help="run only scenarios whose name contains this")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds before the watchdog ends the run")
    args = parser.parse_args()

    def watchdog():
        print(f"FAIL watchdog: the run took longer than {args.deadline}s", flush=True)
        os._exit(3)

    timer = threading.Timer(args.deadline, watchdog)
    timer.daemon = True
    timer.start()

    print(f"stomp.py {stomp.__version__}", flush=True)
    run = Run(args)
    all_variants = variants(args)
    started = time.monotonic()
    for v in all_variants:
        for name, fn in SCENARIOS:
            full = f"{v.name}/{name}"
            if args.only and args.only not in full:
                continue
            run.one(full, fn, v)
    if not args.only or args.only in "cross/tcp-ws":
        run.one("cross/tcp-ws", scenario_cross_transport, {v.name: v for v in all_variants})
    print(
        f"stomp.py checks: {run.passed} ok, {len(run.failed)} failed "
        f"in {time.monotonic() - started:.1f}s",
        flush=True,
    )
    if run.failed:
        print("failed: " + ", ".join(run.failed), flush=True)
    sys.stdout.flush()
    # stomp.py's reader threads are daemons, but a hung socket must not delay the exit.
    os._exit(1 if run.failed or run.passed == 0 else 0)


if __name__ == "__main__":
    main()
