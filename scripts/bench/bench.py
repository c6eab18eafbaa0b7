#!/usr/bin/env python3
"""The benchmark suite's driver (scripts/bench.sh runs it; see that file's header).

`run` measures and writes one JSON file; `compare A.json B.json` prints B/A for every figure.
Needs grpcio (the venv of scripts/install-tools.sh), k6, h2load, and for PostgreSQL psql.
"""
import argparse
import atexit
import datetime
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
KEY = "rsk_bench_admin_key_not_a_secret_0123456789"
SVC = "/refunds.v1.RefundService/"
HEALTH = "/grpc.health.v1.Health/Check"

# ---------------------------------------------------------------------------------------------
# Clean-up: every process and database made here goes at exit, whatever the reason.

_procs = []
_databases = []  # (admin_url, name)


def _cleanup():
    for p in _procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 10
    for p in _procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    _procs.clear()
    while _databases:
        admin, name = _databases.pop()
        subprocess.run(["psql", admin, "-qAtc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _on_signal(signum, _frame):
    _cleanup()
    sys.exit(128 + signum)


def spawn(cmd, log, env=None):
    """Starts `cmd` in its own process group (so that its children go with it), output to `log`."""
    out = open(log, "ab")
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    out.close()
    _procs.append(p)
    return p


def run_grouped(cmd, log, env=None):
    """Runs `cmd` to its end as `spawn` starts it (killed with the run): its exit status."""
    p = spawn(cmd, log, env)
    p.wait()
    _procs.remove(p)
    return p.returncode


def stop(p, grace=10):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p in _procs:
        _procs.remove(p)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Protobuf by hand: the few small messages the suite sends, and a reader for the answers.

def _varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pb_str(field, s):
    b = s.encode() if isinstance(s, str) else s
    return _varint(field << 3 | 2) + _varint(len(b)) + b


def pb_int(field, n):
    return _varint(field << 3) + _varint(n)


def pb_read(buf):
    """{field: [values]}: ints for varints, bytes for length-delimited fields."""
    out, i = {}, 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _read_varint(buf, i)
        elif wire == 2:
            n, i = _read_varint(buf, i)
            v, i = bytes(buf[i:i + n]), i + n
        elif wire == 1:
            v, i = bytes(buf[i:i + 8]), i + 8
        elif wire == 5:
            v, i = bytes(buf[i:i + 4]), i + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.setdefault(field, []).append(v)
    return out


def _read_varint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def create_refund_req(payment, amount, key=None):
    m = pb_str(1, payment) + pb_int(3, amount) + pb_str(4, "USD")
    return m + (pb_str(8, key) if key else b"")


def grpc_frame(msg):
    return b"\0" + len(msg).to_bytes(4, "big") + msg


class Client:
    """A raw-bytes gRPC client of the service (no generated code)."""

    def __init__(self, addr):
        # Short reconnect back-off: start-up is timed by polling before the port is open, and
        # grpc's default back-off (1 s and more) would be timed with it.
        self.channel = grpc.insecure_channel(addr, options=[
            ("grpc.initial_reconnect_backoff_ms", 5), ("grpc.min_reconnect_backoff_ms", 5),
            ("grpc.max_reconnect_backoff_ms", 20)])
        self.meta = [("authorization", f"Bearer {KEY}")]

    def call(self, method, req, timeout=30):
        """(grpc.StatusCode, answer bytes or None, details)."""
        path = method if method.startswith("/") else SVC + method
        fn = self.channel.unary_unary(path)
        try:
            resp, call = fn.with_call(req, metadata=self.meta, timeout=timeout)
            return call.code(), resp, ""
        except grpc.RpcError as e:
            return e.code(), None, e.details()

    def serving(self, timeout=1):
        code, resp, _ = self.call(HEALTH, b"", timeout=timeout)
        return code == grpc.StatusCode.OK and pb_read(resp).get(1) == [1]

    def close(self):
        self.channel.close()


# ---------------------------------------------------------------------------------------------
# /proc

def proc_mib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return None


class RssSampler:
    """Samples a process's VmRSS every 200 ms while running; `peak` is the largest seen."""

    def __init__(self, pid):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            v = proc_mib(self.pid, "VmRSS")
            if v:
                self.peak = max(self.peak, v)
            self._stop.wait(0.2)

    def stop(self):
        self._stop.set()
        self._t.join()
        return self.peak


# ---------------------------------------------------------------------------------------------
# The service

class Service:
    def __init__(self, bench, store, name, db_url, env_extra=None, args_extra=()):
        self.bench, self.store, self.name = bench, store, name
        self.grpc_port, self.http_port = free_port(), free_port()
        self.addr = f"127.0.0.1:{self.grpc_port}"
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.db_url = db_url
        # The provider is a standalone sandbox (latency 0, no limit), not the in-process one:
        # the service's memory is then its own, not the sandbox's ledger of 100,000 payments.
        self.sandbox_port = free_port()
        self.sandbox = f"http://127.0.0.1:{self.sandbox_port}/sandbox"
        self.sandbox_proc = spawn([bench.bin, "sandbox", "serve", "--listen",
                                   f"127.0.0.1:{self.sandbox_port}", "--latency-ms", "0"],
                                  os.path.join(bench.run_dir, f"sandbox-{store}-{name}.log"),
                                  dict(os.environ, RUST_LOG="warn"))
        for _ in range(500):
            try:
                urllib.request.urlopen(f"{self.sandbox}/stats", timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        else:
            raise SystemExit("the standalone sandbox did not start")
        env = dict(os.environ, RUST_LOG="warn", REFUND_BOOTSTRAP_API_KEY=KEY)
        env.update(env_extra or {})
        cmd = [bench.bin, "serve", "--grpc-addr", self.addr,
               "--http-addr", f"127.0.0.1:{self.http_port}",
               "--database-url", db_url, "--sandbox-url", self.sandbox,
               # The load is one key's: no per-key limit (the default is 100/s).
               "--api-key-rate-limit", "0", *args_extra]
        self.log = os.path.join(bench.run_dir, f"service-{store}-{name}.log")
        t0 = time.monotonic()
        self.proc = spawn(cmd, self.log, env)
        self.client = Client(self.addr)
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited ({self.proc.returncode}); see {self.log}")
            try:
                if self.client.serving(timeout=0.5):
                    break
            except Exception:
                pass
            if time.monotonic() - t0 > 60:
                raise SystemExit(f"the service was not SERVING within 60 s; see {self.log}")
            time.sleep(0.01)
        self.startup_s = time.monotonic() - t0

    @property
    def pid(self):
        return self.proc.pid

    def rss(self):
        return proc_mib(self.pid, "VmRSS")

    def hwm(self):
        return proc_mib(self.pid, "VmHWM")

    def seed(self, count, amount):
        """`count` captured payments of `amount` USD cents at the sandbox: their ids."""
        ids = []
        while count > 0:
            n = min(count, 100_000)
            body = json.dumps({"amount": amount, "currency": "USD", "count": n}).encode()
            req = urllib.request.Request(f"{self.sandbox}/payments", data=body,
                                         headers={"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                ids += [p["id"] for p in json.load(r)["payments"]]
            count -= n
        return ids

    def sandbox_payment(self, pid):
        with urllib.request.urlopen(f"{self.sandbox}/payments/{pid}", timeout=30) as r:
            return json.load(r)

    def stop(self):
        self.client.close()
        stop(self.proc)
        stop(self.sandbox_proc)


# ---------------------------------------------------------------------------------------------
# Load generators

def k6(bench, tag, addr, env):
    summary = os.path.join(bench.run_dir, f"k6-{tag}.json")
    full_env = dict(os.environ, K6_NO_USAGE_REPORT="true", ADDR=addr, KEY=KEY,
                    PROTO=os.path.join(ROOT, "proto"), SUMMARY=summary,
                    **{k: str(v) for k, v in env.items()})
    logf = os.path.join(bench.run_dir, f"k6-{tag}.log")
    r = run_grouped([bench.k6, "run", "--quiet", "--no-color",
                     os.path.join(BENCH_DIR, "create_refund.js")], logf, full_env)
    if r != 0 or not os.path.exists(summary):
        raise SystemExit(f"k6 {tag} failed ({r}); see {logf}")
    with open(summary) as f:
        return json.load(f)


def h2load(bench, tag, addr, path, msg, expect_len):
    """A fixed gRPC request, over and over, from h2load; its figures, and the share of answers
    that were whole OK messages. h2load counts any HTTP 200 as a success, and a gRPC error is an
    HTTP 200 with no DATA (trailers only): every OK answer here has `expect_len` bytes of DATA,
    so DATA bytes / requests must come to `expect_len`."""
    body = os.path.join(bench.run_dir, f"h2load-{tag}.bin")
    with open(body, "wb") as f:
        f.write(grpc_frame(msg))
    logf = os.path.join(bench.run_dir, f"h2load-{tag}.requests")
    # No --warm-up-time: h2load's DATA byte count includes the warm-up's answers, its request
    # count does not, and the check below needs both over the same requests.
    cmd = ["h2load", "-D", str(bench.h2_seconds),
           "-c", str(bench.h2_clients), "-m", str(bench.h2_streams), "-t", "1",
           "-H", "content-type: application/grpc", "-H", "te: trailers",
           "-H", f"authorization: Bearer {KEY}", "-d", body, "--log-file", logf,
           f"http://{addr}{path}"]
    out_file = os.path.join(bench.run_dir, f"h2load-{tag}.out")
    code = run_grouped(cmd, out_file)
    with open(out_file) as f:
        out = f.read()
    if code != 0:
        raise SystemExit(f"h2load {tag} failed: {out[-500:]}")
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    done, succeeded, failed = int(req.group(3)), int(req.group(4)), int(req.group(5)) + int(req.group(6))
    data = re.search(r"traffic: .*\((\d+)\) data", out)
    data = int(data.group(1)) if data else None
    lat = []
    with open(logf) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]) / 1000)
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(len(lat) * p))] if lat else None

    ok_share = (data / (succeeded * expect_len)) if data is not None and succeeded else None
    return {
        "rps": rps,
        "requests": done, "http_ok": succeeded, "http_failed": failed,
        "data_bytes": data, "expected_frame_bytes": expect_len,
        # 1.0 when every answer carried a whole message; a gRPC error carries none.
        "grpc_ok_share": ok_share,
        "error_rate": 1 - min(1.0, ok_share) if ok_share is not None else None,
        "p50_ms": pct(0.5), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
    }


