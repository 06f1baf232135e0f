"""Connecting to Temporal: environment configuration, the pydantic data converter and, when
``SUPPORT_CODEC_KEYS`` is set, payload encryption (see ``runtime.codec``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from temporalio.client import Client, Interceptor
from temporalio.envconfig import ClientConfig

from runtime.codec import codec_from_env, data_converter

TASK_QUEUE_ENV = "SUPPORT_TASK_QUEUE"
DEFAULT_TASK_QUEUE = "support-tickets"


def task_queue() -> str:
    return os.environ.get(TASK_QUEUE_ENV) or DEFAULT_TASK_QUEUE


async def connect(interceptors: Sequence[Interceptor] = ()) -> Client:
    """Connect as Temporal's environment configuration says (``TEMPORAL_ADDRESS``,
    ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, TLS settings, or a profile in
    ``TEMPORAL_CONFIG_FILE``); defaults to ``localhost:7233`` / ``default``. Payloads are
    encrypted when the codec keys are configured (a malformed key raises CodecConfigError
    before any connection is made)."""
    converter = data_converter(codec_from_env())
    config = ClientConfig.load_client_connect_config()
    config.setdefault("target_host", "localhost:7233")
    config.setdefault("namespace", "default")
    return await Client.connect(**config, data_converter=converter, interceptors=list(interceptors))
