#!/usr/bin/python3
"""Measures forqd's resident memory while clients push on every limit.

Starts nothing: point it at a running forqd (default flags) and its pid:
  tests/security/rss_under_attack.py --pid $(pidof forqd) \
      --grpc 127.0.0.1:50051 --http 127.0.0.1:8080
Phases (each keeps what the previous one opened):
  1. idle HTTP connections (--idle, default 2000),
  2. slowloris: that many more send a partial header byte by byte,
  3. concurrent 7 MiB HTTP bodies (--bodies, default 16) that forqd reads,
     parses and refuses (payload over --max_payload_bytes),
  4. gRPC connections each holding a Watch stream (--watchers, default 200),
  5. a Submit flood of SubmitBatch calls past --submit_rate (--flood,
     default 2000 calls of 100 tasks),
and prints VmRSS / VmHWM (from /proc) after each, plus whether /healthz and
a Submit still answered. Needs Debian's python3-grpcio (/usr/bin/python3).
"""
import argparse
import socket
import threading
import time
import urllib.request

import grpc


def rss(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) // 1024
    return out


def healthy(http):
    try:
        with urllib.request.urlopen(f"http://{http}/healthz", timeout=10) as r:
            return r.status == 200
    except Exception:
        return False


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def ld(field, data):
    return bytes([(field << 3) | 2]) + varint(len(data)) + data


def batch(n):
    spec = ld(1, b"echo") + ld(2, b"x" * 64)  # TaskSpec kind, payload
    return b"".join(ld(1, spec) for _ in range(n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--grpc", default="127.0.0.1:50051")
    ap.add_argument("--http", default="127.0.0.1:8080")
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--bodies", type=int, default=16)
    ap.add_argument("--watchers", type=int, default=200)
    ap.add_argument("--flood", type=int, default=2000)
    a = ap.parse_args()
    host, port = a.http.rsplit(":", 1)
    held = []

    def report(phase):
        ch = grpc.insecure_channel(a.grpc)
        submit = ch.unary_unary("/forq.v1.TaskService/Submit")
        try:
            submit(ld(1, ld(1, b"echo")), timeout=10)
            ok = "ok"
        except grpc.RpcError as e:
            ok = e.code().name
        ch.close()
        print(f"{phase:<34} {rss(a.pid)}  healthz={healthy(a.http)} "
              f"submit={ok}", flush=True)

    report("baseline")
    for _ in range(a.idle):
        s = socket.create_connection((host, int(port)))
        held.append(s)
    report(f"{a.idle} idle HTTP connections")

    slow = []
    for _ in range(a.idle):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nX-a: ")
        slow.append(s)
    for _ in range(3):
        for s in slow:
            try:
                s.sendall(b"a")
            except OSError:
                pass
        time.sleep(1)
    held += slow
    report(f"+{a.idle} slowloris connections")

    def big_body():
        s = socket.create_connection((host, int(port)))
        body = b'{"kind":"echo","payload_text":"' + b"y" * (7 << 20) + b'"}'
        try:
            s.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body)
            s.recv(4096)
        except OSError:
            pass
        s.close()

    threads = [threading.Thread(target=big_body) for _ in range(a.bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report(f"{a.bodies} concurrent 7 MiB bodies")

    watch_calls = []
    for i in range(a.watchers):
        ch = grpc.insecure_channel(a.grpc, options=[("forq.rss", i)])
        w = ch.unary_stream("/forq.v1.TaskService/Watch")
        watch_calls.append((ch, w(ld(2, b"*"), timeout=600)))
    time.sleep(2)
    report(f"{a.watchers} gRPC connections + Watch")

    ch = grpc.insecure_channel(a.grpc)
    sb = ch.unary_unary("/forq.v1.TaskService/SubmitBatch")
    req = batch(100)
    limited = 0
    for _ in range(a.flood):
        try:
            sb(req, timeout=10)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                limited += 1
    report(f"{a.flood}x100-task flood ({limited} limited)")
    for c, call in watch_calls:
        call.cancel()
        c.close()
    for s in held:
        s.close()
    time.sleep(2)
    report("all closed")


if __name__ == "__main__":
    main()
