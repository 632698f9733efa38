"""The embedded local realtime engine: an upstream that speaks the GA Realtime protocol offline.

Cascade: voice activity detection -> speech-to-text -> brain -> text-to-speech, each stage a small
port (``engine.ports``). The protocol state machine (``engine.session``) has no I/O; the aiohttp
server (``engine.server``) pumps it.
"""
