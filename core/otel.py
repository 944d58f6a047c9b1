"""Optional OpenTelemetry spans: provider call → ledger command (gateway) and ledger batch (writer).

Off unless ``GATEWAY_OTEL_ENDPOINT`` is set AND the ``otel`` extra is installed
(``pip install '.[otel]'``); otherwise every hook is a ``None`` check and nothing is imported. The
span of a command is a child of the provider's W3C ``traceparent`` (or of the trace the gateway
started), so the provider's trace, the ledger row, the event and the span share one trace id.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

#: the tracer once configured; ``None``: tracing is off (the hooks cost one comparison)
TRACER: Any = None
_propagator: Any = None


def configure(endpoint: str, service: str) -> bool:
    """Export spans over OTLP/HTTP to ``endpoint``; False (and tracing off) when not possible."""
    if not endpoint:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("GATEWAY_OTEL_ENDPOINT is set but OpenTelemetry is not installed (pip install '.[otel]'); "
                    "tracing stays off")
        return False
    return use_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)), service)


def use_processor(processor: Any, service: str) -> bool:
    """Send spans through ``processor`` (an SDK span processor; tests pass an in-memory one)."""
    global TRACER, _propagator
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(processor)
    TRACER = provider.get_tracer("game-gateway")
    _propagator = TraceContextTextMapPropagator()
    return True


def disable() -> None:
    global TRACER, _propagator
    TRACER = _propagator = None


@contextlib.contextmanager
def span(name: str, traceparent: str, attributes: Mapping[str, str | int]) -> Iterator[None]:
    """A span named ``name``, child of ``traceparent``; nothing at all while tracing is off."""
    tracer = TRACER
    if tracer is None:
        yield
        return
    parent = _propagator.extract({"traceparent": traceparent})
    with tracer.start_as_current_span(name, context=parent, attributes=dict(attributes)):
        yield