def confirm_ok(client, path, msg, n=5):
    """Sends the h2load request `n` times with a real gRPC client: (all OK, answer length)."""
    length = None
    for _ in range(n):
        code, resp, details = client.call(path, msg)
        if code != grpc.StatusCode.OK:
            raise SystemExit(f"{path} answers {code} {details}: the h2load figures would count errors")
        length = len(grpc_frame(resp))
    return length


# ---------------------------------------------------------------------------------------------
# PostgreSQL's statement log into a pgbench script

_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_PARAM = re.compile(r"\$(\d+) = (NULL|'(?:[^']|'')*')")
_ID = re.compile(r"'([a-z]{1,12})_([0-9a-f]{32})'")


def captured_statements(text, dbname):
    """The statements (parameters in place) that `dbname`'s sessions logged between bench_db's
    two markers."""
    records, cur = [], None
    for line in text.splitlines():
        if _LOG_RECORD.match(line):
            cur = [line]
            records.append(cur)
        elif cur is not None:
            cur.append(line.lstrip("\t"))
    tag = f"@{dbname} "
    out, capturing = [], False
    for rec in records:
        first = rec[0]
        if tag not in first:
            continue
        body = " ".join(rec)
        m = re.search(r"(LOG|DETAIL):  (.*)$", body)
        if not m:
            continue
        kind, msg = m.groups()
        if kind == "LOG":
            st = re.match(r"(?:statement|execute [^:]+): (.*)$", msg)
            if not st:
                continue
            sql = st.group(1).strip()
            if "bench_db: capture start" in sql:
                capturing, out = True, []
                continue
            if "bench_db: capture end" in sql:
                return out
            if capturing:
                out.append(sql)
        elif kind == "DETAIL" and capturing and out and msg.startswith("parameters: "):
            params = {int(n): v for n, v in _PARAM.findall(msg)}
            out[-1] = re.sub(r"\$(\d+)\b", lambda x: params.get(int(x.group(1)), x.group(0)), out[-1])
    return []


