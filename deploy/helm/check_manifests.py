"""Checks over the Tally chart's rendered manifests (run by scripts/check-chart).

Usage: check_manifests.py CRD_DIR RENDERED.yaml [RENDERED.yaml ...]

Every document is validated: core kinds strictly against the Kubernetes
schemas kubernetes-validate ships, the KEDA and Prometheus Operator kinds
against the openAPIV3Schema of their CRDs (in CRD_DIR, from the projects'
Go modules), strictly too: an unknown field is an error, where an API server
would drop it silently.

Then what a schema cannot say, for every rendering:
- every long-running container (Deployment, StatefulSet) has readiness,
  liveness and startup probes, CPU and memory requests and limits, runs as
  non-root with a read-only root filesystem; every Job container has limits;
- terminationGracePeriodSeconds >= drain timeout + preStop + 10 s;
- every Deployment and StatefulSet has a PodDisruptionBudget selecting it;
- the reconciler runs 1 replica with strategy Recreate and no autoscaler;
- a KEDA ScaledObject never scales above its topic's partitions;
- the PrometheusRule holds exactly the groups of infra/prometheus/alerts.yml
  and slo.yml (tally-dependencies only when asked for);
- the dashboard ConfigMap holds infra/grafana/dashboards/tally-pipeline.json.
"""

import json
import os
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = os.environ.get("KUBE_VERSION", "1.31.0")
ROOT = Path(__file__).resolve().parents[2]
errors = []


def err(where, msg):
    errors.append(f"{where}: {msg}")


