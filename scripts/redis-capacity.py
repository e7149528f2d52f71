#!/usr/bin/env python3
"""What stompbox asks of Redis, measured on this machine with real processes.

  scripts/redis-capacity.py compare [--rounds N] [--small]
      Two nodes (publisher on node 1, 1,000 users on node 2, every message crossing Redis) on
      one Redis and on a Redis Cluster of 3 primaries, A B A B: deliveries/s and p99 at 10,000
      msgs/s, deliveries/s as fast as possible, and per message Redis's CPU time, commands and
      bytes (summed over every Redis process).

  scripts/redis-capacity.py capacity [--nodes 2,4,8] [--small]
      Per user message, topic message, and connect + disconnect: Redis commands and bytes, with
      2, 4 and 8 node processes on a Redis Cluster of 3 primaries; and the replaced system's
      design (every message PUBLISHed on one channel that every node subscribes to) with as
      many subscribers.

It builds the release binaries (stompbox, stompbox-bench) and starts every process it needs on
free ports; everything is stopped on exit. Figures are printed as Markdown tables.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOMPBOX = os.path.join(ROOT, "target", "release", "stompbox")
BENCH = os.path.join(ROOT, "target", "release", "stompbox-bench")
API_KEY = "bench-key"
TICK = os.sysconf("SC_CLK_TCK")

started = []


def log(*args):
    print("==>", *args, file=sys.stderr, flush=True)


def stop_all():
    for proc in reversed(started):
        if proc.poll() is None:
            proc.kill()
    for proc in started:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    started.clear()


def spawn(args, **kw):
    proc = subprocess.Popen(args, stdout=kw.pop("stdout", subprocess.DEVNULL),
                            stderr=kw.pop("stderr", subprocess.DEVNULL), **kw)
    started.append(proc)
    return proc


def free_ports(n):
    out = subprocess.run([BENCH, "free-port", "--count", str(n)], check=True,
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], check=True,
                          capture_output=True, text=True).stdout


def wait_port(port, proc, limit=20):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process on {port} exited")
        if subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True,
                          text=True).stdout.strip() == "PONG":
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on {port}")


class Redis:
    """One redis-server, or a Redis Cluster of `primaries` primaries without replicas."""

    def __init__(self, work, primaries=0):
        self.cluster = primaries > 0
        count = max(primaries, 1)
        ports = free_ports(2 * count)
        self.ports, buses = ports[:count], ports[count:]
        self.procs = []
        for port, bus in zip(self.ports, buses):
            d = os.path.join(work, f"redis-{port}")
            os.makedirs(d, exist_ok=True)
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
                    "--save", "", "--appendonly", "no"]
            if self.cluster:
                args += ["--cluster-enabled", "yes", "--cluster-port", str(bus),
                         "--cluster-config-file", os.path.join(d, "nodes.conf"),
                         "--cluster-require-full-coverage", "no"]
            proc = spawn(args)
            wait_port(port, proc)
            self.procs.append(proc)
        if self.cluster:
            subprocess.run(["redis-cli", "--cluster", "create",
                            *[f"127.0.0.1:{p}" for p in self.ports],
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, capture_output=True)
            deadline = time.time() + 30
            while not all("cluster_state:ok" in cli(p, "CLUSTER", "INFO") for p in self.ports):
                if time.time() > deadline:
                    raise RuntimeError("the Redis Cluster did not become healthy")
                time.sleep(0.1)

    def flags(self):
        if self.cluster:
            return ["--redis-cluster", ",".join(f"redis://127.0.0.1:{p}" for p in self.ports)]
        return ["--redis", f"redis://127.0.0.1:{self.ports[0]}/0"]

    def sample(self):
        """CPU ticks, commands and client bytes of every Redis process so far."""
        cpu = commands = bytes_in = bytes_out = 0
        for port, proc in zip(self.ports, self.procs):
            with open(f"/proc/{proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += int(fields[11]) + int(fields[12])
            for line in cli(port, "INFO", "commandstats").splitlines():
                if line.startswith("cmdstat_"):
                    stats = dict(kv.split("=") for kv in line.split(":", 1)[1].split(","))
                    commands += int(stats["calls"])
            for line in cli(port, "INFO", "stats").splitlines():
                if line.startswith("total_net_input_bytes:"):
                    bytes_in += int(line.split(":")[1])
                if line.startswith("total_net_output_bytes:"):
                    bytes_out += int(line.split(":")[1])
        return {"cpu": cpu, "commands": commands, "in": bytes_in, "out": bytes_out}


def delta(before, after):
    return {k: after[k] - before[k] for k in before}


def start_node(work, redis, name, toml=""):
    config = os.path.join(work, f"{name}.toml")
    with open(config, "w") as f:
        f.write("[server]\nmax_connections = 100000\nmax_subscriptions = 1000\n"
                f"[cluster]\nnode_ttl_ms = 10000\n{toml}"
                f"[[tenants]]\nid = \"default\"\napi_keys = [\"{API_KEY}\"]\n")
    proc = spawn([STOMPBOX, "serve", "--config", config, "--node-id", name,
                  "--http", "127.0.0.1:0", "--stomp", "127.0.0.1:0", *redis.flags()],
                 stdout=subprocess.PIPE, env={**os.environ, "RUST_LOG": "warn"})
    line = proc.stdout.readline().decode()
    http = line.split("http=")[1].split()[0]
    deadline = time.time() + 20
    while time.time() < deadline:
        ok = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                             f"http://{http}/readyz"], capture_output=True, text=True).stdout
        if ok == "200":
            return proc, http
        time.sleep(0.1)
    raise RuntimeError(f"{name} never became ready")


def tool(args, timeout=300):
    out = subprocess.run([BENCH, "run", "--json", *args], capture_output=True, text=True,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"stompbox-bench run failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def users_on(http, users):
    return ["--url", f"ws://{http}/ws", "--connections", str(users),
            "--subscribe", "/user/queue/bench", "--connect-header", "userid=u{i}",
            "--targets", str(users)]


def compare(args):
    users = 100 if args.small else 1000
    rate, secs = (2000, 2) if args.small else (10_000, 10)
    fast = 10_000 if args.small else 200_000
    work = tempfile.mkdtemp(prefix="stompbox-redis-compare-")
    rows = {}
    try:
        cases = (("steady", ["--rate", str(rate), "--duration", str(secs), "--drain-ms", "3000"]),
                 ("max", ["--rate", "0", "--messages", str(fast), "--drain-ms", "5000"]))
        for rnd in range(args.rounds):
            for case, extra in cases:
                for kind, primaries in (("1 Redis", 0), ("Redis Cluster, 3 primaries", 3)):
                    # A fresh deployment per run: users reconnecting to what an earlier run
                    # stored would be given again what it could not confirm they received.
                    redis = Redis(work, primaries)
                    _, h1 = start_node(work, redis, "bench-1")
                    _, h2 = start_node(work, redis, "bench-2")
                    before = redis.sample()
                    report = tool(users_on(h2, users) + [
                        "--settle-ms", "1000",
                        "--dest", "/user/u{j}/queue/bench", "--publish", "stomp",
                        "--publish-url", f"ws://{h1}/ws"] + extra)
                    used = delta(before, redis.sample())
                    stop_all()
                    msgs = max(report["messages_published"], 1)
                    row = rows.setdefault((case, kind), [])
                    row.append({
                        "deliveries": report["deliveries_per_sec"],
                        "p99": (report.get("latency_ms") or {}).get("p99", 0.0),
                        "missing": report["missing"],
                        "cpu_us": used["cpu"] / TICK * 1e6 / msgs,
                        "commands": used["commands"] / msgs,
                        "bytes": (used["in"] + used["out"]) / msgs,
                    })
                    log(f"round {rnd + 1} {kind} {case}: {row[-1]}")
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{users:,} users on node 2, publisher on node 1; better of {args.rounds} rounds "
          "(deliveries/s: the highest; p99 and Redis figures: from that run)\n")
    print("| case | Redis | deliveries/s | p99 ms | missing | Redis CPU µs/msg | Redis commands/msg | Redis bytes/msg |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for case, title in (("steady", f"{rate:,} msgs/s for {secs} s"),
                        ("max", f"{fast:,} msgs as fast as possible")):
        for kind in ("1 Redis", "Redis Cluster, 3 primaries"):
            runs = rows.get((case, kind), [])
            if not runs:
                continue
            best = min(runs, key=lambda r: r["p99"]) if case == "steady" else \
                max(runs, key=lambda r: r["deliveries"])
            print(f"| {title} | {kind} | {best['deliveries']:,.0f} | {best['p99']:.2f} | "
                  f"{best['missing']} | {best['cpu_us']:.1f} | {best['commands']:.2f} | "
                  f"{best['bytes']:,.0f} |")


def capacity(args):
    node_counts = [int(n) for n in args.nodes.split(",")]
    users = 50 if args.small else 200
    msgs = 500 if args.small else 5000
    work = tempfile.mkdtemp(prefix="stompbox-redis-capacity-")
    table = []
    try:
        for n in node_counts:
            redis = Redis(work, 3)
            nodes = [start_node(work, redis, f"cap-{i}")[1] for i in range(1, n + 1)]
            first, last = nodes[0], nodes[-1]
            # What the nodes ask of Redis when nothing happens (heartbeats, map reads), per
            # second, is taken off every measurement by its duration.
            time.sleep(2)
            idle_from, idle_at = redis.sample(), time.time()
            time.sleep(5)
            idle = {k: v / (time.time() - idle_at) for k, v in delta(idle_from, redis.sample()).items()}

            def measure(action):
                before, at = redis.sample(), time.time()
                action()
                time.sleep(1)
                used = delta(before, redis.sample())
                spent = time.time() - at
                return {k: used[k] - idle[k] * spent for k in used}

            # Connect + disconnect: users connecting on the last node, nothing published.
            conn = measure(lambda: tool(users_on(last, users) + ["--publish", "none",
                                                                  "--settle-ms", "500"]))
            # User messages: the same users, then messages through node 1's API to them.
            used = measure(lambda: tool(users_on(last, users) + [
                "--settle-ms", "500",
                "--dest", "/queue/bench", "--publish", "api",
                "--api-url", f"http://{first}/api/v1/tenants/default/publish",
                "--api-key", API_KEY, "--api-receiver", "u{j}",
                "--rate", "0", "--messages", str(msgs), "--drain-ms", "3000"]))
            user = {k: used[k] - conn[k] for k in used}
            # Topic messages: a subscriber on every node but the first, which publishes.
            holders = [spawn([BENCH, "run", "--url", f"ws://{h}/ws", "--connections", "1",
                              "--subscribe", "/topic/capacity", "--publish", "none",
                              "--settle-ms", "100", "--idle-secs", "3600"])
                       for h in nodes[1:]]
            time.sleep(2)
            topic = measure(lambda: tool([
                "--url", f"ws://{first}/ws", "--connections", "1",
                "--subscribe", "/topic/capacity", "--dest", "/topic/capacity",
                "--publish", "stomp", "--rate", "0", "--messages", str(msgs),
                "--drain-ms", "2000", "--settle-ms", "500"]))
            for h in holders:
                h.kill()
            stop_all()
            # The replaced design: every message on one channel every node hears.
            redis = Redis(work, 0)
            listeners = [spawn(["redis-cli", "-p", str(redis.ports[0]), "SUBSCRIBE", "push"])
                         for _ in range(n)]
            time.sleep(1)
            payload = json.dumps({"receiver": "u1", "channelCode": "ORDER_STATUS",
                                  "content": {"order": 12345, "status": "shipped"}})
            before = redis.sample()
            pipe = "".join(f"PUBLISH push {json.dumps(payload)}\n" for _ in range(msgs))
            subprocess.run(["redis-cli", "-p", str(redis.ports[0])], input=pipe, text=True,
                           capture_output=True, check=True)
            seed = delta(before, redis.sample())
            for listener in listeners:
                listener.kill()
            stop_all()
            per = lambda d, count: (d["commands"] / count, (d["in"] + d["out"]) / count,
                                    d["cpu"] / TICK * 1e6 / count)
            table.append((n, per(user, msgs), per(topic, msgs), per(conn, users), per(seed, msgs)))
            log(f"{n} nodes: {table[-1]}")
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nPer operation, summed over every Redis process ({users} users, {msgs} messages "
          "per measurement); commands / bytes / CPU µs\n")
    print("| nodes | user message | topic message (a subscriber on every other node) | "
          "connect + disconnect | replaced design: a message on one channel all nodes hear |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    fmt = lambda t: f"{t[0]:.2f} / {t[1]:,.0f} B / {t[2]:.1f} µs"
    for n, user, topic, conn, seed in table:
        print(f"| {n} | {fmt(user)} | {fmt(topic)} | {fmt(conn)} | {fmt(seed)} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--rounds", type=int, default=2)
    c.add_argument("--small", action="store_true")
    k = sub.add_parser("capacity")
    k.add_argument("--nodes", default="2,4,8")
    k.add_argument("--small", action="store_true")
    args = parser.parse_args()
    for need in ("redis-server", "redis-cli", "curl"):
        if not shutil.which(need):
            sys.exit(f"redis-capacity: {need} is not installed")
    for package in ("stompbox", "stompbox-bench"):
        log(f"cargo build --release -p {package}")
        subprocess.run(["cargo", "build", "--release", "-p", package], cwd=ROOT, check=True)
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    try:
        (compare if args.command == "compare" else capacity)(args)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
