"""A service's canary or blue-green deploy strategy as Argo Rollouts objects.

``meshkit deploy`` drives these strategies itself; on Kubernetes, Argo
Rollouts (https://argoproj.github.io/rollouts/, 1.8 or later) does, from a
``Rollout`` in place of the service's Deployment. The mapping:

- **canary**: each of ``steps`` becomes ``setWeight``, then ``pause`` for
  ``interval``, then an inline ``analysis`` of the ``AnalysisTemplate``
  ``<service>-canary``, which measures every ``interval`` until one
  measurement passes (``consecutiveSuccessLimit: 1``) or ``failure_limit``
  have failed (``failureLimit: failure_limit - 1``: Argo fails a metric
  when its failures exceed that number), which aborts the rollout. As
  meshkit does, a failed analysis holds the step and measures again; unlike
  meshkit, which counts failures over the whole rollout, Argo counts them
  per step. Without a traffic router, Argo approximates a weight by the
  share of pods running the new template, and so do meshkit's callers,
  which spread requests over every instance the registry lists: with few
  replicas the first steps get more than their share. ``replicas`` (the
  candidate's own count) has no Argo counterpart and is not used.
- The analysis keeps ``meshkit.policy.AnalysisConfig``'s absolute
  thresholds, in PromQL over the new pods' series (the ``canary-hash``
  argument, the new ReplicaSet's ``rollouts-pod-template-hash``): at least
  ``min_requests`` requests, a share of at least ``min_success`` that did
  not fail (5xx; for a sidecar also 0, no answer) and a p99 of at most
  ``max_p99``. As ``meshkit.policy.judge`` does, the success and latency
  checks only count once there are enough requests; the comparisons with
  the stable version are meshkit's own and are not mapped. Prometheus must
  scrape the pods as the ``kubernetes-pods`` job of the Prometheus Helm
  chart does (the ``prometheus.io/*`` annotations, pod labels copied to the
  series: ``app_kubernetes_io_name``, ``rollouts_pod_template_hash``).
  The range of each query is the ``window`` argument, the interval but at
  least ``MIN_WINDOW``: ``increase()`` needs two scrapes within it.
- **blue-green**: ``activeService`` is the service's Service and
  ``previewService`` ``<service>-preview``; ``keep`` is
  ``scaleDownDelaySeconds``. The ``smoke`` paths become a
  ``prePromotionAnalysis`` (``<service>-smoke``): one GET per path through
  the preview Service, where an answer other than 2xx is an error that
  aborts the rollout, as a failed smoke request rolls meshkit's back.
  Promotion is automatic, as in meshkit. meshkit's callers find instances
  in the registry, not through Services: preview pods take a share of the
  traffic once they register, before the switch.
- ``ready_timeout`` is ``progressDeadlineSeconds`` with
  ``progressDeadlineAbort``: new pods not ready in time abort the rollout.
"""

from __future__ import annotations

import math
from typing import Any

from meshkit.deploy._metrics_source import ROUTES, SERIES, Series
from meshkit.policy import AnalysisConfig, BlueGreenConfig, CanaryConfig

__all__ = ["MIN_WINDOW", "PREVIEW_SUFFIX", "rollout_objects"]

Manifest = dict[str, Any]

API_VERSION = "argoproj.io/v1alpha1"
PREVIEW_SUFFIX = "-preview"
# Seconds: twice the one-minute scrape interval of the Prometheus Helm chart.
MIN_WINDOW = 120


def rollout_objects(
    *,
    name: str,
    labels: dict[str, str],
    workload: Manifest,
    strategy: BlueGreenConfig | CanaryConfig,
    port: int,
    sidecar: bool,
    prometheus: str,
) -> list[Manifest]:
    """The ``Rollout`` of service ``name`` and its ``AnalysisTemplate`` (if it needs one).

    ``workload`` is the Deployment's ``spec`` the Rollout replaces (replicas,
    selector, template); ``port`` is where the preview Service reaches the
    pods, for the smoke requests.
    """
    spec: Manifest = {
        "replicas": workload["replicas"],
        "selector": workload["selector"],
        "progressDeadlineSeconds": _seconds(strategy.ready_timeout),
        "progressDeadlineAbort": True,
        "template": workload["template"],
    }
    if isinstance(strategy, CanaryConfig):
        spec["strategy"] = {"canary": _canary(name, strategy)}
        template = _canary_template(name, labels, strategy, sidecar=sidecar, prometheus=prometheus)
        analyses = [template]
    else:
        spec["strategy"] = {"blueGreen": _blue_green(name, strategy)}
        analyses = [_smoke_template(name, labels, strategy, port)] if strategy.smoke else []
    rollout = {
        "apiVersion": API_VERSION,
        "kind": "Rollout",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }
    return [rollout, *analyses]


