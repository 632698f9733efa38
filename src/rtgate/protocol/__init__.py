"""The Realtime protocol as the gateway sees it: cheap event inspection, usage, error events."""
