#!/usr/bin/env python3
"""Draws bench-peers' results.json as a PNG: reservations/s and p99 reserve latency per
system and concurrency (closed-loop rows, the largest N measured at every concurrency).

Usage: bench-chart.py RESULTS_JSON OUT_PNG
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        res = json.load(f)
    rows = [r for r in res["rows"] if r["mode"] == "closed"]
    if not rows:
        print("bench-chart: no closed-loop rows", file=sys.stderr)
        return 1
    # The N with the most concurrencies measured.
    per_n = {}
    for r in rows:
        per_n.setdefault(r["units"], set()).add(r["clients"])
    n = max(per_n, key=lambda k: (len(per_n[k]), k))
    rows = [r for r in rows if r["units"] == n]
    systems = list(dict.fromkeys(r["system"] for r in rows))
    clients = sorted({r["clients"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        by_c = {r["clients"]: r for r in rows if r["system"] == s}
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(clients))]
        for ax, key in ((axes[0], "reservations_per_s"), (axes[1], "reserve_p99_ms")):
            med, lo, hi = [], [], []
            for c in clients:
                sp = (by_c.get(c) or {}).get(key)
                if sp:
                    med.append(sp["median"])
                    lo.append(sp["median"] - sp["min"])
                    hi.append(sp["max"] - sp["median"])
                else:
                    med.append(0)
                    lo.append(0)
                    hi.append(0)
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=s if ax is axes[0] else None)
    for ax, title in (
        (axes[0], f"successful reservations/s (N={n}, median, min-max)"),
        (axes[1], f"p99 reserve latency, ms (N={n}, log scale)"),
    ):
        ax.set_xticks(range(len(clients)))
        ax.set_xticklabels([f"{c} clients" for c in clients])
        ax.set_title(title)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(
        "bench-peers: one machine, loopback; disk %.0f fdatasync/s" % res["disk_fdatasync_per_s"]
    )
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    fig.savefig(sys.argv[2], dpi=100)
    print(f"bench-chart: wrote {sys.argv[2]}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
