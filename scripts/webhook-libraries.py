#!/usr/bin/env python3
"""Deliveries signed by the reference Standard Webhooks libraries, for eventsd's receiver.

The `standardwebhooks` and `svix` PyPI packages sign each delivery exactly as senders do
(eventsd's own signer is not involved). Two uses:

  webhook-libraries.py --write FILE   sign a fixed set and write it as JSON; cargo test
                                      posts them to a real server offline
                                      (tests/fixtures/webhooks/libraries.json)
  webhook-libraries.py --post URL     sign fresh deliveries now and POST them to
                                      URL/webhooks/billing, checking every answer
  webhook-libraries.py --server BIN   the same against a server it starts from BIN on free
                                      loopback ports with a temporary data folder

The server must know the source `billing` with both SECRETS (a rotation in progress):
  --webhook-secret billing=<SECRETS[0]> --webhook-secret billing=<SECRETS[1]>
"""
import argparse
import base64
import importlib.metadata
import json
import socket
import subprocess
import tempfile
import time
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone

import standardwebhooks
import svix.webhooks

# The two secrets the receiver is configured with, and one it does not know.
SECRETS = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c3ZpeC1yb3RhdGVkLXNlY3JldC0zMi1ieXRlcyE="]
UNKNOWN = "whsec_dW5rbm93bi1zZWNyZXQtbm90LWNvbmZpZ3VyZWQ="


def body(n, stamp):
    return json.dumps(
        {"type": "invoice.paid", "timestamp": stamp, "data": {"invoice": f"in_{n}", "amount": 500 + n}},
        separators=(",", ":"),
    )


def deliveries(now):
    """(name, headers, body, expected HTTP status) for every case, signed at `now`."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    tag = int(now.timestamp())
    out = []

    def add(name, headers, data, status):
        out.append({"name": name, "headers": headers, "body": data, "status": status})

    def sw_sig(secret, msg_id, data):
        return standardwebhooks.Webhook(secret).sign(msg_id, now, data)

    def svix_sig(secret, msg_id, data):
        return svix.webhooks.Webhook(secret).sign(msg_id, now, data)

    ts = str(tag)
    # 1. standardwebhooks, the specification's header names.
    msg, data = f"msg_sw_{tag}", body(1, stamp)
    add("standardwebhooks webhook-* headers",
        {"webhook-id": msg, "webhook-timestamp": ts, "webhook-signature": sw_sig(SECRETS[0], msg, data)}, data, 201)
    # 2. svix, with Svix's own header names.
    msg, data = f"msg_svix_{tag}", body(2, stamp)
    add("svix svix-* headers",
        {"svix-id": msg, "svix-timestamp": ts, "svix-signature": svix_sig(SECRETS[0], msg, data)}, data, 201)
    # 3. rotation: signed with the receiver's second secret only.
    msg, data = f"msg_rotated_{tag}", body(3, stamp)
    add("standardwebhooks signed with the rotated secret",
        {"webhook-id": msg, "webhook-timestamp": ts, "webhook-signature": sw_sig(SECRETS[1], msg, data)}, data, 201)
    # 4. rotation on the sender's side: an unknown secret's signature, then a known one.
    msg, data = f"msg_two_{tag}", body(4, stamp)
    two = sw_sig(UNKNOWN, msg, data) + " " + svix_sig(SECRETS[1], msg, data)
    add("two signatures, the first from an unknown secret",
        {"svix-id": msg, "svix-timestamp": ts, "svix-signature": two}, data, 201)
    # 5. a malformed entry before a valid one.
    msg, data = f"msg_malformed_{tag}", body(5, stamp)
    bad = "v1," + base64.b64encode(b"short").decode() + " v1,%%%not-base64 v1a,c2lnbmF0dXJl "
    add("malformed and unknown-version entries before a valid one",
        {"webhook-id": msg, "webhook-timestamp": ts, "webhook-signature": bad + sw_sig(SECRETS[0], msg, data)},
        data, 201)
    # 6. both complete sets: webhook-* wins, so a valid svix-* set cannot rescue a bad one.
    msg, data = f"msg_both_{tag}", body(6, stamp)
    add("both sets complete, webhook-* signed by an unknown secret",
        {"webhook-id": msg, "webhook-timestamp": ts, "webhook-signature": sw_sig(UNKNOWN, msg, data),
         "svix-id": msg, "svix-timestamp": ts, "svix-signature": svix_sig(SECRETS[0], msg, data)}, data, 401)
    # 7. a mixed set: svix-* lacks its id.
    msg, data = f"msg_mixed_{tag}", body(7, stamp)
    add("mixed set without svix-id",
        {"webhook-id": msg, "svix-timestamp": ts, "svix-signature": svix_sig(SECRETS[0], msg, data)}, data, 401)
    # 8. a forged body under a library's valid signature.
    msg, data = f"msg_forged_{tag}", body(8, stamp)
    add("svix signature over another body",
        {"svix-id": msg, "svix-timestamp": ts, "svix-signature": svix_sig(SECRETS[0], msg, body(9, stamp))},
        data, 401)
    # Each library accepts what it signed in the plain cases: a check on this script itself.
    standardwebhooks.Webhook(SECRETS[0]).verify(out[0]["body"], out[0]["headers"])
    svix.webhooks.Webhook(SECRETS[0]).verify(out[1]["body"], out[1]["headers"])
    standardwebhooks.Webhook(SECRETS[1]).verify(out[2]["body"], out[2]["headers"])
    return out


def post(url, d):
    req = urllib.request.Request(url, data=d["body"].encode(), method="POST",
                                 headers={"content-type": "application/json", **d["headers"]})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def with_server(binary):
    """Starts eventsd with the fixture's secrets, posts fresh deliveries, stops it."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    http = f"http://127.0.0.1:{ports[1]}"
    with tempfile.TemporaryDirectory() as data:
        args = [binary, "--listen", f"127.0.0.1:{ports[0]}", "--http-listen", f"127.0.0.1:{ports[1]}",
                "--data-dir", data]
        for secret in SECRETS:
            args += ["--webhook-secret", f"billing={secret}"]
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 15
            while True:
                if server.poll() is not None:
                    sys.exit("eventsd exited during start-up: " + server.stderr.read().decode()[-2000:])
                try:
                    urllib.request.urlopen(http + "/healthz", timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        sys.exit("eventsd did not answer /healthz within 15 s")
                    time.sleep(0.05)
            return post_all(http)
        finally:
            server.terminate()
            server.wait(timeout=15)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", metavar="FILE")
    g.add_argument("--post", metavar="URL")
    g.add_argument("--server", metavar="BIN")
    a = p.parse_args()
    if a.server:
        return with_server(a.server)
    if a.write:
        now = datetime.now(timezone.utc).replace(microsecond=0)
        versions = {name: importlib.metadata.version(name) for name in ("standardwebhooks", "svix")}
        doc = {"source": "billing", "secrets": SECRETS, "signed_at": int(now.timestamp()),
               "libraries": versions, "deliveries": deliveries(now)}
        with open(a.write, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"wrote {len(doc['deliveries'])} deliveries to {a.write}")
        return 0
    return post_all(a.post)


def post_all(base):
    failed, fresh = 0, deliveries(datetime.now(timezone.utc))
    for d in fresh:
        status, text = post(base.rstrip("/") + "/webhooks/billing", d)
        ok = status == d["status"]
        failed += not ok
        print(f"{'ok' if ok else 'FAILED'}: {d['name']}: {status} (expected {d['status']}) {text[:160] if not ok else ''}")
    print(f"{len(fresh) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
