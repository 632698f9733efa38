"""rtgate: a gateway for realtime voice AI that speaks the OpenAI Realtime protocol."""

__version__ = "0.1.0"
