"""deploy/ agrees with the server it deploys: limits, heartbeat, port, health endpoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from fer_async.config import Settings
from fer_async.server.connection import HEARTBEAT_S
from fer_async.server.jobs import UPLOAD_CHUNK
from fer_async.server.views import MULTIPART_OVERHEAD

from .procs import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


def _seconds(directive: str, text: str) -> list[int]:
    return [int(value) for value in re.findall(rf"{directive} (\d+)s;", text)]


def test_nginx_limits_match_the_server() -> None:
    conf = (DEPLOY / "nginx" / "fer_async.conf").read_text()
    settings = Settings()
    body_limit = int(re.findall(r"client_max_body_size (\d+);", conf)[0])
    assert body_limit == settings.max_frame_bytes + MULTIPART_OVERHEAD  # nginx refuses what the replica would
    photo_location = conf[conf.index("location = /api/predict") :].split("}", 1)[0]
    assert f"client_max_body_size {settings.max_photo_bytes + MULTIPART_OVERHEAD};" in photo_location
    upload_location = conf[conf.index("location = /api/analyses") :].split("}", 1)[0]
    assert f"client_max_body_size {settings.max_video_bytes + UPLOAD_CHUNK};" in upload_location
    assert "proxy_request_buffering off;" in upload_location
    ws_location = conf[conf.index("location = /ws") :].split("}", 1)[0]
    assert "proxy_set_header Upgrade $http_upgrade;" in ws_location
    assert "proxy_set_header Connection $connection_upgrade;" in ws_location
    assert min(_seconds("proxy_read_timeout", ws_location)) > 2 * HEARTBEAT_S
    video_location = conf[conf.index("location /video/") :].split("}", 1)[0]
    assert "proxy_buffering off;" in video_location


def test_ingress_limits_match_the_server() -> None:
    """Each path's ingress-nginx body limit is the server's default for it, as in the nginx conf."""
    settings = Settings()
    by_path: dict[str, dict[str, Any]] = {}
    for ingress in yaml.safe_load_all((DEPLOY / "k8s" / "ingress.yaml").read_text()):
        assert ingress["kind"] == "Ingress"
        annotations = {
            key.removeprefix("nginx.ingress.kubernetes.io/"): value
            for key, value in ingress["metadata"]["annotations"].items()
        }
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"] == {"name": "fer-async", "port": {"name": "http"}}
                by_path[path["path"]] = annotations
    assert set(by_path) == {"/", "/api/predict", "/api/analyses"}
    assert int(by_path["/"]["proxy-body-size"]) == settings.max_frame_bytes + MULTIPART_OVERHEAD
    assert int(by_path["/api/predict"]["proxy-body-size"]) == settings.max_photo_bytes + MULTIPART_OVERHEAD
    assert int(by_path["/api/analyses"]["proxy-body-size"]) == settings.max_video_bytes + UPLOAD_CHUNK
    assert by_path["/api/analyses"]["proxy-request-buffering"] == "off"
    assert int(by_path["/"]["proxy-read-timeout"]) > 2 * HEARTBEAT_S  # /ws is under /


def test_container_and_kubernetes_probe_the_health_endpoint() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"(?m)^USER 10001$", dockerfile)  # not root
    # /healthz through fer_async.healthcheck: the server's own FER_* port, https with FER_CERT.
    assert 'CMD ["python", "-m", "fer_async.healthcheck"]' in dockerfile.split("HEALTHCHECK", 1)[1].split("\n", 2)[1]
    deployment = (DEPLOY / "k8s" / "deployment.yaml").read_text()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert re.search(rf"{probe}:.*\n\s+httpGet: {{path: /healthz, port: http}}", deployment), probe
    assert "containerPort: 8080" in deployment and '{name: FER_PORT, value: "8080"}' in deployment
    hpa = (DEPLOY / "k8s" / "hpa.yaml").read_text()
    assert "name: cpu" in hpa and "kind: Deployment, name: fer-async" in hpa


def test_kubernetes_pods_share_one_read_write_many_results_volume() -> None:
    """Analysis jobs are answered by every pod only if they all mount the same directory (ReadWriteMany)."""
    k8s = DEPLOY / "k8s"
    claim = (k8s / "results-pvc.yaml").read_text()
    assert "accessModes: [ReadWriteMany]" in claim and "name: fer-async-results" in claim
    assert "- results-pvc.yaml" in (k8s / "kustomization.yaml").read_text()
    deployment = (k8s / "deployment.yaml").read_text()
    (path,) = re.findall(r"\{name: FER_RESULTS_DIR, value: (\S+)\}", deployment)
    assert f"{{name: results, mountPath: {path}}}" in deployment
    assert "persistentVolumeClaim: {claimName: fer-async-results}" in deployment
    assert Settings.from_args([], env={"FER_RESULTS_DIR": path}).results_dir == Path(path)
