#!/usr/bin/env bash
# deploy/check.sh: every check of deploy/ that needs no VM and no network beyond loopback.
#
#   systemd     systemd-analyze verify (in a scratch root with a stub ctx-daemon), the
#               sysusers entry, ctx.toml, and `systemd-analyze security` exposure <= 2.5
#   prometheus  promtool check config/rules, promtool test rules, metric names against the
#               contract, and the remote_write filter
#   grafana     dashboard_check.py: schema fields, variables, metric names, PromQL syntax,
#               provisioning files
#   kubernetes  kubernetes-validate --strict (two API versions) and k8s_check.py
#   live        live_check.py: a real Prometheus on loopback scrapes fake_ctx.py, evaluates the
#               rules and answers every dashboard query
# Each checker is also run on a broken copy of its input, and must then fail.
#
# Usage: bash deploy/check.sh [--no-live]     (from anywhere; root on Debian bookworm)
# Installs what is missing: Debian's prometheus (promtool), systemd, python3-venv, and
# kubernetes-validate from PyPI into deploy/.venv (CTX_DEPLOY_VENV overrides the place).
# Exit status: 0 when every check passed.

set -uo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VENV=${CTX_DEPLOY_VENV:-$DEPLOY/.venv}
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
K8S_VERSIONS=(1.37.0 1.29.0)
MAX_EXPOSURE=2.5
LIVE=1
for arg in "$@"; do
    case $arg in
        --no-live) LIVE=0 ;;
        *) echo "usage: bash deploy/check.sh [--no-live]" >&2; exit 2 ;;
    esac
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ctx-deploy-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PASSED=0
FAILED=0
SUMMARY=()
SCORE="?"
PROMTOOL_TEST="?"

say() { printf '%s\n' "$*"; }
ok() { PASSED=$((PASSED + 1)); SUMMARY+=("ok    $1"); say "ok    $1"; }
bad() { FAILED=$((FAILED + 1)); SUMMARY+=("FAIL  $1"); say "FAIL  $1"; }

# check NAME CMD...: passes when CMD exits 0; its output is shown on failure.
check() {
    local name=$1; shift
    if "$@" >"$WORK/out" 2>&1; then ok "$name"; else cat "$WORK/out"; bad "$name"; fi
}
# expect_fail NAME CMD...: the self-test of a checker; passes when CMD exits non-zero.
expect_fail() {
    local name=$1; shift
    if "$@" >"$WORK/out" 2>&1; then cat "$WORK/out"; bad "$name (a broken input passed)"; else ok "$name"; fi
}