def pgbench_script(statements):
    """One CreateRefund per pgbench transaction. Ids (`rf_…`, `evt_…`, the payment, the
    idempotency key: a prefix and 32 hex digits) are made anew each time from a random :tx, the
    same id the same way throughout; the event's sequence is the one the sequence upsert returns
    (\\gset), as the store takes it."""
    ids = {}

    def new_id(m):
        key = m.group(0)
        if key not in ids:
            ids[key] = len(ids) + 1
        return f"('{m.group(1)}_' || lpad((:tx * 100 + {ids[key]})::text, 32, '0'))"

    lines = ["\\set tx random(1, 9000000000000000)"]
    for sql in statements:
        sql = _ID.sub(new_id, sql)
        if "INSERT INTO event_sequences" in sql and "RETURNING last_sequence" in sql:
            lines.append(sql + " \\gset")
            continue
        if sql.startswith('INSERT INTO "events"'):
            cols = re.match(r'INSERT INTO "events" \(([^)]*)\) VALUES \((.*)\)', sql)
            if cols:
                names = [c.strip().strip('"') for c in cols.group(1).split(",")]
                values = split_values(cols.group(2))
                if "sequence" in names and len(values) == len(names):
                    values[names.index("sequence")] = ":last_sequence"
                    sql = f'INSERT INTO "events" ({cols.group(1)}) VALUES ({", ".join(values)})'
        lines.append(sql + ";")
    return "\n".join(lines) + "\n"


def split_values(s):
    """A VALUES list split at its top-level commas (quotes and parentheses respected)."""
    out, depth, quoted, cur = [], 0, False, ""
    for ch in s:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


# ---------------------------------------------------------------------------------------------
# Results: figures with their targets

class Results:
    def __init__(self):
        self.figures = {}

    def add(self, key, value, unit="", target=None, note=""):
        """`target`: (op, bound) with op one of >=, <=, <, >, ==; or None."""
        met = None
        if target is not None and value is not None:
            op, bound = target
            met = {">=": value >= bound, "<=": value <= bound, "<": value < bound,
                   ">": value > bound, "==": value == bound}[op]
        self.figures[key] = {"value": value, "unit": unit,
                             "target": f"{target[0]} {target[1]}" if target else None,
                             "met": met, "note": note}
        v = f"{value:.3f}" if isinstance(value, float) else value
        log(f"{key} = {v} {unit}" + (f" (target {target[0]} {target[1]}: {'met' if met else 'NOT met'})" if target else ""))


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def print_table(figures, out=sys.stdout):
    rows = [("figure", "value", "unit", "target", "met")]
    for k, f in figures.items():
        met = {True: "yes", False: "NO", None: ""}[f["met"]]
        rows.append((k, fmt(f["value"]), f["unit"], f["target"] or "", met))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    for i, r in enumerate(rows):
        print(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:<{w[2]}}  {r[3]:<{w[3]}}  {r[4]}", file=out)
        if i == 0:
            print("  ".join("-" * x for x in w), file=out)
    met = [f["met"] for f in figures.values() if f["met"] is not None]
    print(f"\ntargets met: {sum(met)} of {len(met)}", file=out)


# ---------------------------------------------------------------------------------------------
# The run

