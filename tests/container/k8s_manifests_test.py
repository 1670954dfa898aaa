#!/usr/bin/python3
"""Offline checks of deploy/k8s/ (no cluster, no OpenAPI schema packaged).

Every manifest parses; kinds have the apiVersion Kubernetes serves them
under; and the fields the deployment relies on agree with each other and
with the image (deploy/Dockerfile) and forqd (server/forqd_main.cc):
selectors match pod labels, Services target named container ports, probes
hit /healthz and /readyz on the HTTP port, the pod runs as the image's
non-root uid with a read-only root filesystem and no capabilities, every
writable path is a volume, the grace period outlasts the drain, workers
follow the CPU limit, and every FORQ_* variable is a real forqd flag.

  k8s_manifests_test.py REPO_ROOT
"""
import glob
import os
import re
import sys

import yaml

API_VERSIONS = {
    "Service": "v1",
    "StatefulSet": "apps/v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "ConfigMap": "v1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}
failures = []


def expect(cond, msg):
    if not cond:
        failures.append(msg)
    return cond


def seconds(duration):
    m = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    if not m:
        raise ValueError(f"unsupported duration {duration!r}")
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * (60 if unit == "m" else 1)


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def main(root):
    k8s = os.path.join(root, "deploy", "k8s")
    docs = {}
    for path in sorted(glob.glob(os.path.join(k8s, "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                kind = doc.get("kind")
                name = os.path.basename(path)
                expect(kind in API_VERSIONS, f"{name}: unknown kind {kind}")
                expect(doc.get("apiVersion") == API_VERSIONS.get(kind),
                       f"{name}: {kind} apiVersion {doc.get('apiVersion')}")
                if kind != "Kustomization":
                    expect(doc.get("metadata", {}).get("name"),
                           f"{name}: {kind} without metadata.name")
                docs.setdefault(kind, []).append((name, doc))

    kust = docs["Kustomization"][0][1]
    listed = set(kust["resources"])
    on_disk = {os.path.basename(p) for p in glob.glob(os.path.join(k8s, "*.yaml"))}
    expect(listed == on_disk - {"kustomization.yaml"},
           f"kustomization resources {sorted(listed)} != files {sorted(on_disk)}")

    # forqd's flags (FORQ_<FLAG>) and the image's user.
    with open(os.path.join(root, "server", "forqd_main.cc")) as f:
        flags = set(re.findall(r"ABSL_FLAG\([^,]+,\s*(\w+)", f.read()))
    with open(os.path.join(root, "deploy", "Dockerfile")) as f:
        dockerfile = f.read()
    image_uid = int(re.search(r"^USER (\d+)", dockerfile, re.M).group(1))

    (ss_file, ss), = docs["StatefulSet"]
    spec = ss["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    expect(selects(spec["selector"]["matchLabels"], pod_labels),
           "StatefulSet selector does not match its pod labels")
    (ctr,) = [c for c in pod["containers"] if c["name"] == "forqd"]
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    expect(ports == {"grpc": 50051, "http": 8080},
           f"container ports {ports} != the image's EXPOSE 50051 8080")

    env = {e["name"]: e for e in ctr["env"]}
    for name in env:
        flag = name[len("FORQ_"):].lower()
        expect(name.startswith("FORQ_") and flag in flags,
               f"env {name} is not a forqd flag")
    expect(env["FORQ_GRPC_ADDR"].get("value", "").startswith("0.0.0.0:"),
           "forqd must listen on all pod interfaces (gRPC)")
    expect(env["FORQ_HTTP_ADDR"].get("value") == f"0.0.0.0:{ports['http']}",
           "FORQ_HTTP_ADDR must match the http container port")
    ref = env["FORQ_WORKERS"].get("valueFrom", {}).get("resourceFieldRef", {})
    expect(ref.get("resource") == "limits.cpu" and ref.get("containerName") == "forqd",
           "FORQ_WORKERS must follow limits.cpu")
    res = ctr["resources"]
    expect("cpu" in res.get("limits", {}) and "memory" in res.get("limits", {}),
           "cpu and memory limits must be set")
    expect(res["requests"]["cpu"] == res["limits"]["cpu"],
           "cpu request == limit (workers are sized to it)")

    drain = seconds(env["FORQ_DRAIN_GRACE"]["value"])
    expect(pod["terminationGracePeriodSeconds"] > drain + 5,
           f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']}"
           f" must exceed the drain grace {drain}s by a margin")

    for probe, path in (("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz"),
                        ("startupProbe", "/healthz")):
        get = ctr.get(probe, {}).get("httpGet", {})
        expect(get.get("path") == path and get.get("port") == "http",
               f"{probe} must GET {path} on the http port, got {get}")

    psc, csc = pod["securityContext"], ctr["securityContext"]
    expect(psc.get("runAsNonRoot") is True, "runAsNonRoot")
    expect(psc.get("runAsUser") == image_uid,
           f"runAsUser {psc.get('runAsUser')} != image USER {image_uid}")
    expect(psc.get("fsGroup") == image_uid, "fsGroup must own /data")
    expect(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    expect(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation")
    expect(csc.get("capabilities", {}).get("drop") == ["ALL"], "drop ALL capabilities")

    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    expect(mounts.get(env["FORQ_DATA_DIR"]["value"]) == "data",
           "FORQ_DATA_DIR must be the data volume")
    expect("/tmp" in mounts, "read-only root: /tmp must be a volume")
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for path, vol in mounts.items():
        expect(vol in claims or vol in volumes, f"mount {path}: no volume {vol}")

    # Listening on 0.0.0.0 needs tokens: the token file is a key of a
    # mounted Secret.
    tokens = env.get("FORQ_AUTH_TOKENS_FILE", {}).get("value", "")
    tdir, tkey = os.path.dirname(tokens), os.path.basename(tokens)
    tvol = volumes.get(mounts.get(tdir), {})
    expect(tokens and "secret" in tvol,
           f"FORQ_AUTH_TOKENS_FILE {tokens!r} must be in a mounted Secret")
    items = tvol.get("secret", {}).get("items")
    expect(items is None or any(i["path"] == tkey for i in items),
           f"the Secret's items do not include {tkey}")
    expect(not tdir.startswith(("/run/secrets/kubernetes.io", "/var/run")) and
           tdir != "/run/secrets",
           f"token mount {tdir} would hide the service-account mount")

    ann = spec["template"]["metadata"].get("annotations", {})
    expect(ann.get("prometheus.io/scrape") == "true" and
           ann.get("prometheus.io/port") == str(ports["http"]) and
           ann.get("prometheus.io/path") == "/metrics",
           f"prometheus scrape annotations {ann}")

    services = {d["metadata"]["name"]: d for _, d in docs["Service"]}
    expect(spec["serviceName"] in services and
           services[spec["serviceName"]]["spec"].get("clusterIP") == "None",
           "StatefulSet serviceName must be a headless Service")
    for name, svc in services.items():
        expect(selects(svc["spec"]["selector"], pod_labels),
               f"Service {name} selects no forqd pod")
        for p in svc["spec"]["ports"]:
            expect(p["targetPort"] in ports and ports[p["targetPort"]] == p["port"],
                   f"Service {name} port {p['name']} targets {p['targetPort']}")

    for name, pdb in docs["PodDisruptionBudget"]:
        expect(selects(pdb["spec"]["selector"]["matchLabels"], pod_labels),
               f"{name}: PodDisruptionBudget selects no forqd pod")
        expect(("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"]),
               f"{name}: exactly one of maxUnavailable/minAvailable")

    n = sum(len(v) for v in docs.values())
    if failures:
        for f in failures:
            print("FAIL:", f)
        sys.exit(1)
    print(f"OK: {n} manifests in deploy/k8s parse and agree "
          f"({', '.join(sorted(docs))})")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
