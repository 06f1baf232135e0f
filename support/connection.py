"""Connecting to Temporal: environment configuration and the pydantic data converter."""

from __future__ import annotations

import os

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig

TASK_QUEUE_ENV = "SUPPORT_TASK_QUEUE"
DEFAULT_TASK_QUEUE = "support-tickets"


def task_queue() -> str:
    return os.environ.get(TASK_QUEUE_ENV) or DEFAULT_TASK_QUEUE


async def connect() -> Client:
    """Connect as Temporal's environment configuration says (``TEMPORAL_ADDRESS``,
    ``TEMPORAL_NAMESPACE``, ``TEMPORAL_API_KEY``, TLS settings, or a profile in
    ``TEMPORAL_CONFIG_FILE``); defaults to ``localhost:7233`` / ``default``."""
    config = ClientConfig.load_client_connect_config()
    config.setdefault("target_host", "localhost:7233")
    config.setdefault("namespace", "default")
    return await Client.connect(**config, data_converter=pydantic_data_converter)