# ---------------------------------------------------------------------------------------------
# Tools
apt_install() {
    say "installing $* (Debian)"
    if [ "$(id -u)" -ne 0 ]; then
        say "deploy/check.sh: $* missing and not root: apt-get install -y $*" >&2
        exit 1
    fi
    if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq || exit 1; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || {
        say "deploy/check.sh: apt-get install $* failed" >&2; exit 1; }
}
need_apt=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
[ ${#need_apt[@]} -eq 0 ] || apt_install "${need_apt[@]}"
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "${KUBERNETES_VALIDATE#*==}"; then
    # Debian's python3 makes venvs only with python3-venv installed.
    python3 -m venv --clear "$VENV" >/dev/null 2>&1 || { apt_install python3-venv && python3 -m venv --clear "$VENV"; } || exit 1
    say "installing $KUBERNETES_VALIDATE into $VENV (PyPI)"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$KUBERNETES_VALIDATE" || {
        say "deploy/check.sh: cannot install $KUBERNETES_VALIDATE into $VENV" >&2; exit 1; }
fi
PY=$VENV/bin/python   # has PyYAML (a kubernetes-validate dependency); the checkers need no more
say "tools: $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3), $(systemd-analyze --version | head -1), $("$VENV/bin/kubernetes-validate" --version 2>&1 | head -1)"

# The contract, as fake_ctx.py serves it: the metric names rules and dashboard may use.
"$PY" "$DEPLOY/test/fake_ctx.py" --dump >"$WORK/contract.prom"

# ---------------------------------------------------------------------------------------------
say "== systemd"
# A scratch root: the host's unit library (for the targets the unit orders after), the
# commands ExecStartPre= runs, and a stub ctx-daemon, which verify wants to be executable.
make_root() {
    local root=$1 unit=$2
    mkdir -p "$root/usr/bin" "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/usr/lib/sysusers.d"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    cp /usr/bin/install /usr/bin/chown "$root/usr/bin/"
    printf '#!/bin/sh\nexit 0\n' >"$root/usr/bin/ctx-daemon"
    chmod 0755 "$root/usr/bin/ctx-daemon"
    cp "$unit" "$root/etc/systemd/system/ctx.service"
    cp "$DEPLOY/systemd/ctx.socket" "$root/etc/systemd/system/ctx.socket"
    cp "$DEPLOY/systemd/ctx.sysusers" "$root/usr/lib/sysusers.d/ctx.conf"
}
# verify prints warnings (unknown keys, bad values) but may still exit 0: any output fails.
verify_unit() {
    local root=$1 out
    out=$(cd "$root" && systemd-analyze verify --man=no --root="$root" ctx.service 2>&1) && [ -z "$out" ] || {
        printf '%s\n' "$out"; return 1; }
}
make_root "$WORK/root" "$DEPLOY/systemd/ctx.service"
check "systemd: systemd-analyze verify ctx.service" verify_unit "$WORK/root"
check "systemd: systemd-analyze verify ctx.socket" sh -c \
    'out=$(cd "$1" && systemd-analyze verify --man=no --root="$1" ctx.socket 2>&1) && [ -z "$out" ] || { printf "%s\n" "$out"; exit 1; }' _ "$WORK/root"
sed 's/^ProtectHome=yes/ProtectHome=yes\nProtectHomme=yes/' "$DEPLOY/systemd/ctx.service" >"$WORK/broken.service"
make_root "$WORK/broken-root" "$WORK/broken.service"
expect_fail "systemd: verify rejects a misspelt directive" verify_unit "$WORK/broken-root"
check "systemd: sysusers entry creates user ctx" sh -c \
    'mkdir -p "$1/etc" && systemd-sysusers --root="$1" >/dev/null 2>&1 && grep -q "^ctx:" "$1/etc/passwd"' _ "$WORK/root"
check "systemd: ctx.toml parses and uses only known keys" "$PY" - "$DEPLOY/systemd/ctx.toml" <<'EOF'
import sys, tomllib
conf = tomllib.load(open(sys.argv[1], "rb"))
unknown = set(conf) - {"listen", "web", "cpus", "sample_interval", "pin_dir"}
unknown |= {f"web.{k}" for k in conf.get("web", {})} - {"web.listen-address", "web.telemetry-path", "web.config"}
sys.exit(f"unknown keys: {sorted(unknown)}" if unknown else 0)
EOF
(cd "$WORK" && systemd-analyze security --offline=yes --root="$WORK/root" ctx.service) >"$WORK/security" 2>&1
SCORE=$(sed -n 's/.*Overall exposure level for ctx.service: \([0-9.]*\).*/\1/p' "$WORK/security")
if [ -n "$SCORE" ] && awk -v s="$SCORE" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'; then
    ok "systemd: security exposure $SCORE <= $MAX_EXPOSURE"
else
    cat "$WORK/security"; bad "systemd: security exposure ${SCORE:-unknown} > $MAX_EXPOSURE"
fi
grep '✗' "$WORK/security" | sed 's/  */ /g; s/^/      /'

# ---------------------------------------------------------------------------------------------
say "== prometheus"
P=$DEPLOY/prometheus
check "prometheus: promtool check config prometheus.yml" promtool check config "$P/prometheus.yml"
check "prometheus: promtool check rules ctx.rules.yml" promtool check rules "$P/ctx.rules.yml"
if (cd "$P" && promtool test rules ctx.rules.test.yml) >"$WORK/ptest" 2>&1; then
    PROMTOOL_TEST=$(grep -E 'SUCCESS|FAILED' "$WORK/ptest" | head -1 | tr -d ' ')
    ok "prometheus: promtool test rules ctx.rules.test.yml ($(grep -c 'alertname:' "$P/ctx.rules.test.yml") alert and $(grep -c -- '- expr:' "$P/ctx.rules.test.yml") recording cases)"
else
    PROMTOOL_TEST=FAILED; cat "$WORK/ptest"; bad "prometheus: promtool test rules ctx.rules.test.yml"
fi
mkdir -p "$WORK/mut"
cp "$P/ctx.rules.test.yml" "$WORK/mut/"
sed 's/ratio_rate5m > 0.01/ratio_rate5m > 0.1/' "$P/ctx.rules.yml" >"$WORK/mut/ctx.rules.yml"
expect_fail "prometheus: the unit tests catch a changed threshold" sh -c 'cd "$1" && promtool test rules ctx.rules.test.yml' _ "$WORK/mut"
sed 's/ctx_cpu_info{nohz_full="true"}/ctx_cpu_info/' "$P/ctx.rules.yml" >"$WORK/mut/ctx.rules.yml"
expect_fail "prometheus: the unit tests catch a lost nohz_full join" sh -c 'cd "$1" && promtool test rules ctx.rules.test.yml' _ "$WORK/mut"
check "prometheus: the contract exposition passes promtool check metrics" sh -c 'promtool check metrics <"$1"' _ "$WORK/contract.prom"
check "prometheus: rules name only contract metrics" "$PY" - "$P/ctx.rules.yml" "$WORK/contract.prom" <<'EOF'
import re, sys, yaml
names = set()
for line in open(sys.argv[2]):
    if line.startswith("# TYPE "):
        _, _, n, kind = line.split(None, 3)
        names |= {n} | ({n + s for s in ("_bucket", "_sum", "_count")} if kind.strip() == "histogram" else set())
bad = set()
for g in yaml.safe_load(open(sys.argv[1]))["groups"]:
    for r in g["rules"]:
        bad |= set(re.findall(r"(?<![\w:])(ctx_[a-z0-9_]+)", r["expr"])) - names
sys.exit(f"not in the contract: {sorted(bad)}" if bad else 0)
EOF
check "prometheus: remote_write keeps the per-host aggregates only" "$PY" - "$P/prometheus.yml" "$P/ctx.rules.yml" <<'EOF'
import re, sys, yaml
conf = yaml.safe_load(open(sys.argv[1]))
relabel = conf["remote_write"][0]["write_relabel_configs"][0]
keep = re.compile(f"^(?:{relabel['regex']})$")
records = [r["record"] for g in yaml.safe_load(open(sys.argv[2]))["groups"] for r in g["rules"] if "record" in r]
errors = []
for name in records + ["up", "ctx_sampler_up", "ctx_build_info", "ctx_cpu_seconds_total", "ctx_cpu_info"]:
    kept = bool(keep.match(f"{name};ctx"))
    want = name.startswith("instance") and not name.startswith("instance_cpu:") or name in ("up", "ctx_sampler_up", "ctx_build_info")
    if kept != want:
        errors.append(f"{name}: {'kept' if kept else 'dropped'}")
if keep.match("up;node"):
    errors.append("up of other jobs is kept")
sys.exit("\n".join(errors) if errors else 0)
EOF

# ---------------------------------------------------------------------------------------------
say "== grafana"
G=$DEPLOY/grafana
DASH_CHECK=("$PY" "$DEPLOY/test/dashboard_check.py" --metrics "$WORK/contract.prom" --promtool "$(command -v promtool)")
check "grafana: ctx-dashboard.json schema, variables, metrics, PromQL; provisioning" \
    "${DASH_CHECK[@]}" "$G/ctx-dashboard.json" --provisioning "$G/provisioning" --out "$WORK/dashboard-exprs.txt"
mutate() {  # mutate OUT PYTHON-STATEMENT-ON-d
    "$PY" - "$G/ctx-dashboard.json" "$1" "$2" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
exec(sys.argv[3])
json.dump(d, open(sys.argv[2], "w"))
EOF
}
mutate "$WORK/d1.json" 'del d["panels"][3]["gridPos"]'
expect_fail "grafana: checker rejects a panel without gridPos" "${DASH_CHECK[@]}" "$WORK/d1.json"
mutate "$WORK/d2.json" 'd["panels"][6]["targets"][0]["expr"] = d["panels"][6]["targets"][0]["expr"].replace("ctx_cpu_seconds_total", "ctx_cpu_second_total")'
expect_fail "grafana: checker rejects a metric outside the contract" "${DASH_CHECK[@]}" "$WORK/d2.json"
mutate "$WORK/d3.json" 'd["panels"][7]["targets"][0]["expr"] += ")"'
expect_fail "grafana: checker rejects PromQL that does not parse" "${DASH_CHECK[@]}" "$WORK/d3.json"
mutate "$WORK/d4.json" 'd["panels"][8]["targets"][0]["expr"] = d["panels"][8]["targets"][0]["expr"].replace("$cpu", "$cpus")'
expect_fail "grafana: checker rejects an undefined variable" "${DASH_CHECK[@]}" "$WORK/d4.json"

# ---------------------------------------------------------------------------------------------
say "== kubernetes"
K=$DEPLOY/kubernetes
for v in "${K8S_VERSIONS[@]}"; do
    check "kubernetes: kubernetes-validate --strict -k $v ctx.yaml" \
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$K/ctx.yaml"
done
say "      podmonitor.yaml: no schema validation (kubernetes-validate has none for the Prometheus Operator's CRDs); k8s_check.py checks its fields"
check "kubernetes: objects fit together, least privilege (k8s_check.py)" "$PY" "$DEPLOY/test/k8s_check.py" "$K"
sed 's/readOnlyRootFilesystem/readOnlyRootFileSystem/' "$K/ctx.yaml" >"$WORK/broken-k8s.yaml"
expect_fail "kubernetes: kubernetes-validate rejects a misspelt field" \
    "$VENV/bin/kubernetes-validate" --strict --quiet "$WORK/broken-k8s.yaml"
mkdir -p "$WORK/k8s"
sed 's/privileged: false/privileged: true/' "$K/ctx.yaml" >"$WORK/k8s/ctx.yaml"
cp "$K/podmonitor.yaml" "$WORK/k8s/"
expect_fail "kubernetes: k8s_check.py rejects a privileged container" "$PY" "$DEPLOY/test/k8s_check.py" "$WORK/k8s"

# ---------------------------------------------------------------------------------------------
if [ "$LIVE" = 1 ]; then
    say "== live (Prometheus and fake_ctx.py on loopback)"
    if "$PY" "$DEPLOY/test/live_check.py"; then ok "live: rules and dashboard queries in a real Prometheus"
    else bad "live: rules and dashboard queries in a real Prometheus"; fi
fi

# ---------------------------------------------------------------------------------------------
say ""
say "== summary"
printf '%s\n' "${SUMMARY[@]}"
say "systemd-analyze security exposure: $SCORE (threshold $MAX_EXPOSURE)"
say "promtool test rules: $PROMTOOL_TEST"
say "dashboard expressions: $(wc -l <"$WORK/dashboard-exprs.txt" 2>/dev/null || echo 0)"
say "deploy: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
