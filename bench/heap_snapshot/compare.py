"""What a process's heap grew by between two snapshots (``sitecustomize.py`` here), per session.

Each allocation still held is charged to the innermost rtgate line on its stack (else to
``(libraries)``, with the innermost line as it stands), so the library objects a session holds
show under the rtgate line that made them: the upstream's dial, the front door's hand-over.

    python bench/heap_snapshot/compare.py BEFORE AFTER --sessions 300 [--top 30]
"""

from __future__ import annotations

import argparse
import collections
import re
import tracemalloc

#: Where rtgate's own modules live: a checkout's ``src`` or an installed package.
OURS = re.compile(r"/(?:src|site-packages)/rtgate/")


def site(frames: list[tracemalloc.Frame]) -> str:
    ours = [f for f in frames if OURS.search(f.filename)]
    f = ours[-1] if ours else frames[-1]
    short = OURS.split(f.filename)[-1] if ours else f.filename.rsplit("/", 1)[-1]
    return f"{short}:{f.lineno}" if ours else f"(libraries) {short}:{f.lineno}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--sessions", type=int, required=True)
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    before = tracemalloc.Snapshot.load(a.before)
    after = tracemalloc.Snapshot.load(a.after)
    size: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for stat in after.compare_to(before, "traceback"):
        key = site(list(stat.traceback))
        size[key] += stat.size_diff
        count[key] += stat.count_diff
    n = a.sessions
    print(f"{sum(size.values()) / n / 1e3:.1f} KB traced per session")
    for key, grown in size.most_common(a.top):
        print(f"{grown / n:8.0f} B {count[key] / n:6.1f} objects  {key}")


if __name__ == "__main__":
    main()
