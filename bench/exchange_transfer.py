"""Pure cost of one MATRPO exchange on the wire, at the paper's payload (N=3, M=10,000).

Two agents' ZeroMQ transports (ipc://, as in a one-host run) ping-pong the exchange message
(log ratio N×M float32 + dual N×M float32 + ids): encode, send, receive, decode. Compare with
``activation_compute_seconds`` from ``bench/matrpo_timing.py``: the communication of an
activation is one such one-way transfer per endpoint, the rest of ``communication_seconds`` there
is waiting for the partner's θ step.

    python bench/exchange_transfer.py --repeats 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time

import numpy as np

from p2pmarl.runtime.transport import ZmqTransport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="p2pmarl-bench-")
    endpoints = {0: f"ipc://{folder}/a0", 1: f"ipc://{folder}/a1"}
    a, b = ZmqTransport(0, endpoints, [1]), ZmqTransport(1, endpoints, [0])
    body = {
        "activation": 1, "version": 0, "fingerprint": "0123456789abcdef",
        "log_ratio": np.random.default_rng(0).normal(size=(args.agents, args.samples)).astype(
            np.float32),
        "dual": np.zeros((args.agents, args.samples), np.float32),
    }

    def echo() -> None:
        for _ in range(args.repeats):
            message = b.receive(timeout=10)
            b.send(0, "admm_exchange", 0, message.body)

    thread = threading.Thread(target=echo)
    thread.start()
    trips = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        a.send(1, "admm_exchange", 0, body)
        a.receive(timeout=10)
        trips.append(time.perf_counter() - started)
    thread.join()
    a.close()
    b.close()
    one_way = statistics.median(trips) / 2
    print(json.dumps({
        "benchmark": "exchange_transfer", "payload_bytes": 2 * body["log_ratio"].nbytes,
        "median_round_trip_seconds": statistics.median(trips), "one_way_seconds": one_way,
    }))


if __name__ == "__main__":
    main()
