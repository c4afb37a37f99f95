"""guardrail's own metric aggregation, rendered as the OpenTelemetry Prometheus exporter would.

:class:`~guardrail.observe.PrometheusMetrics` owns the whole pipeline from a measurement to
its Prometheus text, so it need not pay the OpenTelemetry SDK's per-measurement work
(a ``Measurement`` object, attribute cleaning, hashing the attribute set, locks at three
levels): about 10 µs per measurement, six or seven per call. :class:`LocalMeterProvider` is
the subset of the OpenTelemetry ``MeterProvider`` API that :class:`~guardrail.Telemetry`
uses (``get_meter``, ``create_histogram`` with a bucket advisory, ``create_counter``,
``create_observable_up_down_counter``), aggregating in plain lists keyed by the attribute
dict's items; :class:`LocalCollector` renders them through ``prometheus_client`` exactly as
``opentelemetry-exporter-prometheus`` renders the SDK's cumulative data: the same names
(the exporter's own sanitising and unit mapping), help, units, ``otel_scope_*`` labels,
``target_info`` from the same ``Resource``, bucket boundaries, sums and counts, the SDK's
2,000-series cardinality limit with its ``otel_metric_overflow`` series, and negative
amounts dropped with the SDK's warning.

Users who bring their own SDK keep the OpenTelemetry path (``Telemetry(meter_provider=...)``
or the global provider): nothing here is used unless a PrometheusMetrics is.
"""

from __future__ import annotations

import itertools
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain
from json import dumps
from typing import Any

__all__ = ["LocalCollector", "LocalMeterProvider"]

_logger = logging.getLogger(__name__)

CARDINALITY_LIMIT = 2000  # the SDK's default per metric stream
_OVERFLOW: tuple[tuple[str, Any], ...] = (("otel.metric.overflow", True),)

Key = tuple[tuple[str, Any], ...]

# The SDK lists an instrument's metric from its first measurement on (an observable
# instrument's from the first collection): the same order here.
_first_seen = itertools.count()


def _get(series: dict[Key, Any], key: Key) -> Any:
    try:
        return series.get(key)
    except TypeError:  # a sequence value: looked up as a tuple by _aggregate
        return None


def _hashable(key: Key) -> Key:
    """Sequence values as tuples (the SDK keeps them as tuples too)."""
    try:
        hash(key)
    except TypeError:
        return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in key)
    return key


class _Instrument:
    """One instrument's series: attribute items -> its aggregate, in first-seen order."""

    kind = ""

    def __init__(self, name: str, unit: str, description: str) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self._series: dict[Key, Any] = {}  # every key seen (any order) -> its aggregate
        self._canonical: dict[Key, Any] = {}  # sorted key -> aggregate, in first-seen order
        self._attributes: dict[int, Key] = {}  # id(aggregate) -> its first-seen key
        self._lock = threading.Lock()
        self.first: int | None = None

    def _new(self) -> Any:
        raise NotImplementedError

    def _aggregate(self, key: Key) -> Any:
        """The aggregate of an attribute set not seen in this order yet (lock held).
        Over the cardinality limit a new set goes to the overflow series and is not
        remembered (as in the SDK: memory stays bounded however many sets arrive)."""
        if self.first is None:
            self.first = next(_first_seen)
        key = _hashable(key)
        aggregate = self._series.get(key)
        if aggregate is not None:
            return aggregate
        canonical = tuple(sorted(key, key=lambda item: str(item[0])))
        aggregate = self._canonical.get(canonical)
        if aggregate is None:
            if len(self._canonical) >= CARDINALITY_LIMIT:
                aggregate = self._canonical.get(_OVERFLOW)
                if aggregate is None:
                    aggregate = self._canonical[_OVERFLOW] = self._new()
                    self._attributes[id(aggregate)] = _OVERFLOW
                return aggregate
            aggregate = self._canonical[canonical] = self._new()
            self._attributes[id(aggregate)] = key
        self._series[key] = aggregate  # this order of a known set: found directly next time
        return aggregate

    def points(self) -> list[tuple[Key, Any]]:
        """A collection: every series' cumulative value."""
        with self._lock:
            return [(self._attributes[id(a)], self._copy(a)) for a in self._canonical.values()]

    def _copy(self, aggregate: Any) -> Any:
        raise NotImplementedError


