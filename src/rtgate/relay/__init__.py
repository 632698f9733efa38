"""The WebSocket relay: upstream dialling, the two-pump bridge, and the endpoint."""
