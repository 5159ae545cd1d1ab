#!/usr/bin/env python3
"""Checks what a schema cannot in deploy/kubernetes: that the objects fit together, and that
the DaemonSet keeps to ctx's least-privilege contract.

Schema validation itself is kubernetes-validate's job (deploy/check.sh runs it). That has no
schema for the Prometheus Operator's PodMonitor, so the PodMonitor fields ctx uses are
checked here by hand.

Usage: k8s_check.py DIR   (needs PyYAML)
"""

import os
import sys

import yaml

CAPS = {"BPF", "PERFMON"}
HOST_PATHS = {  # hostPath -> (mountPath, must be read-only)
    "/sys/fs/bpf/ctx": ("/run/ctx/pins", False),
    "/sys/kernel/btf": ("/sys/kernel/btf", True),
    "/sys/kernel/tracing": ("/sys/kernel/tracing", True),
}


def load(dirname):
    docs = []
    for name in sorted(os.listdir(dirname)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(dirname, name)) as f:
                docs += [(name, d) for d in yaml.safe_load_all(f) if d]
    return docs


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def main():
    dirname = sys.argv[1]
    errors = []
    objs = {}
    for name, d in load(dirname):
        objs.setdefault(d["kind"], []).append(d)
    for kind in ("Namespace", "ServiceAccount", "DaemonSet", "Service", "PodMonitor"):
        if len(objs.get(kind, [])) != 1:
            errors.append(f"expected one {kind}, found {len(objs.get(kind, []))}")
    if errors:
        print("\n".join(f"FAIL {e}" for e in errors), file=sys.stderr)
        return 1
    ns = objs["Namespace"][0]["metadata"]["name"]
    ds, svc, pm = objs["DaemonSet"][0], objs["Service"][0], objs["PodMonitor"][0]
    for o in (objs["ServiceAccount"][0], ds, svc, pm):
        if o["metadata"].get("namespace") != ns:
            errors.append(f"{o['kind']} is not in namespace {ns}")

    spec = ds["spec"]["template"]["spec"]
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    if not matches(ds["spec"]["selector"]["matchLabels"], pod_labels):
        errors.append("DaemonSet selector does not match its pod template")
    if spec.get("serviceAccountName") != objs["ServiceAccount"][0]["metadata"]["name"]:
        errors.append("DaemonSet does not use the ServiceAccount")
    if spec.get("nodeSelector", {}).get("ctx.io/nohz-full") != "true":
        errors.append("DaemonSet does not select nodes labelled ctx.io/nohz-full=true")
    for key in ("hostPID", "hostNetwork", "hostIPC"):
        if spec.get(key):
            errors.append(f"pod sets {key}")
    if spec.get("automountServiceAccountToken") is not False:
        errors.append("pod mounts a service account token it does not use")
    if spec.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
        errors.append("pod seccomp profile is not RuntimeDefault")
    if len(spec["containers"]) != 1:
        errors.append("expected one container")
    c = spec["containers"][0]
    sc = c.get("securityContext", {})
    if sc.get("privileged") is not False:
        errors.append("container must set privileged: false")
    if sc.get("allowPrivilegeEscalation") is not False:
        errors.append("container must set allowPrivilegeEscalation: false")
    if sc.get("readOnlyRootFilesystem") is not True:
        errors.append("container must set readOnlyRootFilesystem: true")
    caps = sc.get("capabilities", {})
    if caps.get("drop") != ["ALL"] or set(caps.get("add", [])) != CAPS:
        errors.append(f"capabilities must drop ALL and add exactly {sorted(CAPS)}, got {caps}")
    for kind in ("cpu", "memory"):
        for level in ("requests", "limits"):
            if kind not in c.get("resources", {}).get(level, {}):
                errors.append(f"container has no {kind} {level[:-1]}")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        g = c.get(probe, {}).get("httpGet", {})
        if g.get("path") != "/healthz" or g.get("port") not in ports:
            errors.append(f"{probe} must GET /healthz on a named container port")
    args = c.get("args", [])
    if "--pin-dir" not in args or args[args.index("--pin-dir") + 1] != HOST_PATHS["/sys/fs/bpf/ctx"][0]:
        errors.append("container args must pass --pin-dir " + HOST_PATHS["/sys/fs/bpf/ctx"][0])
    if "--listen" not in args or not args[args.index("--listen") + 1].endswith(":10977"):
        errors.append("container args must --listen on port 10977")

    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    seen = set()
    for name, v in volumes.items():
        hp = v.get("hostPath", {}).get("path")
        if hp not in HOST_PATHS:
            errors.append(f"volume {name}: hostPath {hp} is not one ctx needs")
            continue
        seen.add(hp)
        want_path, want_ro = HOST_PATHS[hp]
        m = mounts.get(name)
        if not m:
            errors.append(f"volume {name} is not mounted")
            continue
        if m["mountPath"] != want_path:
            errors.append(f"volume {name} mounted at {m['mountPath']}, expected {want_path}")
        if bool(m.get("readOnly")) != want_ro:
            errors.append(f"volume {name} must be mounted {'read-only' if want_ro else 'read-write'}")
    for hp in set(HOST_PATHS) - seen:
        errors.append(f"no hostPath volume for {hp}")

    if svc["spec"].get("clusterIP") != "None":
        errors.append("Service should be headless (clusterIP: None)")
    if not matches(svc["spec"]["selector"], pod_labels):
        errors.append("Service selector does not match the pods")
    for p in svc["spec"]["ports"]:
        if p.get("targetPort") not in ports:
            errors.append(f"Service targetPort {p.get('targetPort')} is not a container port name")

    if pm.get("apiVersion") != "monitoring.coreos.com/v1":
        errors.append("PodMonitor apiVersion must be monitoring.coreos.com/v1")
    pms = pm["spec"]
    if not matches(pms.get("selector", {}).get("matchLabels"), pod_labels):
        errors.append("PodMonitor selector does not match the pods")
    eps = pms.get("podMetricsEndpoints", [])
    if not eps:
        errors.append("PodMonitor has no podMetricsEndpoints")
    for ep in eps:
        if ep.get("port") not in ports:
            errors.append(f"PodMonitor port {ep.get('port')} is not a container port name")
        if ep.get("path", "/metrics") != "/metrics":
            errors.append("PodMonitor path must be /metrics")
        for r in ep.get("relabelings", []):
            if not isinstance(r.get("sourceLabels", []), list) or not r.get("targetLabel"):
                errors.append(f"PodMonitor relabeling {r} needs a targetLabel and a list of sourceLabels")
        if not any(r.get("targetLabel") == "instance" for r in ep.get("relabelings", [])):
            errors.append("PodMonitor should set instance to the node name")

    for e in errors:
        print(f"FAIL {e}", file=sys.stderr)
    print(f"kubernetes cross-checks ({', '.join(sorted(objs))}): {'FAILED' if errors else 'ok'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
