#!/usr/bin/env python3
"""Runs the benchmark scenarios and prints the table (scripts/bench.sh calls it).

bench.sh installs and builds what is needed and prepares a RabbitMQ node; this script starts
that node and everything each run needs (stompbox nodes, the null broker, Redis), runs
`stompbox-bench run ... --json` once per case, system and round, appends every result to
results.jsonl and renders one Markdown table.

Each case runs its systems in turn, round after round (A B A B), so that a slow spell of this
shared machine hits every system alike; the table shows each system's better round.

Python 3 standard library only.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

API_KEY = "bench-api-key-0123456789abcdef"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123456789"

# Column order of the table; a case lists which of these it runs.
STOMPBOX, RABBIT, NULL = "stompbox", "rabbitmq", "null"
CLUSTER = "stompbox-2"  # two nodes + Redis; shown in the stompbox column of its own row


def log(msg):
    print("==> " + msg, file=sys.stderr, flush=True)


class Failure(Exception):
    """A run that produced no figures (the node did not start, the tool failed...)."""


# --- processes ------------------------------------------------------------------------------


class Procs:
    """Every process this script starts, so that none outlives it.

    Each is registered in WORK/pids (file name = pid, content = executable) for bench.sh's
    cleanup, in case this script itself is killed before it can stop them.
    """

    def __init__(self, pid_dir, log_dir):
        self.pid_dir = pid_dir
        self.log_dir = log_dir
        self.live = []

    def start(self, name, argv, env=None, stdout=None, exe=None):
        """stdout: a file to write it to, "log" for the log beside stderr, None for none."""
        err = open(os.path.join(self.log_dir, name + ".log"), "ab")
        if stdout == "log":
            out = err
        else:
            out = open(stdout, "wb") if stdout else subprocess.DEVNULL
        full_env = dict(os.environ)
        full_env.update(env or {})
        try:
            p = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=full_env
            )
        finally:
            err.close()
            if stdout and stdout != "log":
                out.close()
        p.name = name
        self.register(p, exe or os.path.realpath(argv[0]))
        return p

    def register(self, p, exe):
        with open(os.path.join(self.pid_dir, str(p.pid)), "w") as f:
            f.write(exe)
        self.live.append(p)

    def stop(self, p, grace=10.0):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{p.name} (pid {p.pid}) ignored SIGTERM for {grace:.0f}s; killing it")
                p.kill()
                p.wait()
        try:
            os.unlink(os.path.join(self.pid_dir, str(p.pid)))
        except FileNotFoundError:
            pass
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in reversed(list(self.live)):
            self.stop(p)


class Foreign:
    """A process this script did not fork (RabbitMQ's beam.smp, under its start script),
    with the part of Popen's interface that Procs.stop uses."""

    def __init__(self, pid, name):
        self.pid = pid
        self.name = name

    def poll(self):
        try:
            os.kill(self.pid, 0)
            return None
        except ProcessLookupError:
            return 0

    def send_signal(self, sig):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout=None):
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.1)
        return 0


