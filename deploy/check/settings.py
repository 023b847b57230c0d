#!/usr/bin/env python3
"""Checks that the deployment files agree with the binaries they run.

The binaries are the source of truth: every setting is an env var that `--help`
names as `[env: NAME=]`, and each listener's port is the one in its address setting
(INGEST_ADDR for `ingest serve`, AGGREGATOR_ADDR for `aggregator run`). This reads the
Docker image (deploy/docker/Dockerfile), the compose stack (as `docker-compose config`
resolves it), the Prometheus config beside it when it exists, and every manifest under
deploy/k8s, and fails when

  (a) an ingest or aggregator container gets an env var its binary does not know
      (a typo, a renamed setting) other than the few in NON_SETTINGS;
  (b) a published or container port, probe, healthcheck, Service targetPort,
      ServiceMonitor endpoint, scrape annotation or Prometheus target of a service is
      not the port of that service's own address setting, or a probe or scrape path is
      not one the services serve;

plus a few things that make a deployment fail in ways no schema sees: references to
ConfigMaps, Secrets, Services and Deployments that are not there, secrets set as
plain values, an aggregator stop grace period not longer than its drain deadline, and
a kustomization that misses a manifest. It prints what it checked.

Binaries: $INGEST_BIN and $AGGREGATOR_BIN, by default target/debug/{ingest,aggregator}
under the repository root. Needs PyYAML; `docker-compose` on PATH for the compose part.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy/docker/Dockerfile"
COMPOSE_FILE = ROOT / "deploy/compose/docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy/prometheus/prometheus.yml"
K8S_DIR = ROOT / "deploy/k8s"

# Env vars allowed on viewpipe containers although no --help names them, and why.
NON_SETTINGS = {
    "RUST_LOG": "log filter read by tracing's EnvFilter (schema/runtime/src/telemetry.rs)",
}
# Settings that are secrets: in Kubernetes they must come from a Secret, in compose
# from a variable, never a value written in the file.
SECRET_SETTINGS = {
    "ADMIN_TOKEN", "WRITE_KEYS", "READ_KEY", "KAFKA_SASL_PASSWORD", "KAFKA_TLS_KEY_PASSWORD",
    "KAFKA_PROPERTIES",
}
K8S_SECRET_SETTINGS = SECRET_SETTINGS | {"DATABASE_URL"}

PROBE_PATHS = {"/healthz", "/readyz", "/metrics"}
METRICS_PATH = "/metrics"
# An aggregator flushes within this deadline on SIGTERM, then leaves its group; the
# platform must wait longer than both before it kills.
DRAIN_DEADLINE_S = 10
LEAVE_GROUP_MARGIN_S = 5
HEALTHCHECK_SCRIPT = "viewpipe-healthcheck"


@dataclass
class Binary:
    name: str
    path: Path
    help_subcommands: tuple[str, ...]  # their --help lists the binary's settings
    default_subcommand: str
    listener: dict[str, str]  # subcommand -> its address setting
    settings: set[str] = field(default_factory=set)
    defaults: dict[str, str] = field(default_factory=dict)
    subcommands: set[str] = field(default_factory=set)


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def section(self, title: str) -> None:
        print(f"\n== {title}")

    def ok(self, msg: str) -> None:
        self.passed += 1
        print(f"  ok    {msg}")

    def fail(self, msg: str) -> None:
        self.failed.append(msg)
        print(f"  FAIL  {msg}")

    def note(self, msg: str) -> None:
        print(f"  note  {msg}")

    def check(self, cond: bool, ok_msg: str, fail_msg: str) -> bool:
        (self.ok if cond else self.fail)(ok_msg if cond else fail_msg)
        return cond


R = Report()


# ---------------------------------------------------------------- the binaries


def run_help(binary: Path, *args: str) -> str:
    try:
        out = subprocess.run(
            [str(binary), *args, "--help"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        sys.exit(f"settings.py: cannot run `{binary} {' '.join(args)} --help`: {e}")
    return out.stdout


def load_binaries() -> dict[str, Binary]:
    bins = {
        "ingest": Binary("ingest", Path(os.environ.get("INGEST_BIN", ROOT / "target/debug/ingest")),
                         ("serve", "publish"), "serve", {"serve": "INGEST_ADDR"}),
        "aggregator": Binary("aggregator",
                             Path(os.environ.get("AGGREGATOR_BIN", ROOT / "target/debug/aggregator")),
                             ("run", "migrate"), "run", {"run": "AGGREGATOR_ADDR"}),
    }
    R.section("settings the binaries know (parsed from --help)")
    for b in bins.values():
        top = run_help(b.path)
        in_commands = False
        for line in top.splitlines():
            if line.strip() == "Commands:":
                in_commands = True
                continue
            if in_commands:
                m = re.match(r"^  (\S+)", line)
                if not m:
                    break
                b.subcommands.add(m.group(1))
        for sub in b.help_subcommands:
            text = run_help(b.path, sub)
            for m in re.finditer(r"\[env: ([A-Z0-9_]+)(?:=([^\]]*))?\](?:\s*\[default: ([^\]]*)\])?", text):
                b.settings.add(m.group(1))
                if m.group(3) is not None:
                    b.defaults.setdefault(m.group(1), m.group(3))
        subs = ", ".join(f"{b.name} {s} --help" for s in b.help_subcommands)
        if not b.settings:
            R.fail(f"{b.name}: no [env: ...] found in {subs}")
        else:
            R.ok(f"{b.name} ({b.path}): {len(b.settings)} settings from {subs}: {' '.join(sorted(b.settings))}")
        for sub, var in b.listener.items():
            if var not in b.settings:
                R.fail(f"{b.name} {sub}: its address setting {var} is not in --help any more")
    print(f"  allowed non-settings: {', '.join(f'{k} ({v})' for k, v in NON_SETTINGS.items())}")
    return bins


def port_of(addr: str | None) -> int | None:
    if not addr:
        return None
    m = re.search(r":(\d+)$", addr.strip())
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- the image


@dataclass
class Image:
    env: dict[str, str]
    expose: set[int]
    cmd: list[str]
    entrypoint: list[str]
    healthcheck: str


def parse_dockerfile() -> Image:
    lines: list[str] = []
    cur = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not cur:
            continue
        if raw.rstrip().endswith("\\"):
            cur += raw.rstrip()[:-1] + " "
            continue
        cur += raw
        if cur.strip():
            lines.append(cur.strip())
        cur = ""
    img = Image({}, set(), [], [], "")
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        rest = rest.strip()
        if word == "FROM":  # only the final stage is the image
            img = Image({}, set(), [], [], "")
        elif word == "ENV":
            toks = shlex.split(rest)
            if toks and "=" not in toks[0]:
                img.env[toks[0]] = " ".join(toks[1:])
            else:
                for t in toks:
                    k, _, v = t.partition("=")
                    img.env[k] = v
        elif word == "EXPOSE":
            img.expose |= {int(p.split("/")[0]) for p in rest.split()}
        elif word in ("CMD", "ENTRYPOINT"):
            val = yaml.safe_load(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
            setattr(img, word.lower(), val)
        elif word == "HEALTHCHECK":
            img.healthcheck = rest
    return img


def check_image(img: Image, bins: dict[str, Binary]) -> None:
    R.section(f"image ({DOCKERFILE.relative_to(ROOT)})")
    known = set().union(*(b.settings for b in bins.values()))
    for k in sorted(img.env):
        R.check(k in known or k in NON_SETTINGS, f"ENV {k} is a setting",
                f"ENV {k} is not a setting of ingest or aggregator")
    addr_ports = {}
    for b in bins.values():
        for var in b.listener.values():
            p = port_of(img.env.get(var) or b.defaults.get(var))
            addr_ports[var] = p
    R.check(img.expose == set(addr_ports.values()),
            f"EXPOSE {sorted(img.expose)} = ports of " + ", ".join(f"{k} ({v})" for k, v in addr_ports.items()),
            f"EXPOSE {sorted(img.expose)} but the listeners are " + ", ".join(f"{k}={v}" for k, v in addr_ports.items()))
    argv = img.entrypoint + img.cmd
    describe_argv("image default command", argv, bins, must_be_viewpipe=True)
    hc = img.healthcheck
    if HEALTHCHECK_SCRIPT in hc:
        R.ok(f"HEALTHCHECK runs {HEALTHCHECK_SCRIPT}, which probes the port of the running binary's own address setting")
    elif hc:
        ports = {int(p) for p in re.findall(r":(\d+)", hc)}
        R.check(bool(ports) and ports <= set(addr_ports.values()), f"HEALTHCHECK probes {sorted(ports)}",
                f"HEALTHCHECK probes {sorted(ports) or 'no port'}, listeners are {sorted(addr_ports.values())}")
    else:
        R.fail("the image has no HEALTHCHECK")
    for path in re.findall(r"(/[a-z]+z|/metrics)\b", hc):
        R.check(path in PROBE_PATHS, f"HEALTHCHECK path {path}", f"HEALTHCHECK path {path} is not served")


def describe_argv(where: str, argv: list[str], bins: dict[str, Binary], must_be_viewpipe: bool = False):
    """Returns (binary, subcommand, address setting or None) of a command line."""
    if not argv:
        R.fail(f"{where}: no command")
        return None
    name = Path(argv[0]).name
    b = bins.get(name)
    if b is None:
        if must_be_viewpipe:
            R.fail(f"{where}: runs {argv[0]!r}, not ingest or aggregator")
        return None
    rest = [a for a in argv[1:] if not a.startswith("-")]
    sub = rest[0] if rest else b.default_subcommand
    if not R.check(sub in b.subcommands, f"{where}: runs `{name} {sub}`",
                   f"{where}: `{name} {sub}`: {sub!r} is not a subcommand of {name} ({', '.join(sorted(b.subcommands))})"):
        return None
    return b, sub, b.listener.get(sub)


def check_env_names(where: str, b: Binary, names: dict[str, str]) -> None:
    """names: env var -> where it comes from."""
    bad = sorted(n for n in names if n not in b.settings and n not in NON_SETTINGS)
    for n in bad:
        R.fail(f"{where}: env {n} (from {names[n]}) is not a setting of {b.name}")
    if not bad:
        extra = sorted(n for n in names if n in NON_SETTINGS)
        R.ok(f"{where}: all {len(names)} env vars are {b.name} settings"
             + (f" (plus {', '.join(extra)})" if extra else ""))


def duration_s(text: str | int | float | None, default: float) -> float:
    if text is None:
        return default
    if isinstance(text, (int, float)):
        return float(text)
    total, units = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text):
        total += float(num) * units[unit]
    return total


# ---------------------------------------------------------------- compose


def compose_config() -> dict | None:
    env = dict(os.environ)
    env.setdefault("ADMIN_TOKEN", "settings-check-placeholder")
    try:
        out = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "config"],
                             capture_output=True, text=True, env=env, timeout=60)
    except OSError as e:
        R.fail(f"cannot run docker-compose: {e}")
        return None
    if out.returncode != 0:
        R.fail(f"docker-compose config failed: {out.stderr.strip()}")
        return None
    return yaml.safe_load(out.stdout)


def compose_container_ports(svc: dict) -> list[int]:
    ports = []
    for p in svc.get("ports", []) or []:
        if isinstance(p, dict):
            ports.append(int(p["target"]))
        else:
            ports.append(int(str(p).split("/")[0].rsplit(":", 1)[-1]))
    for p in svc.get("expose", []) or []:
        ports.append(int(str(p).split("/")[0]))
    return ports


def check_compose(img: Image, bins: dict[str, Binary]) -> dict[str, int]:
    """Returns the listener port of each viewpipe compose service that has one."""
    R.section(f"compose ({COMPOSE_FILE.relative_to(ROOT)}, as `docker-compose config` resolves it)")
    listeners: dict[str, int] = {}
    cfg = compose_config()
    if cfg is None:
        return listeners
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name, svc in sorted(cfg.get("services", {}).items()):
        build = svc.get("build") or {}
        is_ours = str(svc.get("image", "")).split("/")[-1].startswith("viewpipe") or \
            str(build.get("dockerfile", "")).endswith("deploy/docker/Dockerfile")
        if not is_ours:
            continue
        where = f"compose {name}"
        cmd = svc.get("command")
        cmd = shlex.split(cmd) if isinstance(cmd, str) else cmd
        ep = svc.get("entrypoint")
        ep = shlex.split(ep) if isinstance(ep, str) else ep
        argv = (ep or img.entrypoint) + (cmd if cmd is not None else ([] if ep else img.cmd))
        found = describe_argv(where, argv, bins, must_be_viewpipe=True)
        if not found:
            continue
        b, sub, addr_var = found
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
        check_env_names(where, b, {k: "environment" for k in env})
        raw_env = (raw.get("services", {}).get(name) or {}).get("environment") or {}
        for s in sorted(SECRET_SETTINGS & set(env)):
            R.check("${" in str(raw_env.get(s, "")), f"{where}: {s} comes from a variable (.env or the shell)",
                    f"{where}: {s} is written in the compose file; take it from a variable")
        ports = compose_container_ports(svc)
        hc = svc.get("healthcheck") or {}
        if addr_var is None:
            R.check(not ports, f"{where}: `{b.name} {sub}` has no listener and publishes no port",
                    f"{where}: `{b.name} {sub}` has no listener but publishes {ports}")
            continue
        addr = env.get(addr_var, img.env.get(addr_var, b.defaults.get(addr_var)))
        port = port_of(addr)
        if not R.check(port is not None, f"{where}: listens on {addr_var}={addr}",
                       f"{where}: cannot tell its port: {addr_var}={addr!r}"):
            continue
        listeners[name] = port
        for p in ports:
            R.check(p == port, f"{where}: container port {p} = {addr_var} port",
                    f"{where}: container port {p} but {addr_var} is {addr}")
        if hc.get("disable"):
            R.fail(f"{where}: healthcheck disabled on a service with a listener")
        elif hc.get("test"):
            test = hc["test"]
            text = " ".join(test) if isinstance(test, list) else str(test)
            if HEALTHCHECK_SCRIPT in text:
                R.ok(f"{where}: healthcheck {HEALTHCHECK_SCRIPT} probes the port of {addr_var}")
            else:
                hports = [int(p) for p in re.findall(r":(\d+)", text)]
                R.check(bool(hports) and all(p == port for p in hports),
                        f"{where}: healthcheck probes port {port}",
                        f"{where}: healthcheck probes {hports or 'no port'} but {addr_var} is {addr}")
            for path in re.findall(r"(/[a-z]+z|/metrics)\b", text):
                R.check(path in PROBE_PATHS, f"{where}: healthcheck path {path}",
                        f"{where}: healthcheck path {path} is not served")
        else:
            R.ok(f"{where}: image healthcheck, which probes the port of {addr_var} ({port})")
        if b.name == "aggregator":
            grace = duration_s(svc.get("stop_grace_period"), 10)
            R.check(grace >= DRAIN_DEADLINE_S + LEAVE_GROUP_MARGIN_S,
                    f"{where}: stop_grace_period {grace:g} s > {DRAIN_DEADLINE_S} s drain deadline + leaving the group",
                    f"{where}: stop_grace_period {grace:g} s leaves no time past the {DRAIN_DEADLINE_S} s drain "
                    f"deadline to leave the group (want >= {DRAIN_DEADLINE_S + LEAVE_GROUP_MARGIN_S} s)")
    return listeners


def check_prometheus(listeners: dict[str, int]) -> None:
    R.section(f"Prometheus targets ({PROMETHEUS_FILE.relative_to(ROOT)})")
    if not PROMETHEUS_FILE.exists():
        R.note("not there (yet): skipped")
        return
    try:
        cfg = yaml.safe_load(PROMETHEUS_FILE.read_text()) or {}
    except yaml.YAMLError as e:
        R.fail(f"not valid YAML: {e}")
        return
    scraped = set()
    for job in cfg.get("scrape_configs", []) or []:
        jname = job.get("job_name", "?")
        path = job.get("metrics_path", METRICS_PATH)
        for sc in job.get("static_configs", []) or []:
            for target in sc.get("targets", []) or []:
                host, _, p = str(target).rpartition(":")
                if host not in listeners:
                    continue
                scraped.add(host)
                R.check(p.isdigit() and int(p) == listeners[host],
                        f"job {jname}: {target} is {host}'s listener",
                        f"job {jname}: {target} but {host} listens on {listeners[host]}")
                R.check(path == METRICS_PATH, f"job {jname}: metrics_path {path}",
                        f"job {jname}: metrics_path {path}, the services serve {METRICS_PATH}")
        for key in job:
            if key.endswith("_sd_configs") and key != "static_configs":
                R.note(f"job {jname}: {key} not checked here (the pods' annotations are, below)")
    for name in sorted(set(listeners) - scraped):
        R.note(f"compose service {name} is not a static target of any job")


# ---------------------------------------------------------------- kubernetes


def k8s_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S_DIR.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc:
                docs.append((path, doc))
    return docs


def pod_templates(doc: dict) -> dict | None:
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return spec.get("template")
    if kind == "CronJob":
        return ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
    if kind == "Pod":
        return doc
    return None


def matches(selector: dict, labels: dict) -> bool:
    ml = (selector or {}).get("matchLabels", selector if "matchExpressions" not in (selector or {}) else {})
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


def check_kustomizations(docs: list[tuple[Path, dict]]) -> None:
    R.section("kustomizations")
    for path, doc in docs:
        if doc.get("kind") != "Kustomization":
            continue
        rel = path.relative_to(ROOT)
        listed = set(doc.get("resources", []) or [])
        missing = sorted(r for r in listed if not (path.parent / r).exists())
        for res in missing:
            R.fail(f"{rel}: lists {res}, which is not there")
        beside = sorted(f.name for f in path.parent.glob("*.y*ml")
                        if f.name not in ("kustomization.yaml", "kustomization.yml") and ".example." not in f.name)
        unlisted = [f for f in beside if f not in listed]
        for f in unlisted:
            R.fail(f"{rel}: does not list {f}, which is beside it")
        if not missing and not unlisted:
            R.ok(f"{rel}: lists all {len(beside)} manifests beside it, and each exists")
        ex = sorted(f.name for f in path.parent.glob("*.example.y*ml"))
        if ex:
            R.note(f"{rel}: leaves out {', '.join(ex)} on purpose (examples to replace, never applied as they are)")


def check_k8s(img: Image, bins: dict[str, Binary]) -> None:
    docs = k8s_docs()
    objs = [(p, d) for p, d in docs if d.get("kind") != "Kustomization"]
    cms = {d["metadata"]["name"]: d.get("data") or {} for _, d in objs if d.get("kind") == "ConfigMap"}
    secrets = {d["metadata"]["name"]: {**(d.get("data") or {}), **(d.get("stringData") or {})}
               for _, d in objs if d.get("kind") == "Secret"}

    R.section(f"kubernetes ({K8S_DIR.relative_to(ROOT)})")
    # (kind/name, pod labels, listener ports by container port name and number)
    workloads: list[dict] = []
    for path, doc in objs:
        tpl = pod_templates(doc)
        if tpl is None:
            continue
        rel = path.relative_to(ROOT)
        wname = f"{doc['kind']}/{doc['metadata']['name']}"
        pod = tpl.get("spec") or {}
        labels = (tpl.get("metadata") or {}).get("labels") or {}
        annotations = (tpl.get("metadata") or {}).get("annotations") or {}
        info = {"name": wname, "kind": doc["kind"], "labels": labels, "named": {}, "listeners": set(), "file": rel}
        workloads.append(info)
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            image = str(c.get("image", ""))
            if not image.split("/")[-1].startswith("viewpipe"):
                continue
            where = f"{rel} {wname} container {c['name']}"
            if "command" in c:
                argv = list(c["command"]) + list(c.get("args") or [])
            else:
                argv = img.entrypoint + (list(c["args"]) if "args" in c else img.cmd)
            found = describe_argv(where, argv, bins, must_be_viewpipe=True)
            if not found:
                continue
            b, sub, addr_var = found
            names: dict[str, str] = {}
            values: dict[str, str | None] = {k: v for k, v in img.env.items()}
            for ef in c.get("envFrom") or []:
                prefix = ef.get("prefix", "")
                if "configMapRef" in ef:
                    ref = ef["configMapRef"]["name"]
                    if ref not in cms:
                        if not ef["configMapRef"].get("optional"):
                            R.fail(f"{where}: envFrom ConfigMap {ref} is not in the manifests")
                        continue
                    for k, v in cms[ref].items():
                        names[prefix + k] = f"ConfigMap {ref}"
                        values[prefix + k] = str(v)
                        if k in K8S_SECRET_SETTINGS:
                            R.fail(f"{where}: secret {k} is in ConfigMap {ref}; put it in a Secret")
                if "secretRef" in ef:
                    ref = ef["secretRef"]["name"]
                    if ref not in secrets:
                        R.fail(f"{where}: envFrom Secret {ref} is not in the manifests (not even as an example)")
                        continue
                    for k in secrets[ref]:
                        names[prefix + k] = f"Secret {ref}"
                        values[prefix + k] = None
            for e in c.get("env") or []:
                n = e["name"]
                vf = e.get("valueFrom") or {}
                if "value" in e or not vf:
                    names[n] = "env value"
                    values[n] = str(e.get("value", ""))
                    if n in K8S_SECRET_SETTINGS:
                        R.fail(f"{where}: {n} is a plain value; take it from a Secret (secretKeyRef)")
                elif "secretKeyRef" in vf:
                    ref, key = vf["secretKeyRef"]["name"], vf["secretKeyRef"]["key"]
                    names[n] = f"Secret {ref} key {key}"
                    values[n] = None
                    R.check(ref in secrets and key in secrets[ref], f"{where}: {n} from Secret {ref} key {key}",
                            f"{where}: {n} from Secret {ref} key {key}, which no manifest defines")
                elif "configMapKeyRef" in vf:
                    ref, key = vf["configMapKeyRef"]["name"], vf["configMapKeyRef"]["key"]
                    names[n] = f"ConfigMap {ref} key {key}"
                    values[n] = (cms.get(ref) or {}).get(key)
                    R.check(ref in cms and key in cms[ref], f"{where}: {n} from ConfigMap {ref} key {key}",
                            f"{where}: {n} from ConfigMap {ref} key {key}, which no manifest defines")
                else:
                    names[n] = "valueFrom"
                    values[n] = None
            check_env_names(where, b, names)

            ports = c.get("ports") or []
            probes = {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c}
            if addr_var is None:
                R.check(not ports and not probes, f"{where}: `{b.name} {sub}` has no listener, no ports or probes",
                        f"{where}: `{b.name} {sub}` has no listener but declares ports or probes")
                continue
            addr = values.get(addr_var) or b.defaults.get(addr_var)
            port = port_of(addr)
            if not R.check(port is not None, f"{where}: listens on {addr_var}={addr}",
                           f"{where}: cannot tell its port: {addr_var}={addr!r}"):
                continue
            info["listeners"].add(port)
            named = {}
            for p in ports:
                named[p.get("name")] = p["containerPort"]
                R.check(p["containerPort"] == port, f"{where}: containerPort {p['containerPort']} = {addr_var} port",
                        f"{where}: containerPort {p['containerPort']} but {addr_var} is {addr}")
            info["named"].update({k: v for k, v in named.items() if k})
            for want in ("readinessProbe", "livenessProbe"):
                if want not in probes:
                    R.fail(f"{where}: no {want}")
            handlers = dict(probes)
            pre = ((c.get("lifecycle") or {}).get("preStop") or {})
            if "httpGet" in pre or "tcpSocket" in pre:
                handlers["preStop"] = pre
            for pname, probe in handlers.items():
                for kind in ("httpGet", "tcpSocket", "grpc"):
                    if kind not in probe:
                        continue
                    pp = probe[kind].get("port")
                    resolved = named.get(pp) if isinstance(pp, str) else pp
                    R.check(resolved == port, f"{where}: {pname} {kind} port {pp} -> {resolved}",
                            f"{where}: {pname} {kind} port {pp!r} -> {resolved}, but {addr_var} is {addr}")
                    if kind == "httpGet":
                        path = probe[kind].get("path", "/")
                        R.check(path in PROBE_PATHS, f"{where}: {pname} path {path}",
                                f"{where}: {pname} path {path} is not one of {sorted(PROBE_PATHS)}")
            if b.name == "aggregator" and doc["kind"] != "Job":
                grace = pod.get("terminationGracePeriodSeconds", 30)
                R.check(grace >= DRAIN_DEADLINE_S + LEAVE_GROUP_MARGIN_S,
                        f"{where}: terminationGracePeriodSeconds {grace} > {DRAIN_DEADLINE_S} s drain deadline + leaving the group",
                        f"{where}: terminationGracePeriodSeconds {grace} leaves no time past the "
                        f"{DRAIN_DEADLINE_S} s drain deadline (want >= {DRAIN_DEADLINE_S + LEAVE_GROUP_MARGIN_S})")
        # scrape annotations
        if info["listeners"]:
            where = f"{rel} {wname}"
            if "prometheus.io/port" in annotations or "prometheus.io/scrape" in annotations:
                ap = str(annotations.get("prometheus.io/port", ""))
                R.check(ap.isdigit() and int(ap) in info["listeners"],
                        f"{where}: annotation prometheus.io/port {ap} is its listener",
                        f"{where}: annotation prometheus.io/port {ap!r} but it listens on {sorted(info['listeners'])}")
                apath = annotations.get("prometheus.io/path", METRICS_PATH)
                R.check(apath == METRICS_PATH, f"{where}: annotation prometheus.io/path {apath}",
                        f"{where}: annotation prometheus.io/path {apath}, the services serve {METRICS_PATH}")
            else:
                R.note(f"{where}: no prometheus.io annotations")

    # Services -> pods
    services = {}
    for path, doc in objs:
        if doc.get("kind") != "Service":
            continue
        rel = path.relative_to(ROOT)
        sname = doc["metadata"]["name"]
        where = f"{rel} Service/{sname}"
        spec = doc.get("spec") or {}
        sel = spec.get("selector") or {}
        targets = [w for w in workloads if sel and all(w["labels"].get(k) == v for k, v in sel.items())]
        services[sname] = {"labels": doc["metadata"].get("labels") or {}, "ports": {}, "ns": doc["metadata"].get("namespace")}
        if not R.check(bool(targets), f"{where}: selects {', '.join(w['name'] for w in targets)}",
                       f"{where}: its selector {sel} matches no pod template"):
            continue
        for sp in spec.get("ports") or []:
            tp = sp.get("targetPort", sp["port"])
            services[sname]["ports"][sp.get("name")] = sp
            for w in targets:
                if not w["listeners"]:
                    continue
                resolved = w["named"].get(tp) if isinstance(tp, str) else tp
                R.check(resolved in w["listeners"], f"{where}: port {sp['port']} -> targetPort {tp} -> {resolved} on {w['name']}",
                        f"{where}: targetPort {tp!r} -> {resolved}, but {w['name']} listens on {sorted(w['listeners'])}")

    # Other references
    names_of = {(d.get("kind"), d["metadata"]["name"]) for _, d in objs}
    for path, doc in objs:
        rel = path.relative_to(ROOT)
        kind, name = doc.get("kind"), doc["metadata"]["name"]
        spec = doc.get("spec") or {}
        if kind == "HorizontalPodAutoscaler":
            ref = spec.get("scaleTargetRef") or {}
            R.check((ref.get("kind"), ref.get("name")) in names_of, f"{rel}: scales {ref.get('kind')}/{ref.get('name')}",
                    f"{rel}: scales {ref.get('kind')}/{ref.get('name')}, which is not in the manifests")
        elif kind == "PodDisruptionBudget":
            hit = [w["name"] for w in workloads if matches(spec.get("selector"), w["labels"])]
            R.check(bool(hit), f"{rel}: covers {', '.join(hit)}", f"{rel}: its selector matches no pod template")
        elif kind == "ServiceMonitor":
            check_servicemonitor(rel, doc, services)


def check_servicemonitor(rel: Path, doc: dict, services: dict) -> None:
    where = f"{rel} ServiceMonitor/{doc['metadata'].get('name')}"
    R.note(f"{where}: no Kubernetes schema for the CRD; checked here for the fields it needs")
    spec = doc.get("spec") or {}
    R.check(doc.get("apiVersion") == "monitoring.coreos.com/v1", f"{where}: apiVersion monitoring.coreos.com/v1",
            f"{where}: apiVersion {doc.get('apiVersion')!r}, want monitoring.coreos.com/v1")
    endpoints = spec.get("endpoints") or []
    sel = spec.get("selector") or {}
    chosen = {n: s for n, s in services.items() if matches(sel, s["labels"])}
    R.check(bool(chosen), f"{where}: selects Services {', '.join(sorted(chosen))}",
            f"{where}: selector {sel} matches no Service")
    ns = ((spec.get("namespaceSelector") or {}).get("matchNames")) or [doc["metadata"].get("namespace")]
    for n, s in chosen.items():
        R.check(s["ns"] in ns, f"{where}: namespace of Service {n} selected",
                f"{where}: Service {n} is in {s['ns']}, not in {ns}")
    R.check(bool(endpoints), f"{where}: {len(endpoints)} endpoints", f"{where}: no endpoints")
    for ep in endpoints:
        port = ep.get("port")
        if not R.check(isinstance(port, str) and bool(port), f"{where}: endpoint port {port}",
                       f"{where}: endpoint needs `port`, a Service port name (got {port!r})"):
            continue
        have = [n for n, s in chosen.items() if port in s["ports"]]
        R.check(bool(have), f"{where}: port {port} is on Service {', '.join(have)} (its targetPort checked above)",
                f"{where}: port {port} is a port name of none of {sorted(chosen)}")
        path = ep.get("path", METRICS_PATH)
        R.check(path == METRICS_PATH, f"{where}: endpoint path {path}",
                f"{where}: endpoint path {path}, the services serve {METRICS_PATH}")


def main() -> int:
    bins = load_binaries()
    img = parse_dockerfile()
    check_image(img, bins)
    listeners = check_compose(img, bins)
    check_prometheus(listeners)
    check_k8s(img, bins)
    check_kustomizations(k8s_docs())
    print(f"\nsettings and ports: {R.passed} passed, {len(R.failed)} failed")
    for f in R.failed:
        print(f"  - {f}")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
