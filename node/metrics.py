"""Prometheus metrics of the node (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter("cxr_http_requests_total", "HTTP requests", ["route", "status"],
                        registry=REGISTRY)
HTTP_LATENCY = Histogram("cxr_http_request_seconds", "HTTP request latency", ["route"],
                         registry=REGISTRY,
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
QUEUE_DEPTH = Gauge("cxr_queue_depth", "jobs queued or processing", registry=REGISTRY)
BATCH_SIZE = Histogram("cxr_inference_batch_size", "images per forward pass", registry=REGISTRY,
                       buckets=(1, 2, 4, 8, 16, 32, 64))
JOBS = Counter("cxr_jobs_total", "jobs closed", ["origin", "state"], registry=REGISTRY)
DELIVERIES = Counter("cxr_deliveries_total", "delivery attempts", ["outcome"], registry=REGISTRY)
RECEIVED = Counter("cxr_received_total", "objects received", ["origin", "status"],
                   registry=REGISTRY)
# scale-out over a broker (serve --broker), per role process
BROKER_PUBLISHED = Counter("cxr_broker_published_total", "messages published", ["queue"],
                           registry=REGISTRY)
BROKER_CONFIRMED = Counter("cxr_broker_confirmed_total", "publishes the broker confirmed",
                           ["queue"], registry=REGISTRY)
BROKER_REDELIVERED = Counter("cxr_broker_redelivered_total", "messages received again",
                             ["queue"], registry=REGISTRY)
BROKER_DEAD_LETTERED = Counter("cxr_broker_dead_lettered_total",
                               "messages sent to the dead-letter queue", ["queue", "reason"],
                               registry=REGISTRY)
BROKER_RETRIED = Counter("cxr_broker_retried_total", "deliveries put in a retry queue",
                         registry=REGISTRY)
# the model monitor (/ui/monitor computes the same rates from the job records)
FINDINGS = Counter("cxr_findings_total", "findings of the jobs done, per label and outcome",
                   ["label", "positive"], registry=REGISTRY)
FINDING_PROBABILITY = Counter("cxr_finding_probability_sum", "sum of the probabilities of "
                              "the jobs done, per label (over cxr_findings_total: the mean)",
                              ["label"], registry=REGISTRY)
DECLINED = Counter("cxr_declined_total", "inputs the gate declined, per reason code",
                   ["code"], registry=REGISTRY)
