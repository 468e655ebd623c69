#!/usr/bin/env python3
"""What securing a cluster costs, as a user runs it: `quiver cluster up` three ways on one
machine (open: no token, executors take pushed tasks; token: every call checked, executors
pull their tasks; token + TLS: every connection encrypted too), then the same `quiver sql`
statements against each, alternating, in one invocation.

    python3 scripts/bench_cluster_security.py --quiver target/release/quiver [--rows 1000000]

Prints the median wall time of each statement per mode and the ratio to the open cluster.
"""

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quiver", required=True)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    quiver = os.path.abspath(args.quiver)
    work = tempfile.mkdtemp(prefix="quiver-sec-bench-")
    data = os.path.join(work, "data")
    os.makedirs(data)
    # Eight Parquet files of rows × 4 columns, written by an embedded session.
    for i in range(8):
        n = args.rows // 8
        run([quiver, "sql", "-e",
             f"COPY (SELECT value AS id, value % 97 AS k, random() AS x, random() AS y "
             f"FROM generate_series({i * n}, {(i + 1) * n - 1})) "
             f"TO '{data}/part-{i}.parquet' STORED AS PARQUET"])
    statements = {
        "SELECT 1": "SELECT 1",
        "count": f"SELECT count(*) FROM '{data}'",
        "group by (shuffle)": f"SELECT k, avg(x) FROM '{data}' GROUP BY k ORDER BY k LIMIT 3",
    }
    modes = {
        "open (push)": ["--no-auth"],
        "token (pull)": [],
        "token + TLS": ["--tls"],
    }
    clusters = {}
    try:
        for mode, flags in modes.items():
            d = os.path.join(work, mode.split()[0].replace("+", "") + str(len(clusters)))
            port = free_port()
            run([quiver, "cluster", "up", "--executors", "2", "--dir", d, "--port", str(port),
                 "--concurrent-tasks", "1", "--data-root", data] + flags)
            client = []
            if os.path.exists(os.path.join(d, "auth-token")):
                client += ["--auth-token-file", os.path.join(d, "auth-token")]
            if os.path.exists(os.path.join(d, "tls-ca.pem")):
                client += ["--tls-ca-file", os.path.join(d, "tls-ca.pem")]
            clusters[mode] = (d, port, client)
        times = {(m, s): [] for m in modes for s in statements}
        for _ in range(args.repeats):
            for s, sql in statements.items():
                for mode, (d, port, client) in clusters.items():
                    t = time.perf_counter()
                    run([quiver] + client + ["sql", "--cluster", f"df://127.0.0.1:{port}",
                                             "-e", sql])
                    times[(mode, s)].append(time.perf_counter() - t)
        print(f"{args.rows} rows in 8 files, 2 executors × 1 task slot, median of {args.repeats}")
        print(f"{'statement':<22}" + "".join(f"{m:>22}" for m in modes))
        for s in statements:
            base = statistics.median(times[("open (push)", s)])
            cells = []
            for m in modes:
                med = statistics.median(times[(m, s)])
                cells.append(f"{med:8.3f} s ({med / base:4.2f}×)")
            print(f"{s:<22}" + "".join(f"{c:>22}" for c in cells))
    finally:
        for d, _, _ in clusters.values():
            subprocess.run([quiver, "cluster", "down", "--dir", d], capture_output=True)


if __name__ == "__main__":
    main()
