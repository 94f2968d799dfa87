#!/usr/bin/env python3
"""Outbound webhooks checked by the reference library: a receiver that verifies every
delivery eventsd makes with the `standardwebhooks` PyPI package (not eventsd's code).

  outbound-receiver.py --server BIN

starts eventsd from BIN on free loopback ports with a temporary data folder, a receiver on
another port, creates an endpoint over HTTP (POST /endpoints), publishes events
(POST /events), rotates the secret halfway, and checks that:
- every event arrives, verified by standardwebhooks with the secret in force;
- after the rotation each delivery verifies with the new secret and, during the overlap,
  with the old one too;
- a first attempt answered 500 is retried, with the same webhook-id.
Exits non-zero, saying what failed, otherwise prints a summary.
"""
import argparse
import http.server
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import standardwebhooks

EVENTS = 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver(http.server.BaseHTTPRequestHandler):
    secrets = []          # every secret eventsd has given us, oldest first
    lock = threading.Lock()
    attempts = {}         # webhook-id -> attempts seen
    verified = {}         # webhook-id -> set of secrets that verified it
    bodies = {}

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        msg_id = headers.get("webhook-id", "")
        ok = set()
        for secret in list(Receiver.secrets):
            try:
                standardwebhooks.Webhook(secret).verify(body, headers)
                ok.add(secret)
            except Exception:
                pass
        with Receiver.lock:
            n = Receiver.attempts.get(msg_id, 0) + 1
            Receiver.attempts[msg_id] = n
            Receiver.verified.setdefault(msg_id, []).append(ok)
            Receiver.bodies[msg_id] = json.loads(body)
        # Every third event's first attempt fails, to exercise retries.
        status = 500 if n == 1 and int(Receiver.bodies[msg_id]["data"]["n"]) % 3 == 0 else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()


def call(method, url, payload=None):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def fail(message):
    sys.exit("outbound-receiver: FAILED: " + message)


def run(binary):
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    grpc, http_port = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    with tempfile.TemporaryDirectory() as data:
        args = [binary, "--listen", f"127.0.0.1:{grpc}", "--http-listen", f"127.0.0.1:{http_port}",
                "--data-dir", data, "--delivery-allow-private", "--delivery-allow-http",
                "--delivery-retry-schedule", "0s,100ms,100ms,100ms"]
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 15
            while True:
                if server.poll() is not None:
                    fail("eventsd exited during start-up: " + server.stderr.read().decode()[-2000:])
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        fail("eventsd did not answer /healthz within 15 s")
                    time.sleep(0.05)
            status, endpoint = call("POST", base + "/endpoints", {"url": hook, "types": ["charge.*"]})
            if status != 201:
                fail(f"POST /endpoints answered {status}: {endpoint}")
            first_secret = endpoint["secret"]
            Receiver.secrets.append(first_secret)
            published = []
            for n in range(EVENTS):
                if n == EVENTS // 2:
                    status, rotated = call("POST", f"{base}/endpoints/{endpoint['id']}/rotate", {})
                    if status != 200:
                        fail(f"rotate answered {status}: {rotated}")
                    Receiver.secrets.append(rotated["secret"])
                status, event = call("POST", base + "/events", {"type": "charge.create", "data": {"n": n}})
                if status != 201:
                    fail(f"POST /events answered {status}: {event}")
                published.append((n, event["id"]))
            deadline = time.monotonic() + 30
            while True:
                with Receiver.lock:
                    done = all(any(v for v in Receiver.verified.get(i, []))
                               and Receiver.attempts.get(i, 0) >= (2 if n % 3 == 0 else 1)
                               for n, i in published)
                if done:
                    break
                if time.monotonic() > deadline:
                    fail(f"not every event was delivered and verified within 30 s: {Receiver.attempts}")
                time.sleep(0.05)
        finally:
            server.terminate()
            server.wait(timeout=15)
    with Receiver.lock:
        for n, msg_id in published:
            checks = Receiver.verified[msg_id]
            if not all(checks):
                fail(f"event {n} ({msg_id}): an attempt did not verify with any secret")
            if Receiver.bodies[msg_id]["id"] != msg_id:
                fail(f"event {n}: webhook-id {msg_id} is not the event id")
            if n >= EVENTS // 2 and not all(len(c) == 2 for c in checks):
                fail(f"event {n} after the rotation: not signed by both secrets: {checks}")
        retried = sum(1 for n, i in published if Receiver.attempts[i] >= 2)
    print(f"outbound-receiver: {len(published)} events delivered and verified by standardwebhooks "
          f"{standardwebhooks.__version__ if hasattr(standardwebhooks, '__version__') else ''}; "
          f"{retried} retried after a 500 with the same webhook-id; "
          f"{EVENTS - EVENTS // 2} signed by both secrets during the rotation overlap")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="the eventsd binary")
    run(parser.parse_args().server)


if __name__ == "__main__":
    main()
