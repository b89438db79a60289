"""Flower records built with one cheap check of the whole input instead of Flower's per-item checks.

Flower's record classes check every key and value as it is inserted (``TypedDict.__setitem__``
through ``isinstance`` against ``typing`` unions). That is right for anything, but the records a
round builds per node from peerkd's own numbers (a reply's metrics and info, its record dict, a
message's content) are checked thousands of times a round: a profile of 3 rounds at 10,000 nodes
on one H200 spent 7.5 of its 56 s in 640,000 such checks. Each builder here accepts its input at
once when every key is a ``str`` and every value has an exact type the record takes (``type(v)
in ...``: no subclasses, so no ``bool`` among metrics and no NumPy scalars), and hands anything
else to Flower's own constructor, which checks it item by item and raises as it always does. The
record returned is the same either way (``tests/wire/test_records.py`` compares them, serialised).

This reaches into ``TypedDict``'s storage (``__dict__["_data"]``), which flwr 1.39 defines; the
tests fail if a Flower release moves it.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

_METRIC_TYPES = (int, float)
_CONFIG_TYPES = (int, float, str, bool, bytes)
_RECORD_TYPES = (ArrayRecord, MetricRecord, ConfigRecord)


def metric_record(values: dict[str, Any]) -> MetricRecord:
    """``MetricRecord(values)``."""
    if _plain(values, _METRIC_TYPES):
        return _filled(MetricRecord(), values)
    return MetricRecord(values)


def config_record(values: dict[str, Any]) -> ConfigRecord:
    """``ConfigRecord(values)``."""
    if _plain(values, _CONFIG_TYPES):
        return _filled(ConfigRecord(), values)
    return ConfigRecord(values)


def record_dict(records: dict[str, Any]) -> RecordDict:
    """``RecordDict(records)``."""
    if _plain(records, _RECORD_TYPES):
        return _filled(RecordDict(), records)
    return RecordDict(records)


def reply_message(msg: Message, records: dict[str, Any]) -> Message:
    """``Message(RecordDict(records), reply_to=msg)``."""
    return Message(record_dict(records), reply_to=msg)


def _plain(values: dict[str, Any], types: tuple[type, ...]) -> bool:
    """Every key a ``str`` and every value of one of ``types`` exactly."""
    return all(type(k) is str and type(v) in types for k, v in values.items())


def _filled(record: Any, values: dict[str, Any]) -> Any:
    record.__dict__["_data"].update(values)
    return record