# --- schemas ------------------------------------------------------------------
def strict(schema):
    """A CRD's openAPIV3Schema as a JSON schema rejecting unknown fields."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if schema.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return out
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


def crd_schemas(crd_dir):
    schemas = {}
    for path in sorted(Path(crd_dir).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                body = strict(version["schema"]["openAPIV3Schema"])
                # apiVersion, kind and metadata are the API server's, checked by it.
                body.setdefault("properties", {}).update(
                    {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}})
                schemas[(f"{group}/{version['name']}", kind)] = body
    return schemas


def validate(doc, crds, where):
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in crds:
        for e in jsonschema.Draft7Validator(crds[key]).iter_errors(doc):
            err(where, f"{'/'.join(map(str, e.absolute_path))}: {e.message}")
        return
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        err(where, f"{'/'.join(map(str, e.absolute_path))}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        err(where, e.message)


# --- what schemas cannot say ----------------------------------------------------------
def seconds(text):
    m = re.fullmatch(r"(\d+)s", str(text))
    return int(m.group(1)) if m else None


def env_value(container, name):
    for e in container.get("env", []):
        if e["name"] == name:
            return e.get("value")
    return None


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_workloads(docs, label):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    pdbs = by_kind.get("PodDisruptionBudget", [])
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    if not workloads:
        err(label, "no Deployment or StatefulSet rendered")
    for w in workloads:
        where = f"{label}: {w['kind']} {w['metadata']['name']}"
        pod = w["spec"]["template"]["spec"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        if not any(selects(p["spec"]["selector"]["matchLabels"], labels) for p in pdbs):
            err(where, "no PodDisruptionBudget selects it")
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            err(where, "pod does not set runAsNonRoot")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        for c in pod["containers"]:
            cw = f"{where} container {c['name']}"
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe not in c:
                    err(cw, f"no {probe}")
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in c.get("resources", {}).get(kind, {}):
                        err(cw, f"no {res} in resources.{kind}")
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem"):
                err(cw, "root filesystem is writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                err(cw, "allowPrivilegeEscalation is not false")
            drain = seconds(env_value(c, "TALLY_SHUTDOWN__DRAIN_TIMEOUT"))
            if drain is None:
                err(cw, "no TALLY_SHUTDOWN__DRAIN_TIMEOUT in seconds")
                continue
            pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pre_stop = int(pre[1]) if len(pre) == 2 and pre[0] == "sleep" else 0
            if grace < drain + pre_stop + 10:
                err(cw, f"terminationGracePeriodSeconds {grace} < drain {drain} + preStop {pre_stop} + 10: SIGKILL can win")
    for job in by_kind.get("Job", []):
        for c in job["spec"]["template"]["spec"]["containers"]:
            for res in ("cpu", "memory"):
                if res not in c.get("resources", {}).get("limits", {}):
                    err(f"{label}: Job {job['metadata']['name']}", f"container {c['name']} has no {res} limit")

    reconcilers = [w for w in workloads if w["metadata"]["name"].endswith("-reconciler")]
    if len(reconcilers) != 1:
        err(label, f"{len(reconcilers)} reconciler workloads, want exactly 1")
    for r in reconcilers:
        if r["kind"] != "Deployment" or r["spec"].get("replicas") not in (0, 1):
            err(label, f"reconciler: {r['kind']} with replicas {r['spec'].get('replicas')}, want a Deployment of 0 or 1")
        if r["spec"].get("strategy", {}).get("type") != "Recreate":
            err(label, "reconciler: strategy is not Recreate (two archivers would overlap)")
    for scaler in by_kind.get("HorizontalPodAutoscaler", []) + by_kind.get("ScaledObject", []):
        target = scaler["spec"]["scaleTargetRef"]["name"]
        if target.endswith("-reconciler"):
            err(label, f"{scaler['kind']} {scaler['metadata']['name']} scales the reconciler")
    counters = [w for w in workloads if w["metadata"]["name"].endswith("-counter")]
    if [w["kind"] for w in counters] != ["StatefulSet"]:
        err(label, "the counter is not one StatefulSet (its pod names are its group.instance.ids)")

    partitions = {}
    for w in workloads:
        for c in w["spec"]["template"]["spec"]["containers"]:
            for topic, var in (("tally.views", "TALLY_KAFKA__TOPICS__VIEWS_PARTITIONS"),
                               ("tally.counts", "TALLY_KAFKA__TOPICS__COUNTS_PARTITIONS")):
                if env_value(c, var):
                    partitions[topic] = int(env_value(c, var))
    for so in by_kind.get("ScaledObject", []):
        for trig in so["spec"]["triggers"]:
            topic = trig["metadata"].get("topic")
            if topic not in partitions:
                err(label, f"ScaledObject {so['metadata']['name']}: unknown topic {topic}")
            elif so["spec"]["maxReplicaCount"] > partitions[topic]:
                err(label, f"ScaledObject {so['metadata']['name']}: maxReplicaCount {so['spec']['maxReplicaCount']} "
                           f"> {partitions[topic]} partitions of {topic}")
        if so["spec"].get("cooldownPeriod", 300) < 60:
            err(label, f"ScaledObject {so['metadata']['name']}: cooldownPeriod under 60 s flaps")
    return by_kind


def check_monitoring(by_kind, label, dependencies):
    rules = by_kind.get("PrometheusRule", [])
    alerts = yaml.safe_load((ROOT / "infra/prometheus/alerts.yml").read_text())["groups"]
    slo = yaml.safe_load((ROOT / "infra/prometheus/slo.yml").read_text())["groups"]
    want = [g for g in alerts if dependencies or g["name"] != "tally-dependencies"] + slo
    if len(rules) != 1:
        err(label, f"{len(rules)} PrometheusRules, want 1")
    elif rules[0]["spec"]["groups"] != want:
        got = [g["name"] for g in rules[0]["spec"]["groups"]]
        err(label, f"PrometheusRule groups differ from infra/prometheus/alerts.yml + slo.yml (got {got}, "
                   f"want {[g['name'] for g in want]}, or a rule differs)")
    dashboards = [c for c in by_kind.get("ConfigMap", []) if "tally-pipeline.json" in c.get("data", {})]
    source = json.loads((ROOT / "infra/grafana/dashboards/tally-pipeline.json").read_text())
    if len(dashboards) != 1 or json.loads(dashboards[0]["data"]["tally-pipeline.json"]) != source:
        err(label, "the dashboard ConfigMap does not hold infra/grafana/dashboards/tally-pipeline.json")
    monitors = by_kind.get("ServiceMonitor", [])
    jobs = sorted(r["replacement"] for m in monitors for e in m["spec"]["endpoints"]
                  for r in e.get("relabelings", []) if r.get("targetLabel") == "job")
    want_jobs = ["tally-counter", "tally-ingest", "tally-query", "tally-reconciler", "tally-writer"]
    if jobs != want_jobs:
        err(label, f"ServiceMonitors set job to {jobs}, the alert rules match {want_jobs}")


def main():
    crds = crd_schemas(sys.argv[1])
    for wanted in (("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor"),
                   ("monitoring.coreos.com/v1", "PrometheusRule")):
        if wanted not in crds:
            err("CRDs", f"no schema for {wanted[1]} ({wanted[0]}) in {sys.argv[1]}")
    for rendered in sys.argv[2:]:
        label = Path(rendered).stem
        docs = [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]
        for d in docs:
            validate(d, crds, f"{label}: {d.get('kind')} {d.get('metadata', {}).get('name')}")
        by_kind = check_workloads(docs, label)
        check_monitoring(by_kind, label, dependencies="dependencies" in label)
        kinds = sorted({d["kind"] for d in docs})
        print(f"{label}: {len(docs)} objects ({', '.join(kinds)})")
    for e in errors:
        print("error:", e)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
