"""Prometheus metrics, defined once; the engine and the API record into them, /metrics serves them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "homeport_requests", "HTTP requests by route and status", ["route", "status"],
    registry=REGISTRY)
PROMPT_TOKENS = Counter(
    "homeport_prompt_tokens", "Prompt tokens by model and whether they were evaluated or cached",
    ["model", "source"], registry=REGISTRY)
PROMPTS_TRUNCATED = Counter(
    "homeport_prompts_truncated", "Prompts cut to fit the context (their start was lost), by model",
    ["model"], registry=REGISTRY)
GENERATED_TOKENS = Counter(
    "homeport_generated_tokens", "Tokens generated, by model", ["model"], registry=REGISTRY)
PROMPT_PREFIX_COPIES = Counter(
    "homeport_prompt_prefix_copies",
    "Prompts started from a copy of another slot's cached prefix, by model", ["model"],
    registry=REGISTRY)
PROMPT_CACHE_BYTES = Gauge(
    "homeport_prompt_cache_bytes",
    "Host memory held by slot states kept for returning conversations, by model", ["model"],
    registry=REGISTRY)
PROMPT_CACHE_EVENTS = Counter(
    "homeport_prompt_cache",
    "Slot states saved for returning conversations, and restored when one returned, by model",
    ["model", "event"], registry=REGISTRY)
DRAFTED_TOKENS = Counter(
    "homeport_drafted_tokens",
    "Tokens drafted for speculative decoding, by model and source (the request's own tokens: "
    "prompt; a draft model: model)", ["model", "source"], registry=REGISTRY)
DRAFT_ACCEPTED_TOKENS = Counter(
    "homeport_draft_accepted_tokens",
    "Drafted tokens the model confirmed (each saved one decode step), by model and source",
    ["model", "source"], registry=REGISTRY)
TIME_TO_FIRST_TOKEN = Histogram(
    "homeport_time_to_first_token_seconds", "From submission to the first sampled token",
    ["model"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
INTER_TOKEN_LATENCY = Histogram(
    "homeport_inter_token_latency_seconds", "Time between consecutive tokens of one request",
    ["model"], registry=REGISTRY,
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1))
QUEUE_DEPTH = Gauge(
    "homeport_queue_depth", "Requests waiting for a slot", registry=REGISTRY)
BUSY_SLOTS = Gauge(
    "homeport_busy_slots", "Slots running a request, by model", ["model"], registry=REGISTRY)
LOADED_MODELS = Gauge(
    "homeport_loaded_models", "Models loaded in memory", registry=REGISTRY)