def _seconds(value: float) -> int:
    """Whole seconds, rounded up: Kubernetes and Argo count in them."""
    return max(1, math.ceil(value))


# -- canary -----------------------------------------------------------------------------


def _canary(name: str, config: CanaryConfig) -> Manifest:
    analysis = {
        "templates": [{"templateName": f"{name}-canary"}],
        "args": [{"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}}],
    }
    steps: list[Manifest] = []
    for weight in config.steps:
        steps += [
            {"setWeight": weight},
            {"pause": {"duration": _seconds(config.interval)}},
            {"analysis": analysis},
        ]
    # meshkit never has fewer ready instances than it asked for.
    return {"maxUnavailable": 0, "steps": steps}


def _canary_template(
    name: str, labels: dict[str, str], config: CanaryConfig, *, sidecar: bool, prometheus: str
) -> Manifest:
    interval = _seconds(config.interval)
    window = max(interval, MIN_WINDOW)
    args = [
        {"name": "service-name", "value": name},
        {"name": "canary-hash"},
        {"name": "prometheus-address", "value": prometheus},
        {"name": "window", "value": f"{window}s"},
    ]
    queries = _queries(SERIES["sidecar" if sidecar else "service"], config.analysis)
    metrics = [
        {
            "name": metric,
            "interval": f"{interval}s",
            "consecutiveSuccessLimit": 1,
            "failureLimit": config.failure_limit - 1,
            "successCondition": condition,
            "provider": {"prometheus": {"address": "{{args.prometheus-address}}", "query": query}},
        }
        for metric, query, condition in queries
    ]
    return _analysis_template(f"{name}-canary", labels, {"args": args, "metrics": metrics})


def _queries(series: Series, config: AnalysisConfig) -> list[tuple[str, str, str]]:
    """``(metric, PromQL, successCondition)`` of each check ``judge`` makes against thresholds.

    The success rate and the p99 are empty below ``min_requests`` (``and
    on ()``), which passes: the requests check fails then, once.
    """
    requests, buckets, failed = series
    pods = (
        f'{ROUTES},app_kubernetes_io_name="{{{{args.service-name}}}}",'
        'rollouts_pod_template_hash="{{args.canary-hash}}"'
    )
    window = "[{{args.window}}]"
    total = f"sum(increase({requests}{{{pods}}}{window}))"
    enough = f"and on () ({total} >= {config.min_requests})\n"
    failures = f"(sum(increase({requests}{{{pods},{failed}}}{window})) or vector(0))"
    p99 = f"histogram_quantile(0.99, sum by (le) (rate({buckets}{{{pods}}}{window})))"
    return [
        ("requests", f"{total}\nor vector(0)\n", f"result[0] >= {config.min_requests}"),
        (
            "success-rate",
            f"(\n  1 - {failures}\n  / {total}\n)\n{enough}",
            f"len(result) == 0 || result[0] >= {config.min_success!r}",
        ),
        (
            "p99-latency",
            f"{p99}\n{enough}",
            f"len(result) == 0 || (!isNaN(result[0]) && result[0] <= {config.max_p99!r})",
        ),
    ]


# -- blue-green -------------------------------------------------------------------------


def _blue_green(name: str, config: BlueGreenConfig) -> Manifest:
    strategy: Manifest = {
        "activeService": name,
        "previewService": f"{name}{PREVIEW_SUFFIX}",
        "scaleDownDelaySeconds": math.ceil(config.keep),
    }
    if config.smoke:
        strategy["prePromotionAnalysis"] = {"templates": [{"templateName": f"{name}-smoke"}]}
    return strategy


def _smoke_template(
    name: str, labels: dict[str, str], config: BlueGreenConfig, port: int
) -> Manifest:
    metrics = [
        {
            "name": f"smoke-{index}",
            "count": 1,
            # Argo takes an answer other than 2xx as an error: the first one fails the run.
            "consecutiveErrorLimit": 0,
            "provider": {"web": {"url": f"http://{name}{PREVIEW_SUFFIX}:{port}{path}"}},
        }
        for index, path in enumerate(config.smoke, start=1)
    ]
    return _analysis_template(f"{name}-smoke", labels, {"metrics": metrics})


def _analysis_template(name: str, labels: dict[str, str], spec: Manifest) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "AnalysisTemplate",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }
