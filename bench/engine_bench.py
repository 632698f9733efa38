"""Local engine benchmark: end of user speech to first reply audio, word error rate, capacity.

Runs ``rtgate serve`` on its embedded defaults (Silero VAD, Whisper tiny.en, echo brain, piper)
with no provider key, and talks to it through the gateway as a client would: piper speech
streamed in real time in 20 ms appends with server VAD. For each turn it measures

* latency: wall clock from sending the append that holds the end of the voiced audio to the
  first ``response.output_audio.delta`` (so it includes the VAD's silence window);
* WER of the input transcription against the sentence, after normalising case and punctuation.

Then the same with N concurrent sessions, to show how many one machine holds.

    python bench/engine_bench.py [--silence 500,200] [--concurrency 1,2,4,8] [--port 8091]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.speech import speak  # noqa: E402

SENTENCES = [
    "What is the weather like in Paris today?",
    "Please set a timer for ten minutes.",
    "Tell me a joke about computers.",
    "How far is the moon from the earth?",
    "Can you recommend a good book to read?",
    "Turn off the lights in the kitchen.",
    "What time does the train leave tomorrow morning?",
    "Remind me to call my mother on Sunday.",
]
NUMBERS = {"ten": "10", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}


def normalise(text: str) -> list[str]:
    words = re.sub(r"[^a-z0-9 ]", " ", text.lower()).split()
    return [NUMBERS.get(w, w) for w in words]


def edit_distance(r: list[str], h: list[str]) -> int:
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)]


def voiced_end_ms(pcm: bytes) -> int:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    frames = x[: len(x) // 480 * 480].reshape(-1, 480)
    level = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) / 32768 + 1e-9)
    loud = np.nonzero(level > -45)[0]
    return (int(loud[-1]) + 1) * 20


async def turn(url: str, key: str, sentence: str, silence_ms: int) -> dict[str, Any]:
    speech = speak(sentence)
    lead = 500
    audio = bytes(48 * lead) + speech + bytes(48 * (silence_ms + 1500))
    end_ms = lead + voiced_end_ms(speech)
    out: dict[str, Any] = {"sentence": sentence}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            f"{url}/v1/realtime?model=gpt-realtime",
            headers={"Authorization": f"Bearer {key}"},
            max_msg_size=0,
        ) as ws,
    ):
        session = {
            "type": "realtime",
            "audio": {
                "input": {
                    "transcription": {"model": "gpt-4o-mini-transcribe"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": silence_ms},
                }
            },
        }
        await ws.send_str(orjson.dumps({"type": "session.update", "session": session}).decode())
        end_sent = asyncio.get_running_loop().create_future()

        async def stream() -> None:
            t0 = time.perf_counter()
            for i, off in enumerate(range(0, len(audio), 960)):
                chunk = base64.b64encode(audio[off : off + 960]).decode()
                await ws.send_str('{"type":"input_audio_buffer.append","audio":"' + chunk + '"}')
                if (i + 1) * 20 >= end_ms and not end_sent.done():
                    end_sent.set_result(time.perf_counter())
                await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.perf_counter()))

        sender = asyncio.create_task(stream())
        try:
            async for msg in ws:
                e = orjson.loads(msg.data)
                t = e["type"]
                if t == "response.output_audio.delta" and "first_audio" not in out:
                    out["first_audio"] = time.perf_counter()
                elif t == "conversation.item.input_audio_transcription.completed":
                    out["transcript"] = e["transcript"]
                elif t == "error":
                    out["error"] = e["error"]
                if "first_audio" in out and "transcript" in out:
                    break
        finally:
            sender.cancel()
        if end_sent.done() and "first_audio" in out:
            out["latency_s"] = out["first_audio"] - end_sent.result()
    ref, hyp = normalise(sentence), normalise(out.get("transcript", ""))
    out["errors"], out["words"] = edit_distance(ref, hyp), len(ref)
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def summary(results: list[dict[str, Any]]) -> str:
    lat = [r["latency_s"] for r in results if "latency_s" in r]
    errors = sum(r["errors"] for r in results)
    words = sum(r["words"] for r in results)
    failed = len(results) - len(lat)
    if not lat:
        return f"no replies ({failed} failed)"
    return (
        f"p50 {statistics.median(lat):.3f} s, p95 {pct(lat, 95):.3f} s, max {max(lat):.3f} s"
        f" over {len(lat)} turns; WER {100 * errors / max(1, words):.1f}% ({errors}/{words})"
        + (f"; {failed} without reply" if failed else "")
    )


async def main_async(a: argparse.Namespace, url: str, key: str) -> None:
    for sentence in SENTENCES:
        speak(sentence)  # synthesise the user's side before timing anything
    await turn(url, key, SENTENCES[0], 500)  # warm the models
    print("| silence window | end of speech -> first reply audio, WER |\n|---|---|")
    for silence in (int(x) for x in a.silence.split(",")):
        results = [await turn(url, key, s, silence) for s in SENTENCES]
        print(f"| {silence} ms | {summary(results)} |", flush=True)
    print("\n| concurrent sessions | end of speech -> first reply audio, WER (500 ms window) |")
    print("|---|---|")
    for n in (int(x) for x in a.concurrency.split(",")):
        results = await asyncio.gather(
            *(turn(url, key, SENTENCES[i % len(SENTENCES)], 500) for i in range(n))
        )
        print(f"| {n} | {summary(list(results))} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--silence", default="500,200")
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--port", type=int, default=8091)
    a = ap.parse_args()
    home = tempfile.mkdtemp(prefix="rtgate-engine-bench-")
    env = {
        **os.environ,
        "RTGATE_HOME": home,
        "RTGATE_PORT": str(a.port),
        "OPENAI_API_KEY": "",
        "RTGATE_LOG_LEVEL": "warning",
    }
    env.pop("RTGATE_CONFIG", None)
    env.pop("RTGATE_DATABASE_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "rtgate", "keys", "create", "--name", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = out.stdout.strip().splitlines()[-1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtgate", "serve"], env=env, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{a.port}"
        for _ in range(300):
            try:
                with __import__("urllib.request").request.urlopen(url + "/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        asyncio.run(main_async(a, url.replace("http", "ws"), key))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


if __name__ == "__main__":
    main()
