#!/usr/bin/env python3
"""A stand-in for ctx-daemon's HTTP endpoint, for testing the Prometheus rules and the Grafana
dashboard against a real Prometheus without eBPF.

It serves the metric contract (README.md, exporter section) for a 4-CPU host booted with
nohz_full=1-3. Counters grow with wall time at the fixed rates below, so rate() has something
to measure (fractional counts, so that short rate windows come out exact):

  CPU 0  housekeeping: 25% user, 25% kernel, 50% idle, reschedule IPIs, NMIs
  CPU 1  isolated, clean: busy in user, 0.78% kernel, call_function IPIs only in the kernel
  CPU 2  isolated, noisy: 6.25% kernel, call_function IPIs in user mode (avoidable), NMIs
  CPU 3  isolated, idle: reschedule IPIs while idle (avoidable)

Usage: fake_ctx.py --listen 127.0.0.1:PORT      serve /metrics and /healthz
       fake_ctx.py --dump                       print one exposition and exit
Standard library only.
"""

import argparse
import http.server
import platform
import sys
import time

NOHZ_FULL = {1, 2, 3}
CPUS = [0, 1, 2, 3]
STATES = ["user", "kernel", "idle", "nmi"]
ONE_HOT_STATES = ["kernel", "user", "nmi_from_user", "nmi_from_kernel", "idle"]
VECTORS = ["reschedule", "call_function", "call_function_single", "irq_work"]
ARRIVAL = ["user", "kernel", "idle"]
VERDICTS = ["ipi_needed", "deferrable", "quiesced"]
HOOKS = [
    ("context_tracking", "user_enter", "attached"),
    ("context_tracking", "user_exit", "attached"),
    ("raw_syscalls", "sys_enter", "attached"),
    ("raw_syscalls", "sys_exit", "attached"),
    ("power", "cpu_idle", "attached"),
    ("nmi", "nmi_handler", "attached"),
    ("irq_vectors", "reschedule_entry", "attached"),
    ("irq_vectors", "call_function_entry", "attached"),
    ("irq_vectors", "call_function_single_entry", "attached"),
    ("irq_vectors", "irq_work_entry", "attached"),
    ("irq_vectors", "local_timer_entry", "attached"),
    ("irq", "irq_handler_entry", "attached"),
    ("exceptions", "page_fault_user", "attached"),
    ("cpuhp", "cpuhp_enter", "attached"),
]
BUCKETS = [1e-05, 2.5e-05, 5e-05, 0.0001, 0.00025, 0.0005, 0.001, 0.0025]
SWEEPS_PER_SECOND = 100  # --sample-interval 10ms

# Per-second rates. Missing keys are 0.
SECONDS = {
    0: {"user": 0.25, "kernel": 0.25, "idle": 0.5},
    1: {"user": 0.859375, "kernel": 0.0078125, "idle": 0.1328125},
    2: {"user": 0.75, "kernel": 0.0625, "idle": 0.1875},
    3: {"idle": 1.0},
}
CURRENT_STATE = {0: "kernel", 1: "user", 2: "user", 3: "idle"}
IPIS = {  # (cpu, vector, state at arrival) -> per second
    (0, "reschedule", "user"): 1.0,
    (1, "call_function", "kernel"): 0.25,
    (2, "call_function", "user"): 0.25,
    (3, "reschedule", "idle"): 0.5,
}
INTERRUPTS = {  # (cpu, kind, state) -> per second
    (0, "local_timer", "kernel"): 250.0,
    (0, "device", "kernel"): 50.0,
    (1, "local_timer", "user"): 1.0,
    (2, "local_timer", "user"): 1.0,
}
NMIS = {0: 0.125, 2: 0.125}
KERNEL_ENTRIES = {0: 100.0, 1: 1.0, 2: 4.0}
SYSCALLS = {0: 80.0, 2: 2.0}
PAGE_FAULTS = {0: 10.0}
IDLE_ENTRIES = {0: 50.0, 1: 2.0, 2: 2.0, 3: 1.0}
VERDICT_RATES = {  # per CPU, per second; 100 sweeps/s
    0: {"ipi_needed": 25.0, "deferrable": 25.0, "quiesced": 50.0},
    1: {"deferrable": 100.0},
    2: {"ipi_needed": 6.25, "deferrable": 75.0, "quiesced": 18.75},
    3: {"quiesced": 100.0},
}
UPTIME_AT_START = 1000.0  # counters start as if the daemon had run this long


