#!/usr/bin/env python3
"""Ratios of forq_bench figures to the Python multiprocessing peers measured
in the same run (bench/run.sh with PEERS). Reads RESULT lines
(RESULT<TAB>system<TAB>operation<TAB>unit<TAB>value) from the files given and
prints one line per ratio, with the medians it was computed from.

    bench/ratios.py OUT/forq_bench_peers.txt OUT/peers_pool.txt OUT/peers_manager.txt
"""
import re
import statistics
import sys

# (label, forq operation regex, peer system, peer operation regex, higher is
# better, target)
RATIOS = [
    ("Map ordered none vs Pool(2).imap(chunksize=1)",
     r"^Map \(ordered\) \d+ echo, window \d+, none$", "mp.Pool(2)",
     r"^imap \(ordered, chunksize=1\)", True, ">= 1.0"),
    ("MapUnordered none vs imap_unordered",
     r"^MapUnordered \d+ echo, window \d+, none$", "mp.Pool(2)",
     r"^imap_unordered \(chunksize=1\)", True, ">= 1.0"),
    ("SubmitBatch(100) then get all, none, vs apply_async then get all",
     r"^\d+ echo: SubmitBatch\(100\) x N/100 then Get all, none, end to end$",
     "mp.Pool(2)", r"^apply_async \d+k noop, then get all$", True, ">= 2.0"),
    ("SubmitBatchAsync(100), 8 in flight, then get all, none, vs apply_async",
     r"^\d+ echo: SubmitBatchAsync\(100\) x N/100 \(8 in flight\) then Get all, none, end to end$",
     "mp.Pool(2)", r"^apply_async \d+k noop, then get all$", True, ">= 2.0"),
    ("SubmitBatchAsync(100), 8 in flight, then get all, sync, vs apply_async",
     r"^\d+ echo: SubmitBatchAsync\(100\) x N/100 \(8 in flight\) then Get all, sync, end to end$",
     "mp.Pool(2)", r"^apply_async \d+k noop, then get all$", True, ">= 1.0"),
    ("SubmitBatch(100) then get all, sync, vs apply_async then get all",
     r"^\d+ echo: SubmitBatch\(100\) x N/100 then Get all, sync, end to end$",
     "mp.Pool(2)", r"^apply_async \d+k noop, then get all$", True, ">= 1.0"),
    ("Submit x N then get all, none, vs apply_async then get all",
     r"^\d+ echo: Submit x N then Get all, none, end to end$",
     "mp.Pool(2)", r"^apply_async \d+k noop, then get all$", True, ""),
    ("Submit+Get RTT p50 none vs apply_async().get() p50 (lower is better)",
     r"^Submit\(\)\.Get\(\) echo RTT none p50$", "mp.Pool(2)",
     r"^apply_async\(\)\.get\(\) noop RTT p50$", False, "<= 1.6"),
    # Client::Apply: submit and wait in one call, like Pool.apply.
    ("Apply() RTT p50 none vs apply_async().get() p50 (lower is better)",
     r"^Apply\(\) echo RTT none p50$", "mp.Pool(2)",
     r"^apply_async\(\)\.get\(\) noop RTT p50$", False, "<= 1.6"),
    # The same-host option (forq_bench --transport=unix): no target of its
    # own, printed when measured.
    ("Apply() RTT p50 none, Unix socket, vs apply_async().get() p50 (lower is better)",
     r"^Apply\(\) echo RTT none \(Unix socket\) p50$", "mp.Pool(2)",
     r"^apply_async\(\)\.get\(\) noop RTT p50$", False, ""),
    ("SubmitBatch(100) then get all, none, Unix socket, vs apply_async then get all",
     r"^\d+ echo: SubmitBatch\(100\) x N/100 then Get all, none \(Unix socket\), end to end$",
     "mp.Pool(2)", r"^apply_async \d+k noop, then get all$", True, ""),
    ("Manager dict get (1 client) vs mp.Manager",
     r"^Manager dict get \(1 client, --durability=none\)$", "mp.Manager",
     r"^dict d\[k\] get \(1 client proc\)$", True, ">= 0.6"),
    # mp.Manager listens on a Unix socket (multiprocessing's default family
    # on Linux): the same transport, forq_bench --transport=unix.
    ("Manager dict get (1 client), Unix socket, vs mp.Manager (Unix socket)",
     r"^Manager dict get \(1 client, --durability=none\) \(Unix socket\)$",
     "mp.Manager", r"^dict d\[k\] get \(1 client proc\)$", True, ""),
    # forqd --manager_socket (ManagerOptions::local_socket): the Manager
    # without gRPC for clients on forqd's host, measured with
    # --transport=unix.
    ("Manager dict get (1 client), local socket, vs mp.Manager (Unix socket)",
     r"^Manager dict get \(1 client, --durability=none\) \(local socket\)$",
     "mp.Manager", r"^dict d\[k\] get \(1 client proc\)$", True, ">= 0.6"),
    ("Manager Lock pair (1 client), local socket, vs mp.Manager",
     r"^Manager Lock acquire\+release pair \(1 client, --durability=none\) \(local socket\)$",
     "mp.Manager", r"^Lock acquire\+release pair \(1 client\)$", True, ""),
]


def load(paths):
    vals = {}
    for p in paths:
        try:
            with open(p) as f:
                for line in f:
                    cols = line.rstrip("\n").split("\t")
                    if len(cols) != 5 or cols[0] != "RESULT":
                        continue
                    try:
                        v = float(cols[4])
                    except ValueError:
                        continue
                    vals.setdefault((cols[1], cols[2]), []).append(v)
        except OSError as e:
            print("ratios: %s" % e, file=sys.stderr)
    return vals


def values_of(vals, system, pattern):
    """The values (in run order) of the first operation matching."""
    rx = re.compile(pattern)
    for (sys_, op), v in vals.items():
        if sys_ == system and rx.search(op):
            return v
    return None


def per_round(a, b):
    """Ratios of forq's i-th value to the peer's i-th (run.sh measures them
    back to back, a repetition apart): "median (min-max)", or "" when the
    counts differ."""
    if len(a) != len(b) or not a or not all(b):
        return ""
    r = sorted(x / y for x, y in zip(a, b))
    return "%.2f (%.2f-%.2f)" % (statistics.median(r), r[0], r[-1])


def main(paths):
    vals = load(paths)
    print("| ratio | forq median | peer median | ratio | per round | target |")
    print("|---|---:|---:|---:|---:|---|")
    for label, fop, psys, pop, higher, target in RATIOS:
        a = values_of(vals, "forq", fop)
        b = values_of(vals, psys, pop)
        if a is None and not target:
            continue  # an optional figure that was not measured
        if a is None or b is None:
            print("| %s | %s | %s | n/a | | %s |" %
                  (label, "-" if a is None else "%.4g" % statistics.median(a),
                   "-" if b is None else "%.4g" % statistics.median(b),
                   target))
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        r = ma / mb if mb else float("nan")
        print("| %s | %.4g (n=%d) | %.4g (n=%d) | %.2f | %s | %s |" %
              (label, ma, len(a), mb, len(b), r, per_round(a, b), target))
    # forq-only ratios printed by forq_bench itself.
    for (sys_, op), v in sorted(vals.items()):
        if sys_ == "forq" and op.startswith("GetPool p50 / bare echo p50"):
            print("| %s | | | %.2f | | <= 1.2 |" % (op, statistics.median(v)))


if __name__ == "__main__":
    main(sys.argv[1:])