class Bench:
    def __init__(self, a):
        self.a = a
        self.quick = a.quick
        self.bin = os.path.abspath(a.bin)
        self.bench_bulk = os.path.abspath(a.bench_bulk)
        self.bench_db = os.path.abspath(a.bench_db)
        self.k6 = a.k6
        self.pg = a.pg_url
        self.run_dir = a.run_dir or tempfile.mkdtemp(prefix="refund-bench-")
        os.makedirs(self.run_dir, exist_ok=True)
        self.seconds = 8 if a.quick else 15
        self.ceiling_seconds = 6 if a.quick else 10
        self.h2_seconds = 5 if a.quick else 10
        self.h2_clients, self.h2_streams = 4, 16
        self.vus = 32
        self.hot_vus = 64
        self.r = Results()

    # A fresh database for one service: a SQLite file, or a PostgreSQL database dropped at exit.
    def fresh_db(self, store, tag):
        if store == "sqlite":
            return f"sqlite://{self.run_dir}/{tag}.db?mode=rwc"
        name = f"refund_bench_{uuid.uuid4().hex[:16]}"
        subprocess.run(["psql", self.pg, "-qAtc", f"CREATE DATABASE {name}"], check=True)
        _databases.append((self.pg, name))
        return self.pg.rsplit("/", 1)[0] + "/" + name

    def drop_db_named(self, name):
        subprocess.run(["psql", self.pg, "-qAtc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                       check=False, stdout=subprocess.DEVNULL)

    def drop_db(self, url):
        for admin, name in list(_databases):
            if url.endswith("/" + name):
                subprocess.run(["psql", admin, "-qAtc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                               check=False, stdout=subprocess.DEVNULL)
                _databases.remove((admin, name))

    def store_arg(self, store):
        return "sqlite" if store == "sqlite" else self.pg

    # ---- 1, 4, 5: unary load, memory idle and under load, start-up --------------------------
    def unary(self, store):
        r, s = self.r, store
        db = self.fresh_db(store, "unary")
        log(f"{s}: unary load (service on a fresh database)")
        svc = Service(self, store, "unary", db)
        r.add(f"{s}.startup.fresh_db_s", svc.startup_s, "s", note="spawn to SERVING, migrations included")
        time.sleep(3)
        r.add(f"{s}.memory.idle_mib", svc.rss(), "MiB", ("<", 60))
        sampler = RssSampler(svc.pid)

        # Payments: enough for the closed and the open run without reuse at ~3,000/s.
        n_pay = 40_000 if self.quick else 100_000
        payments = svc.seed(n_pay, 10_000)
        pay_file = os.path.join(self.run_dir, f"payments-{s}.txt")
        with open(pay_file, "w") as f:
            f.write("\n".join(payments))
        # Each payment takes up to 100 refunds of 100: a wrap-around stays valid.
        closed = k6(self, f"{s}-create-closed", svc.addr, {
            "MODE": "closed", "VUS": self.vus, "DURATION": f"{self.seconds}s",
            "PAYMENTS": pay_file, "AMOUNT": 100})
        r.add(f"{s}.create.max_rps", closed["ok_rps"], "req/s", note=f"k6, {self.vus} callers back to back")
        r.add(f"{s}.create.p50_ms", closed["p50_ms"], "ms")
        r.add(f"{s}.create.p95_ms", closed["p95_ms"], "ms")
        r.add(f"{s}.create.p99_ms", closed["p99_ms"], "ms")
        r.add(f"{s}.create.error_rate", closed["error_rate"], "", ("==", 0))
        half = max(1.0, closed["ok_rps"] / 2)
        # Fresh payments for the open run: the end of the list, in the other direction.
        rev_file = os.path.join(self.run_dir, f"payments-{s}-rev.txt")
        with open(rev_file, "w") as f:
            f.write("\n".join(reversed(payments)))
        opened = k6(self, f"{s}-create-half", svc.addr, {
            "MODE": "open", "RATE": half, "DURATION": f"{self.seconds}s",
            "PAYMENTS": rev_file, "AMOUNT": 100})
        r.add(f"{s}.create.half_load_rps", opened["ok_rps"], "req/s", note="open model at half the max")
        r.add(f"{s}.create.half_load_p99_ms", opened["p99_ms"], "ms", ("<", 25))
        r.add(f"{s}.create.half_load_error_rate", opened["error_rate"], "", ("==", 0))

        # Hot payment: every caller partially refunds the same payment.
        [hot] = svc.seed(1, 10 ** 12)
        hot_file = os.path.join(self.run_dir, f"hot-{s}.txt")
        with open(hot_file, "w") as f:
            f.write(hot)
        hot_run = k6(self, f"{s}-hot", svc.addr, {
            "MODE": "closed", "VUS": self.hot_vus, "DURATION": f"{self.seconds}s",
            "PAYMENTS": hot_file, "AMOUNT": 1})
        r.add(f"{s}.hot.rps", hot_run["ok_rps"], "req/s", (">=", 500),
              note=f"{self.hot_vus} callers, partial refunds of one payment")
        r.add(f"{s}.hot.p99_ms", hot_run["p99_ms"], "ms")
        r.add(f"{s}.hot.error_rate", hot_run["error_rate"], "", ("==", 0))
        # The race: 64 callers, 1,500 refunds of 1 cent on a payment of 1,000 cents. Exactly
        # 1,000 may succeed; the provider's ledger and ours must both stay within the capture.
        [race] = svc.seed(1, 1000)
        race_file = os.path.join(self.run_dir, f"race-{s}.txt")
        with open(race_file, "w") as f:
            f.write(race)
        raced = k6(self, f"{s}-race", svc.addr, {
            "MODE": "shared", "VUS": self.hot_vus, "ITERATIONS": 1500,
            "PAYMENTS": race_file, "AMOUNT": 1})
        at_provider = svc.sandbox_payment(race)["amount_refunded"]
        ours = self.refunded_in_db(svc, race)
        over = max(0, at_provider - 1000) + max(0, ours - 1000) + max(0, raced["ok"] - 1000)
        r.add(f"{s}.hot.over_refunds", over, "cents", ("==", 0),
              note=f"race: {raced['ok']} OK of 1,500, provider {at_provider}, ours {ours}, capture 1,000")
        r.add(f"{s}.hot.race_refused", raced["over_refund"], "", ("==", 500),
              note="FAILED_PRECONDITION answers in the race")

        k6_peak = sampler.stop()
        r.add(f"{s}.memory.under_create_load_mib", k6_peak, "MiB", ("<", 60),
              note="largest VmRSS seen during the CreateRefund runs (k6)")
        sampler = RssSampler(svc.pid)

        # Fixed requests from h2load: GetRefund, ListRefunds, and health Check as the yardstick.
        code, resp, details = svc.client.call("CreateRefund", create_refund_req(payments[-1], 100))
        if code != grpc.StatusCode.OK:
            raise SystemExit(f"CreateRefund for GetRefund: {code} {details}")
        refund_id = pb_read(resp)[1][0].decode()
        tests = [
            ("health", HEALTH, b""),
            ("get", SVC + "GetRefund", pb_str(1, refund_id)),
            ("list", SVC + "ListRefunds", pb_int(6, 20)),
        ]
        h2 = {}
        for name, path, msg in tests:
            expect = confirm_ok(svc.client, path, msg)
            h2[name] = h2load(self, f"{s}-{name}", svc.addr, path, msg, expect)
        for name in h2:
            log(f"{s} h2load {name}: {json.dumps(h2[name])}")
        r.add(f"{s}.health.rps", h2["health"]["rps"], "req/s",
              note=f"h2load -c{self.h2_clients} -m{self.h2_streams}")
        r.add(f"{s}.get.rps", h2["get"]["rps"], "req/s")
        r.add(f"{s}.get.vs_health", h2["get"]["rps"] / h2["health"]["rps"], "x", (">=", 0.5),
              note="GetRefund RPS / health Check RPS, same h2load settings")
        r.add(f"{s}.list.rps", h2["list"]["rps"], "req/s", note="page of 20, no filter")
        for name in ("get", "list", "health"):
            for p in ("p50_ms", "p95_ms", "p99_ms"):
                if name != "health" or p == "p99_ms":
                    r.add(f"{s}.{name}.{p}", h2[name][p], "ms")
            r.add(f"{s}.{name}.error_rate", h2[name]["error_rate"], "", ("<=", 0.001),
                  note="from DATA bytes: a gRPC error has none")
        h2_peak = sampler.stop()
        r.add(f"{s}.memory.under_read_load_mib", h2_peak, "MiB", ("<", 60),
              note=f"largest VmRSS seen during the h2load runs ({self.h2_clients * self.h2_streams} streams)")
        r.add(f"{s}.memory.hwm_mib", svc.hwm(), "MiB", note="VmHWM after the unary runs")
        svc.stop()

        # Start-up on the same database again (no migration to run).
        svc = Service(self, store, "restart", db)
        r.add(f"{s}.startup.existing_db_s", svc.startup_s, "s", note="with the unary run's data")
        svc.stop()
        self.drop_db(db)
        return closed["ok_rps"], hot_run["ok_rps"]

    def refunded_in_db(self, svc, payment):
        """Sum of the payment's refunds that hold money (PENDING, SUCCEEDED, REQUIRES_APPROVAL),
        read with ListRefunds."""
        total, token = 0, b""
        while True:
            msg = pb_str(2, payment) + pb_int(6, 500) + (pb_str(7, token) if token else b"")
            code, resp, details = svc.client.call("ListRefunds", msg)
            if code != grpc.StatusCode.OK:
                raise SystemExit(f"ListRefunds: {code} {details}")
            page = pb_read(resp)
            for raw in page.get(1, []):
                refund = pb_read(raw)
                status = refund.get(7, [0])[0]
                # RefundStatus: 1 PENDING, 2 SUCCEEDED, 3 FAILED, 4 CANCELED, 5 REQUIRES_APPROVAL
                if status in (1, 2, 5):
                    total += refund.get(5, [0])[0]
            token = page.get(2, [b""])[0]
            if not token:
                return total

    # ---- 6a: the cost of tracing ---------------------------------------------------------------
    def tracing(self, store):
        """The same CreateRefund load on three fresh services: without tracing, exporting every
        span over OTLP to a receiver, and without again; the ratio is to the mean of the two
        without, so that a drift of the machine's load during the three shows less."""
        s, r = store, self.r
        port = free_port()
        spans_log = os.path.join(self.run_dir, f"otlp-{s}.log")
        receiver = spawn([sys.executable, "-u", os.path.join(ROOT, "scripts", "otlp_receiver.py"),
                          "--grpc", f"127.0.0.1:{port}"], spans_log)
        time.sleep(1.5)
        runs = []
        for i, traced in enumerate((False, True, False)):
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"} if traced else {}
            tag = f"traced-{i}" if traced else f"untraced-{i}"
            db = self.fresh_db(store, tag)
            svc = Service(self, store, tag, db, env_extra=env)
            payments = svc.seed(40_000 if self.quick else 100_000, 10_000)
            pay_file = os.path.join(self.run_dir, f"payments-{s}-{tag}.txt")
            with open(pay_file, "w") as f:
                f.write("\n".join(payments))
            runs.append(k6(self, f"{s}-create-{tag}", svc.addr, {
                "MODE": "closed", "VUS": self.vus, "DURATION": f"{self.seconds}s",
                "PAYMENTS": pay_file, "AMOUNT": 100}))
            svc.stop()  # flushes the exporter
            self.drop_db(db)
        time.sleep(1)
        stop(receiver)
        with open(spans_log, errors="replace") as f:
            spans = sum(1 for line in f if line.startswith("SPAN "))
        plain = statistics.mean([runs[0]["ok_rps"], runs[2]["ok_rps"]])
        traced = runs[1]
        r.add(f"{s}.tracing.create_rps", traced["ok_rps"], "req/s",
              note=f"{spans:,} spans received; without: {runs[0]['ok_rps']:,.0f} and {runs[2]['ok_rps']:,.0f}/s")
        r.add(f"{s}.tracing.ratio", traced["ok_rps"] / plain if plain else None, "x",
              note="CreateRefund RPS traced / untraced (mean of the runs before and after)")
        r.add(f"{s}.tracing.p99_ms", traced["p99_ms"], "ms")
        r.add(f"{s}.tracing.p99_ratio", traced["p99_ms"] / statistics.mean([runs[0]["p99_ms"], runs[2]["p99_ms"]]), "x")

    # ---- 2: the database ceiling -------------------------------------------------------------
    def ceiling(self, store, modes):
        log(f"{store}: database ceiling (examples/bench_db {modes})")
        # On PostgreSQL a database made (and dropped) here, not by bench_db: one that is killed
        # leaves nothing behind.
        db = self.fresh_db(store, "ceiling") if store != "sqlite" else None
        where = ["--database-url", db] if db else ["--store", "sqlite"]
        cmd = [self.bench_db, *where,
               "--seconds", str(self.ceiling_seconds), "--workers", "16",
               "--jobs", str(self.rate_jobs), "--concurrency", "64", "--modes", modes]
        out_file = os.path.join(self.run_dir, f"bench_db-{store}-{modes}.out")
        p = spawn(cmd, out_file + ".log")
        p.wait()
        _procs.remove(p)
        if db:
            self.drop_db(db)
        with open(out_file + ".log") as f:
            text = f.read()
        if p.returncode != 0:
            raise SystemExit(f"bench_db failed: {text[-2000:]}")
        modes = {}
        for line in text.splitlines():
            if line.startswith("{"):
                j = json.loads(line)
                modes[j["mode"]] = j
        return modes

    # ---- 2b: PostgreSQL: the captured statements of one CreateRefund, replayed by pgbench ----
    def pgbench_ceiling(self):
        """Runs bench_db's `once` (one CreateRefund's store calls) on a database that logs every
        statement, takes those statements from the server's log, and replays them with pgbench:
        the ceiling of the SQL itself, without sqlx or the store's code. None when the server's
        log cannot be read (it must be this machine's)."""
        logs = sorted(glob.glob("/var/log/postgresql/postgresql-*.log"), key=os.path.getmtime)
        if not logs or not os.access(logs[-1], os.R_OK) or not shutil.which("pgbench"):
            log("postgres: no readable server log or no pgbench: no pgbench ceiling")
            return None
        logfile = logs[-1]
        url = self.fresh_db("postgres", "capture")
        name = url.rsplit("/", 1)[1]
        subprocess.run([self.bench_db, "--database-url", url, "--modes", "once"], check=True,
                       capture_output=True)  # migrations and the key, not logged
        subprocess.run(["psql", self.pg, "-qAtc", f"ALTER DATABASE {name} SET log_statement = 'all'"], check=True)
        start = os.path.getsize(logfile)
        subprocess.run([self.bench_db, "--database-url", url, "--modes", "once"], check=True,
                       capture_output=True)
        time.sleep(0.5)
        subprocess.run(["psql", self.pg, "-qAtc", f"ALTER DATABASE {name} RESET log_statement"], check=True)
        with open(logfile, errors="replace") as f:
            f.seek(start)
            text = f.read()
        statements = captured_statements(text, name)
        if not statements:
            log("postgres: no statements captured from the server log: no pgbench ceiling")
            return None
        script = os.path.join(self.run_dir, "create_refund.pgbench.sql")
        with open(script, "w") as f:
            f.write(pgbench_script(statements))
        out_file = os.path.join(self.run_dir, "pgbench.out")
        code = run_grouped(["pgbench", "-n", "-c", "16", "-j", "2", "-T", str(self.seconds),
                            "-f", script, url], out_file)
        with open(out_file) as f:
            out = f.read()
        tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
        done = re.search(r"number of transactions actually processed: (\d+)", out)
        failed = re.search(r"number of failed transactions: (\d+)", out)
        if code != 0 or not tps:
            log(f"postgres: pgbench failed: {out[-800:]}")
            return None
        self.drop_db(url)
        return {"tps": float(tps.group(1)), "statements": len(statements),
                "transactions": int(done.group(1)) if done else None,
                "failed": int(failed.group(1)) if failed else 0, "script": script}

    # ---- 3, 4, 6b: bulk --------------------------------------------------------------------
    def bulk(self, store, tag, jobs, latency, rate, conc, sequential=0, webhooks=False):
        out = os.path.join(self.run_dir, f"bulk-{store}-{tag}.json")
        cmd = [self.bench_bulk, "--bin", self.bin, "--store", self.store_arg(store),
               "--jobs", str(jobs), "--latency-ms", str(latency), "--rate", str(rate),
               "--concurrency", str(conc), "--sequential", str(sequential), "--json", out]
        if webhooks:
            cmd.append("--webhooks")
        if store != "sqlite":
            # Named here, so that it is dropped at exit even if bench_bulk is killed first.
            name = f"refund_bench_{uuid.uuid4().hex[:16]}"
            cmd += ["--pg-database", name]
            _databases.append((self.pg, name))
        log(f"{store}: bulk {tag}: N={jobs} L={latency}ms R={rate}/s C={conc}" + (" with webhooks" if webhooks else ""))
        logf = os.path.join(self.run_dir, f"bulk-{store}-{tag}.log")
        # In a process group of its own (spawn), so that its sandbox and service go with it
        # whatever ends this run.
        p = spawn(cmd, logf)
        p.wait()
        _procs.remove(p)
        if store != "sqlite":
            _databases.remove((self.pg, name))  # dropped by bench_bulk itself
            self.drop_db_named(name)
        if p.returncode != 0:
            raise SystemExit(f"bench_bulk {tag} failed; see {logf}")
        with open(out) as f:
            return json.load(f)

    @property
    def bulk_jobs(self):
        """N of the batch held to its bound (the issue's N=10,000)."""
        return 2_000 if self.quick else 10_000

    @property
    def rate_jobs(self):
        """N of the database-bound batches and of the ceiling's: only their rate matters."""
        return 2_000 if self.quick else 5_000

    def bulk_suite(self, store):
        s, r = store, self.r
        n = self.bulk_jobs
        # The ceiling of a batch's store calls, before and after the two runs it is compared with.
        c1 = self.ceiling(store, "bulk")["bulk"]["jobs_per_sec"]
        b = self.bulk(s, "bound", n, 20, 1000, 64, sequential=50 if self.quick else 200)
        r.add(f"{s}.bulk.jobs_per_s", b["jobs_per_sec"], "jobs/s", note=f"N={n:,} L=20ms R=1,000/s C=64")
        r.add(f"{s}.bulk.vs_bound", b["ratio"], "x", (">=", 0.95), note=f"bound min(R, C/L) = {b['bound']:,.0f}/s")
        r.add(f"{s}.bulk.failed", b["failed"], "jobs", ("==", 0))
        # Where the database allows fewer jobs/s than the provider, it is the limit: the figure
        # is then also a share of the ceiling of a batch's store calls.
        r.add(f"{s}.bulk.sequential_jobs_per_s", b["sequential"]["jobs_per_sec"], "jobs/s",
              note="one CreateRefund at a time, L=20ms")
        # The provider out of the way (no latency, no limit): the database is the limit.
        m = self.rate_jobs
        d = self.bulk(s, "dbbound", m, 0, 1_000_000, 64)
        c2 = self.ceiling(store, "bulk")["bulk"]["jobs_per_sec"]
        db_ceiling = statistics.mean([c1, c2])
        limit = "database" if db_ceiling < b["bound"] else "provider"
        r.add(f"{s}.bulk.vs_limit", b["jobs_per_sec"] / min(b["bound"], db_ceiling), "x",
              (">=", 0.95) if limit == "provider" else (">=", 0.5),
              note=f"the limit is the {limit} (bound {b['bound']:,.0f}/s, database ceiling {db_ceiling:,.0f}/s)")
        r.add(f"{s}.bulk_db.jobs_per_s", d["jobs_per_sec"], "jobs/s", note=f"N={m:,} L=0 R=unlimited C=64")
        r.add(f"{s}.bulk_db.ceiling_jobs_per_s", db_ceiling, "jobs/s",
              note=f"bench_db: the store calls of the batch alone; mean of {c1:,.0f} and {c2:,.0f}")
        r.add(f"{s}.bulk_db.vs_ceiling", d["jobs_per_sec"] / db_ceiling, "x", (">=", 0.5))
        # The outbox: every refund and batch event is appended in its transaction whatever
        # happens; its cost beyond that is delivery. The same batch with a subscriber taking
        # every event, between two without (their mean is the base).
        w = self.bulk(s, "dbbound-webhooks", m, 0, 1_000_000, 64, webhooks=True)
        d2 = self.bulk(s, "dbbound-again", m, 0, 1_000_000, 64)
        plain = statistics.mean([d["jobs_per_sec"], d2["jobs_per_sec"]])
        r.add(f"{s}.outbox.jobs_per_s", w["jobs_per_sec"], "jobs/s",
              note=f"as bulk_db with a subscriber taking every event; last event {w.get('webhooks_lag_s', 0):.1f}s after the batch")
        r.add(f"{s}.outbox.ratio", w["jobs_per_sec"] / plain, "x",
              note=f"bulk jobs/s with webhook delivery / without (mean of {d['jobs_per_sec']:,.0f} and {d2['jobs_per_sec']:,.0f})")
        r.add(f"{s}.outbox.delivered_share", w["webhooks_delivered"] / w["webhooks_expected"], "", ("==", 1.0))

    def memory_suite(self, store):
        s, r = store, self.r
        small, big = (2_000, 20_000) if self.quick else (10_000, 100_000)
        a = self.bulk(s, f"mem-{small}", small, 20, 5000, 128)
        b = self.bulk(s, f"mem-{big}", big, 20, 5000, 128)
        r.add(f"{s}.memory.bulk_{small}_mib", a["peak_rss_mib"], "MiB", note="peak RSS, L=20ms R=5,000/s C=128")
        r.add(f"{s}.memory.bulk_{big}_mib", b["peak_rss_mib"], "MiB", ("<", 200))
        r.add(f"{s}.memory.bulk_growth", b["peak_rss_mib"] / a["peak_rss_mib"], "x", ("<=", 1.25),
              note=f"peak RSS at N={big:,} / at N={small:,} (flat in N)")
        r.add(f"{s}.memory.bulk_{big}_jobs_per_s", b["jobs_per_sec"], "jobs/s")

    def run(self):
        stores = ["sqlite", "postgres"] if self.a.store == "both" else [self.a.store]
        started = time.time()
        for store in stores:
            t0 = time.time()
            r = self.r
            # The ceiling just before and just after the load it is compared with (their mean):
            # on a shared machine, what else runs changes within minutes.
            before = self.ceiling(store, "create,hot")
            rps, hot_rps = self.unary(store)
            after = self.ceiling(store, "create,hot")
            ceiling = {}
            for mode, what in (("create", "one CreateRefund's store calls, 16 workers"),
                               ("hot", "the same on one payment")):
                a, b = before[mode]["ops_per_sec"], after[mode]["ops_per_sec"]
                ceiling[mode] = statistics.mean([a, b])
                r.add(f"{store}.ceiling.{mode}_ops_per_s", ceiling[mode], "ops/s",
                      note=f"bench_db: {what}; mean of {a:,.0f} before and {b:,.0f} after the load")
            r.add(f"{store}.create.vs_ceiling", rps / ceiling["create"], "x", (">=", 0.7),
                  note="CreateRefund max RPS / the store's ceiling for its calls")
            r.add(f"{store}.hot.vs_ceiling", hot_rps / ceiling["hot"], "x",
                  note="hot-payment RPS / the store's ceiling for it")
            if store == "postgres" and not self.a.no_pgbench:
                pg = self.pgbench_ceiling()
                if pg:
                    r.add("postgres.ceiling.pgbench_create_tps", pg["tps"], "tx/s",
                          note=f"pgbench -c16, the {pg['statements']} statements of one CreateRefund "
                               f"captured from the server log; {pg['failed']} failed")
                    r.add("postgres.create.vs_pgbench", rps / pg["tps"], "x",
                          note="CreateRefund max RPS / pgbench replaying its SQL")
            if not self.a.no_tracing:
                self.tracing(store)
            self.bulk_suite(store)
            log(f"{store}: done in {time.time() - t0:.0f} s")
        if not self.a.no_memory:
            self.memory_suite(stores[0])
        return time.time() - started


def git_rev():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip() or None
    except OSError:
        return None


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def cmd_run(a):
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    atexit.register(_cleanup)
    bench = Bench(a)
    log(f"run directory {bench.run_dir}")
    load_before = os.getloadavg()
    took = bench.run()
    doc = {
        "meta": {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            # The suite's commit; the binary (--bin may be another build) by its digest.
            "git": git_rev(), "binary": bench.bin, "binary_sha256": file_sha256(bench.bin),
            "host": platform.node(),
            "cpus": os.cpu_count(), "quick": a.quick, "store": a.store,
            "seconds_per_run": bench.seconds, "wall_s": round(took, 1), "run_dir": bench.run_dir,
            # What else ran: a run on a busy machine is not comparable with one on an idle one.
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "figures": bench.r.figures,
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
    print()
    print_table(bench.r.figures)
    print(f"\nwritten to {a.out}; logs in {bench.run_dir} ({took:.0f} s)")
    if not a.keep:
        shutil.rmtree(bench.run_dir, ignore_errors=True)


def cmd_compare(a):
    with open(a.a) as f:
        A = json.load(f)
    with open(a.b) as f:
        B = json.load(f)
    fa, fb = A["figures"], B["figures"]
    rows = [("figure", "A", "B", "B/A", "unit")]
    for k in list(fa) + [k for k in fb if k not in fa]:
        va = fa.get(k, {}).get("value")
        vb = fb.get(k, {}).get("value")
        ratio = (vb / va) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va else None
        unit = (fa.get(k) or fb.get(k))["unit"]
        rows.append((k, fmt(va), fmt(vb), f"{ratio:.2f}" if ratio is not None else "-", unit))
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    for label, path, doc in (("A", a.a, A), ("B", a.b, B)):
        m = doc["meta"]
        print(f"{label}: {path} (suite {m.get('git')}, binary {m.get('binary_sha256', '?')}, "
              f"{m.get('started')}, load {m.get('loadavg_before', '?')})")
    print()
    for i, r in enumerate(rows):
        print(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}  {r[4]}")
        if i == 0:
            print("  ".join("-" * x for x in w))


def cmd_table(a):
    with open(a.file) as f:
        print_table(json.load(f)["figures"])


def main():
    ap = argparse.ArgumentParser(prog="bench.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--bin", required=True)
    r.add_argument("--bench-bulk", required=True)
    r.add_argument("--bench-db", required=True)
    r.add_argument("--k6", default="k6")
    r.add_argument("--out", default="bench-results.json")
    r.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    r.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    r.add_argument("--quick", action="store_true")
    r.add_argument("--run-dir")
    r.add_argument("--keep", action="store_true", help="keep the run directory (logs, k6 and h2load output)")
    r.add_argument("--no-tracing", action="store_true")
    r.add_argument("--no-memory", action="store_true")
    r.add_argument("--no-pgbench", action="store_true")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    t = sub.add_parser("table")
    t.add_argument("file")
    a = ap.parse_args()
    if a.cmd != "run":
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `… | head` ends quietly
    {"run": cmd_run, "compare": cmd_compare, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
