#!/usr/bin/python3
"""Every PromQL expression in deploy/grafana/forq.json returns data.

A real Prometheus scrapes a real forqd while the forq CLI keeps it busy
(tasks that succeed, fail, crash their worker, Manager operations, a lookup
of an unknown task); each panel expression must then return at least one
series with a finite value through Prometheus's query API.

Host mode (ctest): starts forqd and Debian's /usr/bin/prometheus itself.
  dashboard_test.py --dashboard forq.json --forqd FORQD --cli FORQ
Cluster mode (make test-compose): queries a running Prometheus and loads
the given forqd nodes.
  dashboard_test.py --dashboard forq.json --cli FORQ \
      --prometheus http://127.0.0.1:9090 --forq-addr 127.0.0.1:50051 [...]
"""
import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

# Grafana variables and the values the test gives them.
VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}


def expressions(dashboard_path):
    with open(dashboard_path) as f:
        dash = json.load(f)
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in VARIABLES.items():
                expr = expr.replace(var, value)
            if "$" in expr:
                sys.exit(f"FAIL: unknown variable in {panel['title']}: {expr}")
            out.append((panel["title"], target["refId"], expr))
    return out


def query(prom, expr):
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"query failed: {body}")
    return body["data"]["result"]


def finite_series(result):
    return [s for s in result if math.isfinite(float(s["value"][1]))]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load:
    """Runs forq CLI commands against each node until stopped."""

    def __init__(self, cli, addrs):
        self.cli, self.addrs = cli, addrs
        self.stop = threading.Event()
        self.errors = []
        self.thread = threading.Thread(target=self.run, daemon=True)

    def forq(self, addr, *args):
        env = dict(os.environ, FORQ_ADDR=addr)
        return subprocess.run([self.cli, *args], env=env, capture_output=True,
                              text=True, timeout=60)

    def run(self):
        for addr in self.addrs:
            # A failure, a worker crash (restart, retry, then DEAD), Manager ops.
            self.forq(addr, "submit", "fail", "boom", "--max-attempts", "1")
            self.forq(addr, "submit", "crash", "x", "--max-attempts", "2")
            self.forq(addr, "manager", "dict", "dash", "set", "k", "v")
        n = 0
        while not self.stop.is_set():
            for addr in self.addrs:
                n += 1
                r = self.forq(addr, "submit", "primes", str(20000 + n), "--wait")
                if r.returncode != 0:
                    self.errors.append(r.stderr)
                self.forq(addr, "submit", "sleep", "300")
                self.forq(addr, "submit", "sleep", "200", "--queue", "batch",
                          "--wait")
                self.forq(addr, "manager", "dict", "dash", "get", "k")
                self.forq(addr, "get", "no-such-task")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def check(prom, exprs, load, deadline_s):
    deadline = time.monotonic() + deadline_s
    pending = list(exprs)
    results = {}
    while pending and time.monotonic() < deadline:
        still = []
        for title, ref, expr in pending:
            try:
                series = finite_series(query(prom, expr))
            except Exception as e:  # Prometheus still starting.
                series, results[(title, ref)] = [], str(e)
            if series:
                results[(title, ref)] = series
            else:
                still.append((title, ref, expr))
        pending = still
        if pending:
            time.sleep(1)
    failed = 0
    for title, ref, expr in exprs:
        got = results.get((title, ref))
        if isinstance(got, list) and got:
            s = got[0]
            labels = ",".join(f"{k}={v}" for k, v in s["metric"].items()
                              if k not in ("job",))
            print(f"ok   {title} [{ref}]: {len(got)} series, e.g. "
                  f"{{{labels}}} = {float(s['value'][1]):.4g}")
        else:
            failed += 1
            print(f"FAIL {title} [{ref}]: no finite data for {expr}"
                  + (f" ({got})" if got else ""))
    if load.errors:
        print(f"load errors: {load.errors[:3]}")
    return failed


def host_mode(args, exprs):
    tmp = tempfile.mkdtemp(prefix="forq-dash-")
    procs = []
    try:
        r, w = os.pipe()
        forqd = subprocess.Popen(
            [args.forqd, "--grpc_addr=127.0.0.1:0", "--http_addr=127.0.0.1:0",
             "--workers=2", f"--data_dir={tmp}/data", "--durability=sync",
             "--retry_backoff=100ms", f"--ready_fd={w}"],
            pass_fds=(w,), stdout=open(f"{tmp}/forqd.log", "w"),
            stderr=subprocess.STDOUT)
        procs.append(forqd)
        os.close(w)
        with os.fdopen(r) as ready:
            line = ready.readline()
        if not line:
            sys.exit(f"FAIL: forqd did not start: {open(tmp + '/forqd.log').read()}")
        ports = dict(kv.split("=") for kv in line.split())
        grpc = f"127.0.0.1:{ports['grpc_port']}"
        http = f"127.0.0.1:{ports['http_port']}"
        prom_port = free_port()
        with open(f"{tmp}/prometheus.yml", "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: forqd\n"
                    f"    static_configs:\n      - targets: ['{http}']\n")
        procs.append(subprocess.Popen(
            ["/usr/bin/prometheus", f"--config.file={tmp}/prometheus.yml",
             f"--storage.tsdb.path={tmp}/prom",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=open(f"{tmp}/prometheus.log", "w"), stderr=subprocess.STDOUT))
        with Load(args.cli, [grpc]) as load:
            return check(f"http://127.0.0.1:{prom_port}", exprs, load,
                         args.deadline)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--forqd")
    ap.add_argument("--prometheus")
    ap.add_argument("--forq-addr", action="append", default=[])
    ap.add_argument("--deadline", type=float, default=120)
    args = ap.parse_args()
    exprs = expressions(args.dashboard)
    if args.prometheus:
        with Load(args.cli, args.forq_addr) as load:
            failed = check(args.prometheus, exprs, load, args.deadline)
    else:
        failed = host_mode(args, exprs)
    print(f"{len(exprs) - failed}/{len(exprs)} dashboard expressions return data")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
