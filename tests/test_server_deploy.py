"""docker-compose.yml, deploy/envoy.yaml and the Dockerfile hang together (no Docker engine needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services(compose: dict) -> None:
    services = compose["services"]
    assert {"asr", "asr-cpu", "asr-replica", "envoy"} <= set(services)
    gpu = services["asr"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "./models:/models:ro" in gpu["volumes"] and "50051:50051" in gpu["ports"]
    assert gpu["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "server.probe"]
    assert gpu["environment"]["ASR_MODELS_DIR"] == "/models"
    cpu = services["asr-cpu"]
    assert cpu["profiles"] == ["cpu"] and cpu["environment"]["ASR_DEVICE"] == "cpu"
    assert "reservations" not in cpu["deploy"]["resources"], "the CPU variant must not reserve a GPU"
    replica = services["asr-replica"]
    assert replica["profiles"] == ["scale"] and replica["deploy"]["replicas"] >= 2
    envoy = services["envoy"]
    assert envoy["depends_on"]["asr-replica"]["condition"] == "service_healthy"
    mounted = envoy["volumes"][0].split(":")[0]
    assert (ROOT / mounted).is_file()
    # every server variant stops gracefully: compose waits longer than the server's own grace period
    for name in ("asr", "asr-cpu", "asr-replica"):
        s = services[name]
        assert s["stop_signal"] == "SIGTERM"
        assert int(s["stop_grace_period"].rstrip("s")) > int(s["environment"]["ASR_GRACE_S"])


def test_envoy_balances_grpc_over_http2_with_health_checks() -> None:
    envoy = yaml.safe_load((ROOT / "deploy/envoy.yaml").read_text())
    (cluster,) = envoy["static_resources"]["clusters"]
    assert cluster["type"] == "STRICT_DNS" and cluster["lb_policy"] in ("LEAST_REQUEST", "ROUND_ROBIN")
    (opts,) = cluster["typed_extension_protocol_options"].values()
    assert "http2_protocol_options" in opts["explicit_http_config"]
    assert "grpc_health_check" in cluster["health_checks"][0]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    addr = endpoint["address"]["socket_address"]
    assert addr == {"address": "asr-replica", "port_value": 50051}


def test_dockerfile_entrypoint_and_probe() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["asr", "serve"]' in text and "server.probe" in text
    import server.probe  # noqa: F401  (the probe the health checks run exists and imports)


def _compose_command() -> list[str] | None:
    """``docker compose`` (the v2 plugin) or the standalone ``docker-compose``, whichever is installed."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def test_docker_compose_config_when_available() -> None:
    compose = _compose_command()
    if compose is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    for profile in ([], ["--profile", "cpu"], ["--profile", "scale"]):
        done = subprocess.run([*compose, *profile, "config", "-q"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
