"""The ops CLI (``support-ops`` / ``python -m ops``): tickets, replay and policy versions."""
