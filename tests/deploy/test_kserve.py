"""k8s/kserve/inferenceservice.yaml: no validator for KServe's CRD is installed here, so the fields our
image needs are checked: a v1beta1 InferenceService whose custom predictor runs our image on
KServe's port with real settings, a model directory where the storage initializer puts it, and
probes on the Open Inference Protocol's health routes."""

from __future__ import annotations

from typing import Any

from service.settings import Settings

from .helpers import load_yaml_docs

MANIFEST = "k8s/kserve/inferenceservice.yaml"
SETTING_VARS = {f"PSPNET_{name.upper()}" for name in Settings.model_fields}


def _container() -> tuple[dict[str, Any], dict[str, Any]]:
    (doc,) = load_yaml_docs(MANIFEST)
    (container,) = doc["spec"]["predictor"]["containers"]
    return doc, container


def test_it_is_an_inference_service_with_a_custom_predictor() -> None:
    doc, container = _container()
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    assert doc["metadata"]["name"]
    assert container["name"] == "kserve-container"  # the name KServe looks for
    assert container["image"].startswith("pspnet-serving:")


def test_settings_are_real_and_agree_with_the_port_and_the_model_mount() -> None:
    _, container = _container()
    env = {e["name"]: e["value"] for e in container["env"]}
    assert {k for k in env if k.startswith("PSPNET_")} <= SETTING_VARS
    (port,) = container["ports"]
    assert port["containerPort"] == int(env["PSPNET_PORT"]) == 8080
    # the storage initializer downloads STORAGE_URI into /mnt/models: a repository directory
    assert env["STORAGE_URI"] and env["PSPNET_MODEL"] == "/mnt/models"


def test_probes_use_the_v2_health_routes_on_the_served_port() -> None:
    _, container = _container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == 8080
    assert container["securityContext"]["runAsNonRoot"] is True
