"""The WebSocket relay's I/O: the legs, the pump around the relay core (``protocol/relay.py``),
upstream dialling, admission, the endpoint and call sidebands."""
