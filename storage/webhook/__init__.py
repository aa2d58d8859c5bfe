"""The webhook: events as JSON documents POSTed to one HTTP endpoint."""

from meter_gateway.storage.webhook.client import WebhookClient, WebhookError, parse_retry_after

__all__ = ["WebhookClient", "WebhookError", "parse_retry_after"]