class Model:
    def __init__(self, now):
        self.start = now - UPTIME_AT_START

    def exposition(self, now):
        t = now - self.start
        out = []

        def family(name, kind, help_text, samples):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for suffix, labels, value in samples:
                lbl = ",".join(f'{k}="{v}"' for k, v in labels)
                out.append(f"{name}{suffix}{{{lbl}}} {value!r}" if lbl else f"{name}{suffix} {value!r}")

        c = lambda cpu: ("cpu", str(cpu))  # noqa: E731
        family("ctx_cpu_seconds_total", "counter", "Seconds each CPU spent in each state.",
               [("", [c(cpu), ("state", s)], SECONDS[cpu].get(s, 0.0) * t)
                for cpu in CPUS for s in STATES])
        family("ctx_cpu_state", "gauge", "State of each CPU at the latest sample (one-hot).",
               [("", [c(cpu), ("state", s)], 1.0 if CURRENT_STATE[cpu] == s else 0.0)
                for cpu in CPUS for s in ONE_HOT_STATES])
        family("ctx_cpu_ipi_needed", "gauge", "1 when the latest sample said an IPI is needed now.",
               [("", [c(cpu)], 1.0 if CURRENT_STATE[cpu] == "kernel" else 0.0) for cpu in CPUS])
        family("ctx_cpu_samples_total", "counter", "Sampler verdicts per CPU.",
               [("", [c(cpu), ("verdict", v)], VERDICT_RATES[cpu].get(v, 0.0) * t)
                for cpu in CPUS for v in VERDICTS])
        family("ctx_cpu_kernel_entries_total", "counter", "User-to-kernel transitions.",
               [("", [c(cpu)], KERNEL_ENTRIES.get(cpu, 0.0) * t) for cpu in CPUS])
        family("ctx_cpu_nmis_total", "counter", "NMIs taken.",
               [("", [c(cpu)], NMIS.get(cpu, 0.0) * t) for cpu in CPUS])
        family("ctx_cpu_ipis_received_total", "counter", "IPIs received, by vector and state at arrival.",
               [("", [c(cpu), ("vector", v), ("state", s)], IPIS.get((cpu, v, s), 0.0) * t)
                for cpu in CPUS for v in VECTORS for s in ARRIVAL])
        family("ctx_cpu_info", "gauge", "Per-CPU facts, always 1.",
               [("", [c(cpu), ("nohz_full", "true" if cpu in NOHZ_FULL else "false"),
                      ("source", "context_tracking" if cpu in NOHZ_FULL else "syscalls")], 1.0)
                for cpu in CPUS])
        family("ctx_cpu_interrupts_total", "counter", "Timer and device interrupts, by state at arrival.",
               [("", [c(cpu), ("kind", k), ("state", s)], INTERRUPTS.get((cpu, k, s), 0.0) * t)
                for cpu in CPUS for k in ["local_timer", "device"] for s in ARRIVAL])
        family("ctx_cpu_syscalls_total", "counter", "Syscalls entered.",
               [("", [c(cpu)], SYSCALLS.get(cpu, 0.0) * t) for cpu in CPUS])
        family("ctx_cpu_page_faults_total", "counter", "User page faults.",
               [("", [c(cpu)], PAGE_FAULTS.get(cpu, 0.0) * t) for cpu in CPUS])
        family("ctx_cpu_idle_entries_total", "counter", "Idle entries.",
               [("", [c(cpu)], IDLE_ENTRIES.get(cpu, 0.0) * t) for cpu in CPUS])
        family("ctx_cpu_mirror_resyncs_total", "counter", "Times the per-CPU mirror was resynchronised.",
               [("", [c(cpu)], 0.0) for cpu in CPUS])
        family("ctx_hook_info", "gauge", "Each kernel hook and how its attach went, always 1.",
               [("", [("group", g), ("hook", h), ("status", s)], 1.0) for g, h, s in HOOKS])
        family("ctx_build_info", "gauge", "Build and kernel, always 1.",
               [("", [("version", "0.1.0"), ("kernel", platform.release())], 1.0)])
        sweeps = int(SWEEPS_PER_SECOND * t)
        counts = [int(sweeps * f) for f in (0.0, 0.05, 0.5, 0.9, 0.99, 1.0, 1.0, 1.0)]
        hist = [("_bucket", [("le", repr(b))], float(n)) for b, n in zip(BUCKETS, counts)]
        hist.append(("_bucket", [("le", "+Inf")], float(sweeps)))
        hist.append(("_sum", [], sweeps * 6e-05))
        hist.append(("_count", [], float(sweeps)))
        family("ctx_sample_duration_seconds", "histogram", "Duration of one sweep over all CPUs.", hist)
        family("ctx_last_sample_timestamp_seconds", "gauge", "Unix time of the newest sweep.",
               [("", [], round(now - 0.005, 3))])
        family("ctx_sweeps_total", "counter", "Sweeps over all CPUs.", [("", [], float(sweeps))])
        family("ctx_sample_torn_total", "counter", "Records caught mid-write and read again.",
               [("", [], 0.01 * t)])
        family("ctx_sampler_up", "gauge", "1 while sampling is fresh.", [("", [], 1.0)])
        family("ctx_pins_ok", "gauge", "1 while every pin is in place and the daemon's own.",
               [("", [], 1.0)])
        family("ctx_pins_repairs_total", "counter", "Times pins were repaired.", [("", [], 0.0)])
        family("ctx_pins_repaired_timestamp_seconds", "gauge", "Unix time of the last pin repair.",
               [("", [], 0.0)])
        return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:10977", help="ADDR:PORT to serve on")
    ap.add_argument("--dump", action="store_true", help="print one exposition and exit")
    args = ap.parse_args()
    model = Model(time.time())
    if args.dump:
        sys.stdout.write(model.exposition(time.time()))
        return 0

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/metrics":
                body = model.exposition(time.time()).encode()
                ctype = "text/plain; version=0.0.4; charset=utf-8"
            elif self.path == "/healthz":
                body, ctype = b"ok\n", "text/plain"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    host, _, port = args.listen.rpartition(":")
    srv = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
