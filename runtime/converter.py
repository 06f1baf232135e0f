"""The project's payload converter: the SDK's pydantic converter, built once per process.

``temporalio.contrib.pydantic.PydanticPayloadConverter`` builds a new JSON converter, with
an empty cache of pydantic ``TypeAdapter``s, every time it is constructed, and the worker
constructs a payload converter for every workflow activation (and every workflow it loads
into its cache). During a burst of escalations that construction, and the adapters rebuilt
behind it, was about 4 % of the worker's Python time (the profile in
bench/results/README.md). ``SupportPayloadConverter`` holds the same encoding converters,
made once: the same bytes on the wire, one adapter cache for the process.

Encoding is unchanged (``pydantic_core.to_json``, metadata ``json/plain``), so payloads
written with either converter decode with the other; tests/unit/test_converter.py holds
that, and the committed histories replay with it.
"""

from __future__ import annotations

from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import CompositePayloadConverter, DataConverter

# The SDK's pydantic composite, made once: its encoding converters are stateless apart from
# the adapter cache (a bounded LRU, safe to share), so every instance below reuses them.
_ENCODINGS = tuple(PydanticPayloadConverter().converters.values())


class SupportPayloadConverter(CompositePayloadConverter):
    """pydantic's payload converter with its encoding converters shared by all instances."""

    def __init__(self) -> None:
        super().__init__(*_ENCODINGS)


support_data_converter = DataConverter(payload_converter_class=SupportPayloadConverter)
"""The data converter every client, worker and replayer of this project uses (with a codec
added by ``runtime.codec.data_converter`` where payloads are encrypted)."""
