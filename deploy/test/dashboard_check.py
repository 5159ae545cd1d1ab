#!/usr/bin/env python3
"""Checks a Grafana dashboard JSON and the PromQL in it.

Offline (always):
  * the fields Grafana needs to import or provision the dashboard: uid, title, schemaVersion,
    templating, and for every panel id, type, gridPos, datasource and targets;
  * every template variable a query uses is defined (or is one of Grafana's own);
  * every ctx_* metric a query names exists in --metrics (an exposition, e.g. a scrape);
  * with --promtool, every expression parses: they go into a throw-away rules file that
    `promtool check rules` reads.
It prints every expression, with the variables substituted, one per line (--list), or writes
them to --out.

Live (--prometheus URL): runs every expression, and every label_values() variable query,
against that Prometheus' HTTP API and fails on an error or an empty result.

--provisioning DIR also checks Grafana's provisioning files (needs PyYAML).

Exit status: 0 when every check passed, 1 otherwise. Standard library only, except PyYAML for
--provisioning.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request

# Grafana's own variables, and what to put in their place to get a runnable query.
BUILTIN_VARS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "15000",
}
PANEL_TYPES_WITHOUT_QUERIES = {"row", "text", "news", "dashlist", "alertlist"}
KNOWN_PANEL_TYPES = {
    "stat", "gauge", "bargauge", "timeseries", "state-timeline", "status-history", "heatmap",
    "table", "piechart", "histogram", "barchart", "row", "text", "logs", "news", "dashlist",
    "alertlist", "nodeGraph", "traces", "geomap", "candlestick", "xychart", "trend",
}
VAR_RE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
UID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
METRIC_RE = re.compile(r"(?<![\w:])(ctx_[a-z0-9_]+)")


class Report:
    def __init__(self):
        self.errors = []

    def fail(self, msg):
        self.errors.append(msg)


def walk_panels(panels):
    for p in panels:
        yield p
        # Collapsed rows keep their panels inside.
        yield from walk_panels(p.get("panels", []))


def substitute(expr, values):
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        return values.get(name, m.group(0))
    return VAR_RE.sub(repl, expr)


def variables_used(expr):
    return {m.group(1) or m.group(2) or m.group(3) for m in VAR_RE.finditer(expr)}


def check_datasource(ref, where, rep, var_names):
    if not isinstance(ref, dict):
        rep.fail(f"{where}: datasource must be an object {{type, uid}}, got {ref!r}")
        return
    if ref.get("type") != "prometheus":
        rep.fail(f"{where}: datasource type is {ref.get('type')!r}, expected 'prometheus'")
    uid = ref.get("uid", "")
    used = variables_used(uid)
    if not used:
        rep.fail(f"{where}: datasource uid {uid!r} is fixed; use the datasource variable")
    for v in used - var_names:
        rep.fail(f"{where}: datasource uses undefined variable ${v}")


def label_values_query(q):
    """label_values(SELECTOR, LABEL) -> (SELECTOR, LABEL); label_values(LABEL) -> (None, LABEL)."""
    m = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*", q)
    return (m.group(1), m.group(2)) if m else (None, None)


def check_dashboard(d, rep):
    """Returns [(where, expr)] and [(where, selector, label)] for variable queries."""
    for key, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list)):
        if not isinstance(d.get(key), kind):
            rep.fail(f"dashboard: '{key}' missing or not a {kind.__name__}")
    if isinstance(d.get("uid"), str) and not UID_RE.match(d["uid"]):
        rep.fail(f"dashboard: uid {d['uid']!r} must be 1-40 characters of [A-Za-z0-9_-]")
    if isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] < 36:
        rep.fail(f"dashboard: schemaVersion {d['schemaVersion']} predates datasource references (36)")
    if "__inputs" in d:
        rep.fail("dashboard: '__inputs' (an export for sharing) cannot be provisioned; use a datasource variable")
    if d.get("id") not in (None,):
        rep.fail("dashboard: 'id' must be null or absent, or Grafana overwrites another dashboard")

    templ = d.get("templating", {}).get("list")
    if not isinstance(templ, list):
        rep.fail("dashboard: templating.list missing")
        templ = []
    var_names = set()
    var_queries = []
    ds_vars = [v for v in templ if v.get("type") == "datasource"]
    if not any(v.get("query") == "prometheus" for v in ds_vars):
        rep.fail("templating: no datasource variable of type prometheus")
    for v in templ:
        name = v.get("name")
        if not name or not v.get("type"):
            rep.fail(f"templating: variable without name or type: {v!r}")
            continue
        if name in var_names:
            rep.fail(f"templating: variable {name} defined twice")
        var_names.add(name)
    if "instance" not in var_names:
        rep.fail("templating: no 'instance' (host) variable")
    for v in templ:
        if v.get("type") != "query":
            continue
        where = f"templating.{v.get('name')}"
        check_datasource(v.get("datasource"), where, rep, var_names)
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if not isinstance(q, str) or not q.strip():
            rep.fail(f"{where}: empty query")
            continue
        sel, label = label_values_query(q)
        if label is None:
            rep.fail(f"{where}: only label_values(...) variable queries are checked; got {q!r}")
            continue
        for u in variables_used(q) - var_names - set(BUILTIN_VARS):
            rep.fail(f"{where}: uses undefined variable ${u}")
        var_queries.append((where, sel, label))

    exprs = []
    ids = set()
    for p in walk_panels(d.get("panels", [])):
        pid = p.get("id")
        where = f"panel {pid} {p.get('title')!r}"
        if not isinstance(pid, int):
            rep.fail(f"{where}: id missing or not an integer")
        elif pid in ids:
            rep.fail(f"{where}: id {pid} used twice")
        ids.add(pid)
        ptype = p.get("type")
        if ptype not in KNOWN_PANEL_TYPES:
            rep.fail(f"{where}: unknown panel type {ptype!r}")
        if not p.get("title"):
            rep.fail(f"{where}: no title")
        gp = p.get("gridPos")
        if not isinstance(gp, dict) or not all(isinstance(gp.get(k), int) for k in "xywh"):
            rep.fail(f"{where}: gridPos needs integer x, y, w, h")
        elif gp["x"] < 0 or gp["w"] < 1 or gp["x"] + gp["w"] > 24 or gp["h"] < 1 or gp["y"] < 0:
            rep.fail(f"{where}: gridPos {gp} outside the 24-column grid")
        if ptype in PANEL_TYPES_WITHOUT_QUERIES:
            continue
        check_datasource(p.get("datasource"), where, rep, var_names)
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            rep.fail(f"{where}: no targets")
            continue
        refs = set()
        for t in targets:
            ref = t.get("refId")
            twhere = f"{where} target {ref}"
            if not ref or ref in refs:
                rep.fail(f"{twhere}: refId missing or repeated")
            refs.add(ref)
            check_datasource(t.get("datasource"), twhere, rep, var_names)
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                rep.fail(f"{twhere}: no expr")
                continue
            for u in variables_used(expr) - var_names - set(BUILTIN_VARS):
                rep.fail(f"{twhere}: uses undefined variable ${u}")
            exprs.append((twhere, expr))
    return exprs, var_queries


def known_metrics(exposition_text):
    names = set()
    for line in exposition_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names.add(name)
            if kind.strip() in ("histogram", "summary"):
                names.update({name + "_bucket", name + "_sum", name + "_count"})
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def check_metric_names(exprs, names, rep):
    for where, expr in exprs:
        for m in sorted(set(METRIC_RE.findall(expr))):
            if m not in names:
                rep.fail(f"{where}: metric {m} is not in the exposition given with --metrics")


def promtool_parse(exprs, promtool, rep):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dashboard-exprs.rules.yml")
        with open(path, "w") as f:
            f.write("groups:\n  - name: dashboard\n    rules:\n")
            for i, (where, expr) in enumerate(exprs):
                f.write(f"      # {where}\n      - record: dashboard:expr_{i}\n")
                f.write(f"        expr: {json.dumps(expr)}\n")
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        if r.returncode != 0:
            rep.fail(f"promtool rejects a dashboard expression:\n{r.stdout}{r.stderr}")


def prom_query(base, query, timeout=10):
    url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            body = json.load(e)
        except ValueError:
            return None, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return None, str(e)
    if body.get("status") != "success":
        return None, f"{body.get('errorType')}: {body.get('error')}"
    return body["data"], None


def run_live(base, exprs, var_queries, values, rep):
    ok = 0
    for where, expr in exprs:
        q = substitute(expr, values)
        data, err = prom_query(base, q)
        if err:
            rep.fail(f"{where}: query failed: {err}\n    {q}")
        elif not data.get("result"):
            rep.fail(f"{where}: empty result\n    {q}")
        else:
            ok += 1
    for where, sel, label in var_queries:
        if sel is None:
            continue
        q = substitute(sel, values)
        data, err = prom_query(base, q)
        if err:
            rep.fail(f"{where}: query failed: {err}\n    {q}")
        elif not any(label in r.get("metric", {}) for r in data.get("result", [])):
            rep.fail(f"{where}: no series of {q} has label {label}")
        else:
            ok += 1
    return ok


def check_provisioning(root, rep):
    try:
        import yaml
    except ImportError:
        rep.fail("--provisioning needs PyYAML (python3-yaml)")
        return
    found = {"datasources": False, "dashboards": False}
    for sub in found:
        d = os.path.join(root, sub)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if not name.endswith((".yml", ".yaml")):
                continue
            path = os.path.join(d, name)
            with open(path) as f:
                doc = yaml.safe_load(f)
            if not isinstance(doc, dict) or doc.get("apiVersion") != 1:
                rep.fail(f"{path}: apiVersion must be 1")
                continue
            if sub == "datasources":
                for ds in doc.get("datasources", []):
                    found[sub] = True
                    for k in ("name", "type", "url", "access"):
                        if not ds.get(k):
                            rep.fail(f"{path}: datasource {ds.get('name')!r} has no {k}")
                    if ds.get("type") != "prometheus":
                        rep.fail(f"{path}: datasource {ds.get('name')!r} is not of type prometheus")
            else:
                for prov in doc.get("providers", []):
                    found[sub] = True
                    if prov.get("type") != "file" or not prov.get("options", {}).get("path"):
                        rep.fail(f"{path}: provider {prov.get('name')!r} needs type: file and options.path")
    for sub, ok in found.items():
        if not ok:
            rep.fail(f"{root}/{sub}: no provisioning entry")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dashboard", help="dashboard JSON file")
    ap.add_argument("--metrics", help="an exposition (file) whose metric names the queries may use")
    ap.add_argument("--promtool", help="path to promtool, to parse every expression offline")
    ap.add_argument("--prometheus", metavar="URL", help="run every query against this Prometheus")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="value for a variable (default: instance=localhost:10977, cpu=.*, "
                         "__rate_interval=1m, ...)")
    ap.add_argument("--list", action="store_true", help="print the substituted expressions")
    ap.add_argument("--out", help="write the substituted expressions to this file")
    ap.add_argument("--provisioning", metavar="DIR", help="check Grafana provisioning files in DIR")
    args = ap.parse_args()

    rep = Report()
    with open(args.dashboard) as f:
        try:
            d = json.load(f)
        except ValueError as e:
            print(f"{args.dashboard}: not JSON: {e}", file=sys.stderr)
            return 1
    exprs, var_queries = check_dashboard(d, rep)

    values = dict(BUILTIN_VARS)
    values.update({"instance": "localhost:10977", "cpu": ".*", "datasource": "prometheus"})
    for kv in args.var:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--var wants NAME=VALUE, got {kv!r}")
        values[k] = v
    substituted = [substitute(e, values) for _, e in exprs]

    if args.metrics:
        with open(args.metrics) as f:
            check_metric_names(exprs, known_metrics(f.read()), rep)
    if args.promtool:
        promtool_parse(list(zip([w for w, _ in exprs], substituted)), args.promtool, rep)
    if args.provisioning:
        check_provisioning(args.provisioning, rep)
    if args.list:
        for q in substituted:
            print(q)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(substituted) + "\n")
    live = ""
    if args.prometheus and not rep.errors:
        n = run_live(args.prometheus, exprs, var_queries, values, rep)
        live = f", {n} of {len(exprs) + sum(1 for _, s, _ in var_queries if s)} queries returned series"

    for e in rep.errors:
        print(f"FAIL {e}", file=sys.stderr)
    status = "FAILED" if rep.errors else "ok"
    print(f"dashboard {d.get('uid')!r}: {sum(1 for _ in walk_panels(d.get('panels', [])))} panels, "
          f"{len(exprs)} expressions, {len(var_queries)} variable queries{live}: {status}")
    return 1 if rep.errors else 0


if __name__ == "__main__":
    sys.exit(main())