class _Counter(_Instrument):
    kind = "counter"

    def _new(self) -> list[float]:
        return [0, 0]  # since the last collection, up to it (the SDK's float sums, exactly)

    def add(self, amount: float, attributes: Mapping[str, Any] | None = None, *_: Any) -> None:
        if amount < 0:
            _logger.warning("Add amount must be non-negative on Counter %s.", self.name)
            return
        key = tuple(attributes.items()) if attributes else ()
        with self._lock:
            aggregate = _get(self._series, key) or self._aggregate(key)
            aggregate[0] += amount

    def _copy(self, aggregate: list[float]) -> float:
        aggregate[1] = aggregate[0] + aggregate[1]
        aggregate[0] = 0
        return aggregate[1]


class _Histogram(_Instrument):
    kind = "histogram"

    def __init__(self, name: str, unit: str, description: str, boundaries: Sequence[float]):
        super().__init__(name, unit, description)
        self.boundaries = tuple(boundaries)
        self._size = len(self.boundaries) + 1

    def _new(self) -> list[Any]:
        # bucket counts; the sum since the last collection, and up to it (the SDK adds
        # each collection's sum to the previous ones: the same float, to the last bit)
        return [[0] * self._size, 0, 0]

    def record(self, amount: float, attributes: Mapping[str, Any] | None = None, *_: Any) -> None:
        if amount < 0:
            _logger.warning("Record amount must be non-negative on Histogram %s.", self.name)
            return
        key = tuple(attributes.items()) if attributes else ()
        index = bisect_left(self.boundaries, amount)
        with self._lock:
            aggregate = _get(self._series, key) or self._aggregate(key)
            aggregate[0][index] += 1
            aggregate[1] += amount

    def _copy(self, aggregate: list[Any]) -> tuple[list[int], float]:
        aggregate[2] = aggregate[1] + aggregate[2]
        aggregate[1] = 0
        return list(aggregate[0]), aggregate[2]


class _ObservableGauge:
    """An observable up-down counter: cumulative, not monotonic, so a Prometheus gauge."""

    kind = "gauge"

    def __init__(
        self, name: str, callbacks: Sequence[Callable[[Any], Any]], unit: str, description: str
    ) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self.callbacks = list(callbacks)
        self.first: int | None = None

    def observe(self) -> None:
        """Called once per collection, before the instruments are listed."""
        if self.first is None:
            self.first = next(_first_seen)

    def points(self) -> list[tuple[Key, Any]]:
        from opentelemetry.metrics import CallbackOptions

        found: dict[Key, Any] = {}
        for callback in self.callbacks:
            try:
                for observation in callback(CallbackOptions()):
                    attributes = observation.attributes or {}
                    key = tuple(sorted(attributes.items(), key=lambda item: str(item[0])))
                    found[key] = observation.value
            except Exception:  # the SDK logs a failing callback and carries on
                _logger.exception("Callback failed for instrument %s.", self.name)
        return list(found.items())


# The SDK's default buckets, for a histogram created without an advisory.
_DEFAULT_BOUNDARIES = (
    *(0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0),
    *(2500.0, 5000.0, 7500.0, 10000.0),
)


class LocalMeter:
    """The meter of a :class:`LocalMeterProvider` (one per name and version)."""

    def __init__(self, provider: LocalMeterProvider, name: str, version: str, schema_url: str):
        self._provider = provider
        self.scope = (name or "", version or "", schema_url or "")

    def _register(self, name: str, make: Callable[[], Any]) -> Any:
        return self._provider._register(self.scope, name, make)

    def create_histogram(
        self,
        name: str,
        unit: str = "",
        description: str = "",
        *,
        explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
    ) -> _Histogram:
        boundaries = explicit_bucket_boundaries_advisory or _DEFAULT_BOUNDARIES
        return self._register(name, lambda: _Histogram(name, unit, description, boundaries))  # type: ignore[no-any-return]

    def create_counter(self, name: str, unit: str = "", description: str = "") -> _Counter:
        return self._register(name, lambda: _Counter(name, unit, description))  # type: ignore[no-any-return]

    def create_observable_up_down_counter(
        self,
        name: str,
        callbacks: Sequence[Callable[[Any], Any]] | None = None,
        unit: str = "",
        description: str = "",
    ) -> _ObservableGauge:
        return self._register(  # type: ignore[no-any-return]
            name, lambda: _ObservableGauge(name, callbacks or (), unit, description)
        )


