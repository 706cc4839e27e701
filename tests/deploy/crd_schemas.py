"""Our own structural schemas for the custom resources the core Kubernetes schemas lack.

They are written here from the operators' API documentation (Prometheus Operator
monitoring.coreos.com/v1 ServiceMonitor, KEDA keda.sh/v1alpha1 ScaledObject and
TriggerAuthentication), covering the fields
FTP Pooler uses plus their common siblings, and closed (no unknown fields) so a misspelt key fails.
Standard types (ObjectMeta, LabelSelector, HPA behavior) come from the Kubernetes schemas that
kubernetes-validate bundles, referenced as ``_definitions.json`` like its own schemas do.
"""

from __future__ import annotations

from typing import Any

DEFS = "_definitions.json#/$defs/"
OBJECT_META = {"$ref": DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
LABEL_SELECTOR = {"$ref": DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"}
HPA_BEHAVIOR = {"$ref": DEFS + "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior"}
# Prometheus durations: 30s, 1m30s, 500ms ...
DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
    r"(([0-9]+)ms)?)$",
}
NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _resource(api_version: str, kind: str, spec: dict[str, Any], name: str) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        # Beside kubernetes-validate's own schemas, so `_definitions.json` resolves like theirs.
        "$id": f"https://kubernetes.io/api/ftp-pooler-{name}",
        **_closed(
            {
                "apiVersion": {"const": api_version},
                "kind": {"const": kind},
                "metadata": OBJECT_META,
                "spec": spec,
            },
            required=["apiVersion", "kind", "metadata", "spec"],
        ),
    }


_RELABELING = {"type": "object"}  # relabel configs are free-form enough to leave open

_ENDPOINT = {
    **_closed(
        {
            "port": {"type": "string", "minLength": 1},
            "targetPort": {"type": ["integer", "string"]},
            "path": {"type": "string", "pattern": "^/"},
            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
            "interval": DURATION,
            "scrapeTimeout": DURATION,
            "honorLabels": {"type": "boolean"},
            "honorTimestamps": {"type": "boolean"},
            "params": {"type": "object"},
            "relabelings": {"type": "array", "items": _RELABELING},
            "metricRelabelings": {"type": "array", "items": _RELABELING},
        }
    ),
    "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
}

SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _closed(
        {
            "selector": LABEL_SELECTOR,
            "namespaceSelector": _closed(
                {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": NAME}}
            ),
            "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "sampleLimit": {"type": "integer", "minimum": 0},
        },
        required=["selector", "endpoints"],
    ),
    "servicemonitor",
)

_TRIGGER = _closed(
    {
        "type": {"type": "string", "minLength": 1},
        "name": {"type": "string"},
        "useCachedMetrics": {"type": "boolean"},
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        # KEDA reads every trigger parameter as a string: `lagThreshold: 100` is rejected.
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "authenticationRef": _closed(
            {
                "name": {"type": "string"},
                "kind": {"enum": ["TriggerAuthentication", "ClusterTriggerAuthentication"]},
            },
            required=["name"],
        ),
    },
    required=["type", "metadata"],
)

SCALED_OBJECT = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    _closed(
        {
            "scaleTargetRef": _closed(
                {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": NAME,
                    "envSourceContainerName": {"type": "string"},
                },
                required=["name"],
            ),
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "initialCooldownPeriod": {"type": "integer", "minimum": 0},
            "fallback": _closed(
                {
                    "failureThreshold": {"type": "integer", "minimum": 0},
                    "replicas": {"type": "integer", "minimum": 0},
                },
                required=["failureThreshold", "replicas"],
            ),
            "advanced": _closed(
                {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": _closed(
                        {"name": {"type": "string"}, "behavior": HPA_BEHAVIOR}
                    ),
                    "scalingModifiers": {"type": "object"},
                }
            ),
            "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
        },
        required=["scaleTargetRef", "triggers"],
    ),
    "scaledobject",
)

# A key of a Secret or ConfigMap in the TriggerAuthentication's namespace, given to the scaler as
# one of its authentication parameters.
_TARGET_REF = _closed(
    {
        "parameter": {"type": "string", "minLength": 1},
        "name": NAME,
        "key": {"type": "string", "pattern": r"^[-._a-zA-Z0-9]+$"},
    },
    required=["parameter", "name", "key"],
)

TRIGGER_AUTHENTICATION = _resource(
    "keda.sh/v1alpha1",
    "TriggerAuthentication",
    {
        **_closed(
            {
                "secretTargetRef": {"type": "array", "minItems": 1, "items": _TARGET_REF},
                "configMapTargetRef": {"type": "array", "minItems": 1, "items": _TARGET_REF},
                "env": {
                    "type": "array",
                    "items": _closed(
                        {
                            "parameter": {"type": "string", "minLength": 1},
                            "name": {"type": "string", "minLength": 1},
                            "containerName": {"type": "string"},
                        },
                        required=["parameter", "name"],
                    ),
                },
                # Cloud identities and vaults: free-form enough to leave open.
                "podIdentity": {"type": "object"},
                "hashiCorpVault": {"type": "object"},
                "azureKeyVault": {"type": "object"},
                "awsSecretManager": {"type": "object"},
                "gcpSecretManager": {"type": "object"},
            }
        ),
        "minProperties": 1,
    },
    "triggerauthentication",
)

SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECT,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TRIGGER_AUTHENTICATION,
}
