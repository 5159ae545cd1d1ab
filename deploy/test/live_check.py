#!/usr/bin/env python3
"""Evaluates the recording and alerting rules, and runs the dashboard's queries, in a real
Prometheus that scrapes fake_ctx.py, all on loopback.

Prometheus is the one on PATH (Debian's `prometheus` package), started with a temporary
config and data directory and stopped at the end. The rules are deploy/prometheus/ctx.rules.yml
with their 5-minute windows shortened to 15 s, so that a 20-second run gives settled rates;
the expressions are otherwise the shipped ones. Checks:
  * every rule evaluates without error;
  * each recorded series has the value fake_ctx.py's model implies (within 5%);
  * the isolation alerts are pending for exactly the CPUs that break isolation, and the
    service alerts are inactive;
  * every dashboard query returns series (dashboard_check.py --prometheus).
Standard library only. Exit status 0 when every check passed.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.dirname(HERE)
RULES = os.path.join(DEPLOY, "prometheus", "ctx.rules.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "ctx-dashboard.json")
WINDOW = "15s"

# From fake_ctx.py's model: CPU 0 housekeeping, CPUs 1-3 nohz_full.
EXPECTED = {
    "instance:ctx_isolated_cpus:count": {(): 3},
    "instance_state:ctx_cpu_seconds:rate5m": {
        (("state", "user"),): 1.859375, (("state", "kernel"),): 0.3203125,
        (("state", "idle"),): 1.8203125, (("state", "nmi"),): 0.0},
    "instance_state:ctx_isolated_cpu_seconds:rate5m": {
        (("state", "user"),): 1.609375, (("state", "kernel"),): 0.0703125,
        (("state", "idle"),): 1.3203125, (("state", "nmi"),): 0.0},
    "instance_cpu:ctx_isolated_kernel:ratio_rate5m": {
        (("cpu", "1"),): 0.0078125, (("cpu", "2"),): 0.0625, (("cpu", "3"),): 0.0},
    "instance_vector:ctx_isolated_avoidable_ipis:rate5m": {
        (("vector", "call_function"),): 0.25, (("vector", "reschedule"),): 0.5,
        (("vector", "call_function_single"),): 0.0, (("vector", "irq_work"),): 0.0},
    "instance:ctx_isolated_avoidable_ipis:rate5m": {(): 0.75},
    "instance:ctx_isolated_ipi_needed:ratio_rate5m": {(): 6.25 / 300},
    "instance:ctx_isolated_nmis:rate5m": {(): 0.125},
    "instance:ctx_nmis:rate5m": {(): 0.25},
    "instance:ctx_isolated_kernel_entries:rate5m": {(): 5.0},
    "instance:ctx_kernel_entries:rate5m": {(): 105.0},
    "instance_kind_state:ctx_isolated_interrupts:rate5m": {
        (("kind", "local_timer"), ("state", "user")): 2.0,
        (("kind", "local_timer"), ("state", "kernel")): 0.0,
        (("kind", "local_timer"), ("state", "idle")): 0.0,
        (("kind", "device"), ("state", "user")): 0.0,
        (("kind", "device"), ("state", "kernel")): 0.0,
        (("kind", "device"), ("state", "idle")): 0.0},
}
# alert -> CPUs it must be pending (its `for:` has not run out yet) or firing for.
EXPECTED_ALERTS = {
    "CtxIsolatedCpuAvoidableIpis": {"2", "3"},
    "CtxIsolatedCpuKernelTime": {"2"},
    "CtxIsolatedCpuNmis": {"2"},
    "CtxDown": set(),
    "CtxAbsent": set(),
    "CtxNotSampling": set(),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def query(base, q):
    body = json.loads(get(base + "/api/v1/query?" + urllib.parse.urlencode({"query": q})))
    if body.get("status") != "success":
        raise RuntimeError(f"{q}: {body.get('error')}")
    return body["data"]["result"]


def wait_for(what, fn, timeout):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if fn():
                return True
        except Exception as e:  # noqa: BLE001 - report the last error if it never succeeds
            last = e
        time.sleep(0.5)
    print(f"FAIL timed out waiting for {what}" + (f": {last}" if last else ""), file=sys.stderr)
    return False


def main():
    prometheus = shutil.which("prometheus")
    if not prometheus:
        print("FAIL prometheus not on PATH (apt-get install prometheus)", file=sys.stderr)
        return 1
    failures = []
    with tempfile.TemporaryDirectory(prefix="ctx-live-") as tmp:
        target_port, prom_port = free_port(), free_port()
        target = f"127.0.0.1:{target_port}"
        base = f"http://127.0.0.1:{prom_port}"
        with open(RULES) as f:
            rules = f.read().replace("[5m]", f"[{WINDOW}]")
        with open(os.path.join(tmp, "ctx.rules.yml"), "w") as f:
            f.write(rules)
        with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - ctx.rules.yml
scrape_configs:
  - job_name: ctx
    static_configs:
      - targets: ["{target}"]
""")
        procs = []
        try:
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "fake_ctx.py"), "--listen", target]))
            log = open(os.path.join(tmp, "prometheus.log"), "w")
            procs.append(subprocess.Popen(
                [prometheus, f"--config.file={tmp}/prometheus.yml",
                 f"--storage.tsdb.path={tmp}/data", f"--web.listen-address=127.0.0.1:{prom_port}",
                 "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT))
            if not wait_for("Prometheus to be ready", lambda: get(base + "/-/ready"), 60):
                return 1
            # Two windows of data, so every rate has settled.
            if not wait_for("the recorded series",
                            lambda: query(base, "instance:ctx_isolated_avoidable_ipis:rate5m"), 30):
                return 1
            time.sleep(20)

            groups = json.loads(get(base + "/api/v1/rules"))["data"]["groups"]
            n_rules = 0
            for g in groups:
                for r in g["rules"]:
                    n_rules += 1
                    if r.get("health") != "ok":
                        failures.append(f"rule {r['name']}: health {r.get('health')}: {r.get('lastError')}")
            print(f"live: {n_rules} rules evaluated by Prometheus {base}, scraping fake ctx at {target}")

            for name, want in EXPECTED.items():
                got = {}
                for s in query(base, name):
                    labels = tuple(sorted((k, v) for k, v in s["metric"].items()
                                          if k not in ("__name__", "job", "instance")))
                    got[labels] = float(s["value"][1])
                for labels, value in want.items():
                    if labels not in got:
                        failures.append(f"{name}{dict(labels)}: missing")
                    elif abs(got[labels] - value) > 0.05 * abs(value) + 1e-9:
                        failures.append(f"{name}{dict(labels)} = {got[labels]:.6g}, expected {value:.6g}")
                for labels in set(got) - set(want):
                    failures.append(f"{name}{dict(labels)}: unexpected series")
                print(f"  {name}: " + ", ".join(
                    f"{','.join(v for _, v in k) or '-'}={got.get(k, float('nan')):.6g}" for k in sorted(want)))

            alerts = json.loads(get(base + "/api/v1/alerts"))["data"]["alerts"]
            for name, cpus in EXPECTED_ALERTS.items():
                active = {a["labels"].get("cpu", "-") for a in alerts if a["labels"]["alertname"] == name}
                if active != cpus:
                    failures.append(f"alert {name}: active for CPUs {sorted(active)}, expected {sorted(cpus)}")
                print(f"  alert {name}: {'pending/firing for CPU ' + ','.join(sorted(active)) if active else 'inactive'}")

            r = subprocess.run([sys.executable, os.path.join(HERE, "dashboard_check.py"), DASHBOARD,
                                "--prometheus", base, "--var", f"instance={target}",
                                "--var", f"__rate_interval={WINDOW}"])
            if r.returncode != 0:
                failures.append("dashboard queries against the live Prometheus")
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    print(f"live check: {'FAILED' if failures else 'ok'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