class LocalMeterProvider:
    """The part of an OpenTelemetry ``MeterProvider`` that :class:`~guardrail.Telemetry`
    uses, aggregating in guardrail's own counters and histograms (read by
    :class:`LocalCollector`)."""

    def __init__(self) -> None:
        self._meters: dict[tuple[str, str, str], LocalMeter] = {}
        # (scope, instrument name) -> instrument
        self._instruments: dict[tuple[tuple[str, str, str], str], Any] = {}
        self._lock = threading.Lock()

    def get_meter(
        self, name: str, version: str | None = None, schema_url: str | None = None, *_: Any
    ) -> LocalMeter:
        scope = (name or "", version or "", schema_url or "")
        with self._lock:
            meter = self._meters.get(scope)
            if meter is None:
                meter = self._meters[scope] = LocalMeter(self, *scope)
        return meter

    def _register(self, scope: tuple[str, str, str], name: str, make: Callable[[], Any]) -> Any:
        key = (scope, name.lower())  # the SDK's instrument names are case-insensitive
        with self._lock:
            found = self._instruments.get(key)
            if found is None:
                found = self._instruments[key] = make()
        return found

    @property
    def used(self) -> bool:
        return bool(self._meters)

    def instruments(self) -> list[tuple[tuple[str, str, str], Any]]:
        """The instruments measured so far, in the order of their first measurement."""
        with self._lock:
            listed = [(scope, i) for (scope, _), i in self._instruments.items()]
        for _, instrument in listed:
            if isinstance(instrument, _ObservableGauge):
                instrument.observe()
        seen = [
            (i.first, n, scope, i) for n, (scope, i) in enumerate(listed) if i.first is not None
        ]
        return [(scope, i) for _, _, scope, i in sorted(seen, key=lambda t: (t[0], t[1]))]


def _label_value(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value, default=str)


class LocalCollector:
    """A ``prometheus_client`` collector of a :class:`LocalMeterProvider`'s metrics, then
    of ``also`` (a registry: the SDK reader's, without its target_info), with one
    ``target_info`` from ``resource`` (an OpenTelemetry SDK ``Resource``) when either has
    anything, as the exporter writes it."""

    def __init__(self, provider: LocalMeterProvider, resource: Any, also: Any = None) -> None:
        self._provider = provider
        self._resource = resource
        self._also = also
        self._target_info: Any = None

    def collect(self) -> Iterator[Any]:
        from opentelemetry.exporter.prometheus._mapping import sanitize_attribute
        from prometheus_client.core import InfoMetricFamily

        local = list(self._families()) if self._provider.used else []
        others = list(self._also.collect()) if self._also is not None else []
        if not (self._provider.used or others):
            return
        if self._target_info is None:
            attributes = {
                sanitize_attribute(k): _label_value(v) for k, v in self._resource.attributes.items()
            }
            info = InfoMetricFamily("target", "Target metadata", labels=list(attributes))
            info.add_metric(labels=list(attributes), value=attributes)
            self._target_info = info
        yield self._target_info
        yield from local
        yield from others

    def _families(self) -> Iterator[Any]:
        from opentelemetry.exporter.prometheus._mapping import (
            map_unit,
            sanitize_attribute,
            sanitize_full_name,
        )
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        families: dict[str, Any] = {}
        for (scope_name, version, schema_url), instrument in self._provider.instruments():
            points = instrument.points()
            if not points:
                continue
            scope = {
                "otel_scope_name": scope_name,
                "otel_scope_version": version,
                "otel_scope_schema_url": schema_url,
            }
            keys: set[str] = set()
            rows: list[dict[str, str]] = []
            for attributes, _ in points:
                labels = {}
                for key, value in chain(scope.items(), attributes):
                    label = sanitize_attribute(key)
                    keys.add(label)
                    labels[label] = _label_value(value)
                rows.append(labels)
            label_keys = sorted(keys)
            label_rows = [[labels.get(k, "") for k in label_keys] for labels in rows]
            name = sanitize_full_name(instrument.name)
            unit = map_unit(instrument.unit or "")
            description = instrument.description or ""
            kind = instrument.kind
            factory = {
                "counter": CounterMetricFamily,
                "gauge": GaugeMetricFamily,
                "histogram": HistogramMetricFamily,
            }[kind]
            family_id = "|".join((name, description, unit, factory.__name__))
            family = families.get(family_id)
            if family is None:
                family = families[family_id] = factory(
                    name=name, documentation=description, labels=label_keys, unit=unit
                )
            for labels_of, (_, value) in zip(label_rows, points, strict=True):
                if kind == "histogram":
                    counts, total = value
                    family.add_metric(
                        labels=labels_of,
                        buckets=_buckets(counts, instrument.boundaries),
                        sum_value=total,
                    )
                else:
                    family.add_metric(labels=labels_of, value=value)
        yield from families.values()


def _buckets(counts: Sequence[int], boundaries: Sequence[float]) -> list[tuple[str, int]]:
    """Cumulative (le, count) pairs, as the exporter writes them (``f"{bound}"``)."""
    buckets, total = [], 0
    for bound, count in zip(chain(boundaries, ["+Inf"]), counts, strict=True):
        total += count
        buckets.append((f"{bound}", total))
    return buckets
