#!/usr/bin/env python3
"""A stand-in for the kubelet's static pod handling, for the role's test only.

    fake-kubelet.py ROOT EVENTS

Watches ROOT/etc/kubernetes/manifests (ROOT stands for the node's /). While apilb.yaml is
there, it runs the pod's container: the node's apilb binary (ROOT/usr/local/bin/apilb, the
one in the image) with the container's args, each hostPath mount's path prefixed with ROOT
(no container runtime here). A changed apilb.yaml restarts it; a removed one stops it with
SIGTERM, as the kubelet does. It polls the directory (the kubelet's file source polls too).
Each start and stop is appended to EVENTS, one line each, so the test can wait for them.
Any other manifest (nginx-proxy.yml) is only noted in EVENTS: nothing runs it.
Ends on SIGTERM, stopping what it runs.
"""
import os
import signal
import subprocess
import sys
import time

import yaml

root, events = sys.argv[1], sys.argv[2]
manifests = os.path.join(root, "etc/kubernetes/manifests")
running = None  # (manifest text, Popen)
seen = set()


def note(line):
    with open(events, "a") as f:
        f.write(line + "\n")


def start(text):
    pod = yaml.safe_load(text)
    spec = pod["spec"]
    container = spec["containers"][0]
    paths = {v["name"]: v["hostPath"]["path"] for v in spec.get("volumes", []) if "hostPath" in v}
    args = list(container["args"])
    for m in container.get("volumeMounts", []):
        if m["name"] in paths:
            host = root + paths[m["name"]]
            args = [a.replace(m["mountPath"], host) for a in args]
    log = open(os.path.join(os.path.dirname(events), "apilb.log"), "a")
    proc = subprocess.Popen([os.path.join(root, "usr/local/bin/apilb")] + args, stdout=log, stderr=log)
    note(f"started apilb pid {proc.pid}")
    return proc


def stop():
    global running
    if running:
        running[1].send_signal(signal.SIGTERM)
        code = running[1].wait()
        note(f"stopped apilb exit {code}")
        running = None


done = False


def on_term(*_):
    global done
    done = True


signal.signal(signal.SIGTERM, on_term)
note("watching")
while not done:
    names = set(os.listdir(manifests)) if os.path.isdir(manifests) else set()
    for name in sorted(names - seen):
        note(f"appeared {name}")
    for name in sorted(seen - names):
        note(f"removed {name}")
    seen = names
    path = os.path.join(manifests, "apilb.yaml")
    text = open(path).read() if "apilb.yaml" in names else None
    if running and running[1].poll() is not None:
        note(f"exited apilb {running[1].returncode}")
        running = None
    if running and running[0] != text:
        stop()
    if text is not None and running is None:
        running = (text, start(text))
    time.sleep(0.1)
stop()