def cpu_secs(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def listening(port):
    r = subprocess.run(["ss", "-ltnH", f"( sport = :{port} )"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
    return bool(r.stdout.strip())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port, proc, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"{what} exited with {proc.returncode} while starting (see its log)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise Failure(f"{what} did not listen on port {port} within {timeout:.0f}s")


# --- systems ----------------------------------------------------------------------------------


class Rabbit:
    """Our RabbitMQ node: bench.sh prepared its configuration and the two commands; this
    starts it, restarts it for a fresh memory baseline, and stops it."""

    def __init__(self, o, procs):
        self.o = o
        self.procs = procs
        self.port = int(o.rabbit_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        self.script = None
        self.beam = None
        self.sockets = None
        self.users = 0
        self.used = False  # since it started: a restart for a fresh baseline is due

    def start(self):
        log("starting RabbitMQ")
        # The start command execs RabbitMQ's own start script: its interpreter is what runs.
        with open(self.o.rabbit_start_script) as f:
            interpreter = f.readline()[2:].split()[0]
        self.script = self.procs.start("rabbitmq", [self.o.rabbit_server], stdout="log",
                                       exe=os.path.realpath(interpreter))
        deadline = time.monotonic() + 120
        while not listening(self.port):
            if self.script.poll() is not None:
                raise SystemExit(f"scripts/bench/run.py: RabbitMQ exited with "
                                 f"{self.script.returncode} while starting "
                                 f"(see {self.o.out}/logs/rabbitmq.log)")
            if time.monotonic() > deadline:
                raise SystemExit("scripts/bench/run.py: RabbitMQ did not open Web-STOMP on "
                                 f"port {self.port} within 120s (see {self.o.out}/logs/)")
            time.sleep(0.1)
        r = subprocess.run(["pgrep", "-P", str(self.script.pid), "beam.smp"],
                           stdout=subprocess.PIPE)
        pids = r.stdout.split()
        if not pids:
            raise SystemExit("scripts/bench/run.py: cannot find RabbitMQ's beam.smp")
        self.beam = Foreign(int(pids[0]), "rabbitmq beam.smp")
        self.procs.register(self.beam, os.readlink(f"/proc/{self.beam.pid}/exe"))
        if self.sockets is None:
            # RabbitMQ keeps 10% of its descriptors back from sockets: the idle scenario's
            # largest count has to fit under what it reports.
            r = subprocess.run([self.o.rabbitmqctl, "status"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, timeout=120)
            m = re.search(rb"Sockets: \d+, limit: (\d+)", r.stdout)
            self.sockets = int(m.group(1)) if m else None
            with open(f"/proc/{self.beam.pid}/limits") as f:
                nofile = next((l.split()[3] for l in f if l.startswith("Max open files")), "?")
            log(f"RabbitMQ up: beam.smp pid {self.beam.pid}, {nofile} descriptors, socket "
                f"limit {self.sockets}")

    def stop(self):
        if self.script is not None:
            # Its start script stops the node (rabbitmqctl stop) on TERM.
            self.procs.stop(self.script, grace=90)
            self.procs.stop(self.beam, grace=10)
            self.script = self.beam = None

    def fresh(self):
        if self.used:
            self.stop()
            self.start()
            self.used = False

    def quiesce(self, settle):
        """Waits for the node to close the last run's connections and finish cleaning up
        after them (it tears thousands down one by one, then deletes their queues), so that
        the next run, of whichever system, starts on an idle machine."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            r = subprocess.run(["ss", "-tnH", "state", "established",
                                f"( sport = :{self.port} )"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            if r.returncode == 0 and r.stdout.strip():
                time.sleep(0.5)
                continue
            before = cpu_secs(self.beam.pid)
            time.sleep(1.0)
            after = cpu_secs(self.beam.pid)
            if before is None or after is None or after - before < 0.1:
                break
        else:
            log("RabbitMQ is still busy with the last run after 180s; going on")
        time.sleep(settle)

    def import_users(self, n):
        """Users u0..u{n-1} with passwords pw{i}, in one definitions import."""
        if self.users >= n:
            return
        users, perms = [], []
        for i in range(n):
            salt = os.urandom(4)
            digest = hashlib.sha256(salt + f"pw{i}".encode()).digest()
            users.append({"name": f"u{i}",
                          "password_hash": base64.b64encode(salt + digest).decode(),
                          "hashing_algorithm": "rabbit_password_hashing_sha256",
                          "tags": []})
            perms.append({"user": f"u{i}", "vhost": "/", "configure": ".*", "write": ".*",
                          "read": ".*"})
        path = os.path.join(self.o.work, "rabbit-users.json")
        with open(path, "w") as f:
            json.dump({"users": users, "permissions": perms}, f)
        os.chmod(path, 0o644)
        log(f"importing {n:,} RabbitMQ users")
        r = subprocess.run([self.o.rabbitmqctl, "import_definitions", path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        if r.returncode != 0:
            raise Failure("rabbitmqctl import_definitions failed: "
                          + r.stdout.decode(errors="replace").strip())
        self.users = n


class Endpoint:
    """Where and how one system under test is reached in one run."""

    def __init__(self, url, pids, publish_url=None, headers=(), api_url=None):
        self.url = url
        self.publish_url = publish_url or url
        self.pids = list(pids)
        self.headers = list(headers)  # CONNECT headers every connection sends
        self.api_url = api_url


class Bench:
    def __init__(self, opts):
        self.o = opts
        self.logs = os.path.join(opts.out, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.procs = Procs(os.path.join(opts.work, "pids"), self.logs)
        self.results_path = os.path.join(opts.out, "results.jsonl")
        open(self.results_path, "w").close()
        self.runs = []  # (case key, system, round, figures or None, error or None)
        self.serial = 0
        self.rabbit = Rabbit(opts, self.procs) if opts.rabbit_url else None

    # A fresh node per run: no state and no memory left over from the previous run.
    def stompbox(self, name, tenant_toml="", cluster_toml=""):
        cfg = os.path.join(self.o.work, name + ".toml")
        with open(cfg, "w") as f:
            f.write(
                "[server]\n"
                # The defaults, but stated: the scenarios count on them.
                "max_connections = 100000\n"
                "max_subscriptions = 1000\n"
                "\n[[tenants]]\n"
                'id = "default"\n'
                f'api_keys = ["{API_KEY}"]\n' + tenant_toml + cluster_toml
            )
        out = os.path.join(self.o.work, name + ".out")
        p = self.procs.start(
            name,
            [self.o.stompbox_bin, "serve", "--config", cfg, "--http", "127.0.0.1:0",
             "--stomp", "127.0.0.1:0"],
            env={"RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            stdout=out,
        )
        http = None
        deadline = time.monotonic() + 30
        while http is None:
            if p.poll() is not None:
                raise Failure(f"stompbox {name} exited with {p.returncode} at start "
                              f"(see {self.logs}/{name}.log)")
            if time.monotonic() > deadline:
                raise Failure(f"stompbox {name} printed no 'stompbox listening' line in 30s")
            with open(out) as f:
                for word in f.read().split():
                    if word.startswith("http="):
                        http = word[len("http="):]
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{http}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise Failure(f"stompbox {name}: /healthz did not answer within 30s")
            time.sleep(0.05)
        return p, http

    def null_broker(self):
        port = free_port()
        p = self.procs.start(
            "null-broker", [self.o.bench_bin, "null-broker", "--listen", f"127.0.0.1:{port}"]
        )
        wait_tcp(port, p, "the null broker")
        return p, f"127.0.0.1:{port}"

    def redis(self):
        port = free_port()
        p = self.procs.start(
            "redis",
            [self.o.redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
        )
        wait_tcp(port, p, "redis-server")
        return p, f"redis://127.0.0.1:{port}/0"

    def endpoint(self, system, variant, started):
        """Starts what `system` needs for one run (appending to `started`)."""
        if system == STOMPBOX:
            tenant = ""
            if variant == "jwt":
                tenant = (
                    f'plugin = "{self.o.jwt_wasm}"\n'
                    "[tenants.settings]\n"
                    f'jwt_secret = "{JWT_SECRET}"\n'
                )
            p, http = self.stompbox("stompbox", tenant)
            started.append(p)
            return Endpoint(f"ws://{http}/ws", [p.pid], api_url=f"http://{http}")
        if system == CLUSTER:
            r, redis_url = self.redis()
            started.append(r)
            nodes = []
            for n in (1, 2):
                p, http = self.stompbox(
                    f"stompbox-node{n}", "",
                    f'\n[cluster]\nredis = "{redis_url}"\nnode_id = "bench-node-{n}"\n')
                started.append(p)
                nodes.append((p, http))
            # Subscribers on node 2, the publisher on node 1: every delivery crosses Redis.
            return Endpoint(f"ws://{nodes[1][1]}/ws", [p.pid for p, _ in nodes],
                            publish_url=f"ws://{nodes[0][1]}/ws",
                            api_url=f"http://{nodes[0][1]}")
        if system == RABBIT:
            if variant == "users":
                headers = ["login=u{i}", "passcode=pw{i}", "host=/"]
            else:
                headers = ["login=guest", "passcode=guest", "host=/"]
            self.rabbit.used = True
            return Endpoint(self.o.rabbit_url, [self.rabbit.beam.pid], headers=headers)
        if system == NULL:
            p, addr = self.null_broker()
            started.append(p)
            return Endpoint(f"ws://{addr}/ws", [p.pid])
        raise ValueError(system)

    # --- one run ----------------------------------------------------------------------------

    def run_tool(self, label, args, timeout):
        self.serial += 1
        err_path = os.path.join(self.logs, f"run-{self.serial:03d}.log")
        argv = [self.o.bench_bin, "run", *args, "--label", label, "--json"]
        with open(err_path, "wb") as err:
            err.write((" ".join(argv) + "\n").encode())
            err.flush()
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=err)
            with open(os.path.join(self.procs.pid_dir, str(p.pid)), "w") as f:
                f.write(os.path.realpath(argv[0]))
            try:
                out, _ = p.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                raise Failure(f"the load tool ran over {timeout:.0f}s (see {err_path})")
            except BaseException:
                p.kill()  # stopped from outside (SIGTERM): the tool goes too
                p.wait()
                raise
            finally:
                try:
                    os.unlink(os.path.join(self.procs.pid_dir, str(p.pid)))
                except FileNotFoundError:
                    pass
        lines = [l for l in out.decode(errors="replace").splitlines() if l.startswith("{")]
        if p.returncode != 0 or not lines:
            with open(err_path, errors="replace") as f:
                tail = f.read().strip().splitlines()[-3:]
            raise Failure(f"the load tool exited with {p.returncode}: "
                          + " | ".join(tail) + f" (see {err_path})")
        return json.loads(lines[-1]), argv

    def run_case(self, case):
        for rnd in range(1, self.o.rounds + 1):
            for system in case.systems:
                label = f"{case.key} {system} round {rnd}"
                log(label)
                started = []
                figures, error, argv = None, None, None
                try:
                    if system == RABBIT and case.fresh_rabbit:
                        self.rabbit.fresh()
                    ep = self.endpoint(system, case.variant.get(system), started)
                    args = case.args(system, ep) + sum((["--node-pid", str(pid)]
                                                         for pid in ep.pids), [])
                    figures, argv = self.run_tool(label, args, case.timeout)
                except Failure as e:
                    error = str(e)
                    log(f"{label}: FAILED: {error}")
                finally:
                    for p in reversed(started):
                        self.procs.stop(p)
                record = {"scenario": case.scenario, "case": case.key, "title": case.title,
                          "system": system, "round": rnd, "argv": argv,
                          "result": figures, "error": error}
                with open(self.results_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                self.runs.append((case.key, system, rnd, figures, error))
                if figures is not None:
                    log("   " + summary(figures))
                if system == RABBIT:
                    self.rabbit.quiesce(self.o.rabbit_settle)


def jwt_hs256(secret, claims):
    def b64(raw):
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = header + b"." + payload
    signature = b64(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


# --- the tool's figures ---------------------------------------------------------------------

# The names `stompbox-bench run --json` prints (bench/src/run.rs); dots go into objects.
F_READY = "connections_ready"
F_FAILED = "connections_failed"
F_DISCONNECTED = "disconnected"
F_CONNECT_RATE = "connect_rate"
F_EXPECTED = "deliveries_expected"
F_RECEIVED = "received"
F_MISSING = "missing"
F_RATE = "deliveries_per_sec"
F_P50 = "latency_ms.p50"
F_P99 = "latency_ms.p99"
F_P999 = "latency_ms.p999"
F_RSS_PER_CONN = "rss_per_conn_kib"
F_TOOL_CPU = "tool_cpu_pct"
F_OTHER_CPU = "other_cpu_pct"

# Past these (percent of one core) a figure is marked: the tool, not the broker, may be the
# limit; or something else ran on the machine during the run.
TOOL_BOUND_PCT = 90
OTHER_LOAD_PCT = 50


def fig(figures, name):
    v = figures
    for part in name.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def summary(f):
    parts = []
    for name in (F_READY, F_FAILED, F_CONNECT_RATE, F_EXPECTED, F_RECEIVED, F_RATE, F_P50,
                 F_P99, F_RSS_PER_CONN):
        v = fig(f, name)
        if v is not None:
            parts.append(f"{name}={v:,.2f}".replace(".00", ""))
    return " ".join(parts)


# --- scenarios ------------------------------------------------------------------------------


class Case:
    """One row of the table (or two: a figure per row), run on each of `systems`.

    `figures` are (label, field, better) where better is "max" or "min"; the first one picks
    each system's better round.
    """

    def __init__(self, scenario, key, title, systems, args, figures, timeout, variant=None,
                 note="", fresh_rabbit=False):
        self.scenario = scenario
        self.key = key
        self.title = title
        self.systems = systems
        self.args = args
        self.figures = figures
        self.timeout = timeout
        self.variant = variant or {}
        self.note = note
        # A RabbitMQ node restarted before each of its runs: Erlang keeps the memory an
        # earlier run freed, which would hide the growth being measured.
        self.fresh_rabbit = fresh_rabbit


def common(ep, connections, subscribe, dest, extra_headers=(), targets=None):
    a = ["--url", ep.url, "--subprotocol", "v12.stomp", "--connections", str(connections),
         "--subscribe", subscribe, "--dest", dest]
    if targets:
        a += ["--targets", str(targets)]
    for h in list(ep.headers) + list(extra_headers):
        a += ["--connect-header", h]
    # No --source-ip-count: the tool's default (one address up to 20,000 connections) leaves
    # the port choice to connect(), which reuses ports the previous run left in TIME_WAIT
    # towards another address. Bound to an address first, a socket cannot, and with a
    # previous run's thousands of TIME_WAITs the connect rate fell fivefold.
    return a


def stomp_publish(ep, publishers=1):
    a = ["--publish", "stomp", "--publish-url", ep.publish_url, "--publishers", str(publishers)]
    for h in ep.headers:
        if "{i}" not in h:
            a += ["--publish-connect-header", h]
    return a


RATE = [("deliveries/s", F_RATE, "max")]
# At a steady rate every system keeps up or shows missing deliveries: the round is picked
# by its tail.
RATE_P99 = [("p99 ms", F_P99, "min"), ("deliveries/s", F_RATE, "max")]
LATENCY = [("p99 ms", F_P99, "min"), ("p50 ms", F_P50, "min"), ("p99.9 ms", F_P999, "min")]
MEMORY = [("KiB per connection", F_RSS_PER_CONN, "min"),
          ("connects/s, no auth", F_CONNECT_RATE, "max")]
CONNECT = [("connects/s", F_CONNECT_RATE, "max")]


GROUPS = {
    "fanout": "1. fan-out",
    "targeted": "2. targeted",
    "latency": "3. steady-rate latency",
    "idle": "4. idle memory",
    "auth": "5. connect with auth",
    "cluster": "6. cluster",
}


def plan(o, bench):
    """The cases, in the order they run. Every closure binds its sizes as default arguments:
    the names are reused from one scenario to the next."""
    small = o.small
    with_rabbit = [STOMPBOX] + ([RABBIT] if o.rabbit_url else [])
    three = with_rabbit + [NULL]
    cases = []
    run_s = 2 if small else 10  # seconds of steady publishing
    long_run = 120 if small else 900  # the most one run of the tool may take

    def user_dests(system, ep, n):
        """n users, message j to user j: stompbox's (and the null broker's) user
        destinations, or for RabbitMQ, which has none, a topic per user."""
        if system == RABBIT:
            return common(ep, n, "/topic/u.{i}", "/topic/u.{j}", targets=n)
        return common(ep, n, "/user/queue/bench", "/user/u{j}/queue/bench", ["userid=u{i}"],
                      targets=n)

    # 1. fan-out: one topic; bursts as fast as the window allows, then a steady rate.
    topic = "/topic/bench"
    for subs in ([100] if small else [1_000, 10_000]):
        messages = max((20_000 if small else 1_000_000) // subs, 1)
        burst = max(messages // 10, 1)

        def burst_args(system, ep, subs=subs, messages=messages, burst=burst):
            # Two bursts in flight at most: the publisher keeps pace with the broker, so the
            # run lasts until the broker has delivered everything, however slow it is.
            return (common(ep, subs, topic, topic) + stomp_publish(ep)
                    + ["--rate", "0", "--messages", str(messages), "--burst", str(burst),
                       "--window-deliveries", str(2 * burst * subs), "--drain-ms", "15000"])

        cases.append(Case("fanout", f"fanout-{subs}-burst",
                          f"1 topic, {subs:,} subscribers: {messages:,} msgs in bursts of "
                          f"{burst:,}", three, burst_args, RATE, long_run))

        rate = max((10_000 if small else 50_000) // subs, 1)

        def steady_args(system, ep, subs=subs, rate=rate):
            return (common(ep, subs, topic, topic) + stomp_publish(ep)
                    + ["--rate", str(rate), "--duration", str(run_s), "--drain-ms", "3000"])

        cases.append(Case("fanout", f"fanout-{subs}-steady",
                          f"1 topic, {subs:,} subscribers: {rate:,} msgs/s "
                          f"({rate * subs:,} deliveries/s) for {run_s}s",
                          three, steady_args, RATE_P99, long_run))

    # 2. targeted: each message to one user, over STOMP and (stompbox only) the publish API.
    users = 200 if small else 10_000
    messages = 10_000 if small else 200_000

    def targeted_args(system, ep, users=users, messages=messages):
        return (user_dests(system, ep, users) + stomp_publish(ep)
                + ["--rate", "0", "--messages", str(messages), "--drain-ms", "5000"])

    cases.append(Case("targeted", "targeted",
                      f"{users:,} users, {messages:,} msgs, each to one user", three,
                      targeted_args, RATE, long_run,
                      note="stompbox and the null broker: CONNECT `userid=u{i}`, subscribe "
                           "`/user/queue/bench`, SEND to `/user/u{j}/queue/bench`; RabbitMQ "
                           "(no user destinations): subscribe `/topic/u.{i}`, SEND to "
                           "`/topic/u.{j}`"))

    # The same with four publishers: whether a system's figure was bounded by one publishing
    # connection (RabbitMQ serializes a connection's frames in one Erlang process).
    def targeted_pubs_args(system, ep, users=users, messages=messages):
        return (user_dests(system, ep, users) + stomp_publish(ep, publishers=4)
                + ["--rate", "0", "--messages", str(messages), "--drain-ms", "5000"])

    cases.append(Case("targeted", "targeted-4-publishers",
                      "the same from 4 publishers", three, targeted_pubs_args, RATE, long_run))

    def targeted_api_args(system, ep, users=users, messages=messages):
        return (common(ep, users, "/user/queue/bench", "/queue/bench", ["userid=u{i}"],
                       targets=users)
                + ["--publish", "api", "--api-url",
                   f"{ep.api_url}/api/v1/tenants/default/publish", "--api-key", API_KEY,
                   "--api-receiver", "u{j}", "--rate", "0", "--messages", str(messages),
                   "--drain-ms", "5000"])

    cases.append(Case("targeted", "targeted-api",
                      "the same through the HTTP publish API (`receiver: u{j}`)",
                      [STOMPBOX], targeted_api_args, RATE, long_run))

    # 3. latency at a steady 20,000 deliveries/s (small: 10,000).
    offered = 10_000 if small else 20_000
    lat_s = 3 if small else 20
    for subs in ([50] if small else [100, 1_000]):
        rate = offered // subs

        def latency_args(system, ep, subs=subs, rate=rate, lat_s=lat_s):
            return (common(ep, subs, topic, topic) + stomp_publish(ep)
                    + ["--rate", str(rate), "--duration", str(lat_s), "--drain-ms", "2000"])

        cases.append(Case("latency", f"latency-{subs}",
                          f"{offered:,} deliveries/s: {subs:,} subscribers x {rate:,} msgs/s "
                          f"for {lat_s}s", three, latency_args, LATENCY, long_run))

    # 4. idle memory per connected, subscribed client (each on its own topic, as a browser
    # with its own channel would be).
    most = o.most_connections
    for n in ([100, 200] if small else [10_000, most]):

        def idle_args(system, ep, n=n):
            return (common(ep, n, "/topic/idle.{i}", "/topic/idle.0")
                    + ["--publish", "none", "--settle-ms", "500" if small else "3000",
                       "--idle-secs", "1" if small else "5"])

        note = ""
        if n == most and not small:
            note = (f"{most:,} is the most this machine allows: every process's descriptors "
                    f"are capped at {o.nofile_hard:,} (`ulimit -Hn`; there is no "
                    "CAP_SYS_RESOURCE to raise it)")
            if bench.rabbit and bench.rabbit.sockets:
                note += (f" and RabbitMQ keeps its sockets to {bench.rabbit.sockets:,} of "
                         "those")
            note += ". The issue's 50,000 needs a hard limit above ~51,000."
        cases.append(Case("idle", f"idle-{n}",
                          f"{n:,} connected, subscribed clients: node RSS growth",
                          with_rabbit, idle_args, MEMORY, long_run, note=note,
                          fresh_rabbit=True))

    # 5. connect rate with authentication.
    n = 200 if small else 10_000
    per_user_tokens = o.header_file_flag is not None

    def auth_args(system, ep, n=n):
        a = common(ep, n, "/topic/auth", "/topic/auth")
        if system == STOMPBOX:
            exp = int(time.time()) + 3600  # an hour: outlasts any run
            if per_user_tokens:
                path = os.path.join(o.work, "jwt-tokens.txt")
                with open(path, "w") as f:
                    for i in range(n):
                        f.write(jwt_hs256(JWT_SECRET, {"sub": f"u{i}", "exp": exp}) + "\n")
                a += [o.header_file_flag, f"passcode={path}"]
            else:
                token = jwt_hs256(JWT_SECRET, {"sub": "bench", "exp": exp})
                a += ["--connect-header", f"passcode={token}"]
        else:
            bench.rabbit.import_users(n)
        return a + ["--publish", "none", "--settle-ms", "200"]

    note = (f"stompbox: the `jwt-auth` plugin, "
            + ("one HS256 JWT per user" if per_user_tokens else "an HS256 JWT")
            + " in `passcode`, then SUBSCRIBE `/topic/auth` (one `authorize` call); RabbitMQ: "
            f"{n:,} internal users (SHA-256 password hashes, imported), `login=u{{i}}`, "
            "`passcode=pw{i}`")
    if not per_user_tokens:
        note += (". The load tool has no per-connection header values (a file) yet, so every "
                 "stompbox client sends the same valid JWT; the plugin checks it in full on "
                 "every CONNECT all the same")
    cases.append(Case("auth", "auth", f"{n:,} clients: CONNECT + SUBSCRIBE", with_rabbit,
                      auth_args, CONNECT, long_run,
                      variant={STOMPBOX: "jwt", RABBIT: "users"}, note=note))

    # 6. cluster: the publisher on node 1, the subscribers on node 2.
    users = 100 if small else 1_000
    rate = 2_000 if small else 10_000
    max_messages = 10_000 if small else 200_000
    for mode in ("steady", "max"):

        def cluster_args(system, ep, mode=mode, users=users, rate=rate,
                         max_messages=max_messages):
            # Presence and topic interest reach the other node through Redis first.
            a = user_dests(system, ep, users) + stomp_publish(ep) + ["--settle-ms", "1000"]
            if mode == "steady":
                return a + ["--rate", str(rate), "--duration", str(run_s), "--drain-ms", "3000"]
            return a + ["--rate", "0", "--messages", str(max_messages), "--drain-ms", "5000"]

        what = (f"{rate:,} msgs/s for {run_s}s" if mode == "steady"
                else f"{max_messages:,} msgs as fast as possible")
        cases.append(Case("cluster", f"cluster-{mode}",
                          f"{users:,} users, each msg to one user, {what}",
                          [CLUSTER] + three, cluster_args,
                          RATE_P99 if mode == "steady" else RATE, long_run,
                          note="" if mode == "max" else
                          "2 nodes + Redis: subscribers on node 2, the publisher on node 1, "
                          "so every message crosses Redis; 1 node, RabbitMQ and the null "
                          "broker: the same load on one server"))
    return cases


# --- the table ------------------------------------------------------------------------------


def best(runs, better, field):
    """The run with the better value of `field` (a run missing it counts only if none has it)."""
    ok = [f for f in runs if f is not None and fig(f, field) is not None]
    if not ok:
        return None
    pick = max if better == "max" else min
    return pick(ok, key=lambda f: fig(f, field))


def fmt(v):
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"×{a / b:.2f}"


def cell(f, field, errors):
    if f is None:
        return "failed" if errors else "—"
    text = fmt(fig(f, field))
    marks = []
    expected, missing = fig(f, F_EXPECTED), fig(f, F_MISSING)
    if expected and missing:
        marks.append(f"{100.0 * missing / expected:.1f}% not delivered")
    failed = fig(f, F_FAILED)
    if failed:
        marks.append(f"{failed:,.0f} conns failed")
    dropped = fig(f, F_DISCONNECTED)
    if dropped:
        marks.append(f"{dropped:,.0f} dropped")
    if marks:
        text += " (" + ", ".join(marks) + ")"
    if (fig(f, F_TOOL_CPU) or 0) >= TOOL_BOUND_PCT and fig(f, F_EXPECTED):
        text += " †"
    if (fig(f, F_OTHER_CPU) or 0) >= OTHER_LOAD_PCT and fig(f, F_EXPECTED):
        text += " ‡"
    return text


def render(bench, cases):
    rows = [
        "| scenario | case | figure | stompbox | RabbitMQ | null broker | stompbox ÷ RabbitMQ "
        "| stompbox ÷ null |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes, failures = [], []
    shown_group = None
    for case in cases:
        per, errors = {}, {}
        for key, system, rnd, figures, error in bench.runs:
            if key != case.key:
                continue
            per.setdefault(system, []).append(figures)
            if error:
                errors.setdefault(system, []).append(error)
                failures.append(f"{case.key} {system} round {rnd}: {error}")
        if not per:
            continue
        _, field0, better0 = case.figures[0]
        chosen = {s: best(runs, better0, field0) for s, runs in per.items()}
        title = case.title
        if case.note:
            notes.append(case.note)
            title += f" [{len(notes)}]"

        def text(system, field):
            if system not in per:
                return "—"
            return cell(chosen.get(system), field, errors.get(system))

        def val(system, field):
            f = chosen.get(system)
            return None if f is None else fig(f, field)

        lines = []
        if CLUSTER in per:
            for label, field, _ in case.figures:
                lines.append([title + ": 1 node", label, text(STOMPBOX, field),
                              text(RABBIT, field), text(NULL, field),
                              ratio(val(STOMPBOX, field), val(RABBIT, field)),
                              ratio(val(STOMPBOX, field), val(NULL, field))])
            for label, field, _ in case.figures:
                r = ratio(val(CLUSTER, field), val(STOMPBOX, field))
                lines.append(["2 nodes + Redis", label,
                              text(CLUSTER, field) + (f" ({r} of 1 node)" if r != "—" else ""),
                              "", "", "", ""])
        else:
            for label, field, _ in case.figures:
                lines.append([title, label, text(STOMPBOX, field), text(RABBIT, field),
                              text(NULL, field), ratio(val(STOMPBOX, field), val(RABBIT, field)),
                              ratio(val(STOMPBOX, field), val(NULL, field))])
        shown_case = None
        for line in lines:
            # Scenario and case once each, on their first row.
            group = GROUPS[case.scenario]
            first, line[0] = line[0], line[0] if line[0] != shown_case else ""
            shown_case = first
            rows.append("| " + " | ".join([group if group != shown_group else ""] + line) + " |")
            shown_group = group
    return rows, notes, failures


def machine_line(o):
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")),
                         "unknown CPU")
    except OSError:
        model = "unknown CPU"
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
        mem = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    rev = subprocess.run(["git", "-C", o.root, "describe", "--always", "--dirty"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout.decode().strip()
    return (f"{os.cpu_count()} cores ({model}){mem}; descriptors per process {o.nofile_hard:,} "
            f"(hard); stompbox {rev or 'unknown revision'}"
            + (f"; RabbitMQ {o.rabbit_version} Web-STOMP" if o.rabbit_url else "; no RabbitMQ"))


# --- main -----------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--bench-bin", required=True)
    ap.add_argument("--stompbox-bin", required=True)
    ap.add_argument("--nofile-hard", type=int, required=True)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--jwt-wasm")
    ap.add_argument("--redis-server")
    ap.add_argument("--rabbit-url")
    ap.add_argument("--rabbit-server")
    ap.add_argument("--rabbit-start-script")
    ap.add_argument("--rabbitmqctl")
    ap.add_argument("--rabbit-version", default="")
    o = ap.parse_args()
    o.rounds = o.rounds or (1 if o.small else 2)
    o.rabbit_settle = 1.0 if o.small else 3.0

    # Per-connection header values from a file (line i for connection i), if the load tool
    # has them: what one JWT per user needs, since a signature cannot be templated.
    helptext = subprocess.run([o.bench_bin, "run", "--help"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT).stdout.decode(errors="replace")
    flags = re.findall(r"--connect-header-file\b", helptext)
    o.header_file_flag = flags[0] if flags else None

    # bench.sh stops this script with SIGTERM; run the cleanup below on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    only = [s for s in o.only.split(",") if s]
    bench = Bench(o)
    started = time.monotonic()
    try:
        if bench.rabbit:
            bench.rabbit.start()
        # Each process (the load tool, a node) holds one descriptor per connection; leave
        # room for the rest (logs, listeners, the publishers), and stay below RabbitMQ's
        # socket limit.
        most = o.nofile_hard - 1_000
        if bench.rabbit and bench.rabbit.sockets:
            most = min(most, bench.rabbit.sockets - 500)
        o.most_connections = max(most // 1_000 * 1_000, 1_000)
        cases = [c for c in plan(o, bench) if not only or c.scenario in only]
        for case in cases:
            log(f"case {case.key}: {case.title}")
            bench.run_case(case)
    finally:
        if bench.rabbit:
            log("stopping RabbitMQ")
            bench.rabbit.stop()
        bench.procs.stop_all()

    rows, notes, failures = render(bench, cases)
    size = "small sizes, 1 round" if o.small else f"full sizes, better of {o.rounds} rounds"
    out = [
        f"## stompbox benchmark ({size}, A B A B)",
        "",
        machine_line(o),
        "",
        *rows,
        "",
        "Ratios are stompbox ÷ the other system: above 1 is better for deliveries/s and "
        "connects/s, below 1 is better for latency and memory. Each cell is the system's "
        "better round; every run is in target/bench/results.jsonl. The null broker is "
        "`stompbox-bench null-broker`, a minimal fan-out server: the ceiling of this machine. "
        f"† the load tool used {TOOL_BOUND_PCT}%+ of its core: the tool may be the limit. "
        f"‡ other processes used {OTHER_LOAD_PCT}%+ of a core during the run: a noisy figure. "
        "Not delivered: expected deliveries that had not arrived when the run ended, a few "
        "seconds after the last publish (at a steady rate: the backlog of a broker that "
        "could not keep up).",
    ]
    for i, n in enumerate(notes, 1):
        out.append("")
        out.append(f"[{i}] {n}")
    out.append("")
    out.append(f"{len(bench.runs)} runs in {time.monotonic() - started:.0f}s.")
    text = "\n".join(out)
    print(text, flush=True)
    with open(os.path.join(o.out, "results.md"), "w") as f:
        f.write(text + "\n")
    if failures:
        print("\nFAILED RUNS:\n" + "\n".join("- " + f for f in failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
