#!/usr/bin/env python3
"""bench/chart.py RESULTS.json OUT.png: throughput ratios and failover times side by side.

Called by bench/run with whichever Python has matplotlib (Debian's python3-matplotlib)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PROXIES = ["nginx", "haproxy", "apilb"]
LABEL = {"nginx": "nginx (kubespray)", "haproxy": "HAProxy (kubespray)", "apilb": "apilb"}
COLOR = {"nginx": "#7f9fbf", "haproxy": "#c9a66b", "apilb": "#2e8b57"}


def main(src: str, dst: str) -> None:
    res = json.load(open(src))
    panels = [k for k in ("throughput", "memory", "failover") if k in res]
    if not panels:  # e.g. `bench/run --only node`: its table is the report
        print("nothing to chart: no throughput, memory or failover results", file=sys.stderr)
        return
    widths = {"throughput": 1.0, "memory": 0.6, "failover": 1.5}
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(6.2 * widths[p] for p in panels), 5.6),
                             squeeze=False, gridspec_kw={"width_ratios": [widths[p] for p in panels]})
    axes = list(axes[0])
    width = 0.26

    if "throughput" in res:
        ax = axes.pop(0)
        tp = res["throughput"]
        wl = [w for w in res["workloads"] if w["id"] in tp]
        for i, p in enumerate(PROXIES):
            xs = [j + (i - 1) * width for j in range(len(wl))]
            med = [tp[w["id"]]["ratio_to_direct"][p] for w in wl]
            rr = [[x for x in tp[w["id"]]["ratio_to_direct_rounds"][p] if x is not None] for w in wl]
            lo = [m - min(r) for m, r in zip(med, rr)]
            hi = [max(r) - m for m, r in zip(med, rr)]
            bars = ax.bar(xs, med, width, color=COLOR[p], label=LABEL[p],
                          yerr=[lo, hi], capsize=3, ecolor="#444")
            for b, m in zip(bars, med):
                ax.text(b.get_x() + b.get_width() / 2, 0.02, f"{m:.2f}", ha="center",
                        va="bottom", fontsize=8, color="white", fontweight="bold")
        ax.axhline(1.0, color="#333", ls="--", lw=1)
        ax.text(-0.45, 1.01, "direct = 1.0", ha="left", va="bottom", fontsize=8)
        ax.set_xticks(range(len(wl)))
        ax.set_xticklabels([f"{w['id']}\n{w['title']}" for w in wl], fontsize=9)
        ax.set_ylabel("throughput / direct (higher is better)")
        ax.set_ylim(0, 1.3)
        ax.set_title("Throughput through the proxy, ratio to direct\n(median of rounds; bars: per-round range)",
                     fontsize=10)
        ax.legend(fontsize=8, loc="upper right", ncol=3)

    if "memory" in res:
        ax = axes.pop(0)
        mem = res["memory"]
        groups = [("RSS idle\n(MiB)", lambda m: m["idle"]["rss_kib"] / 1024),
                  ("RSS per idle\nconnection (KiB)", lambda m: m["rss_kib_per_connection"] or 0)]
        for i, p in enumerate(PROXIES):
            xs = [j + (i - 1) * width for j in range(len(groups))]
            vals = [f(mem[p]) for _, f in groups]
            bars = ax.bar(xs, vals, width, color=COLOR[p], label=LABEL[p])
            for b, v in zip(bars, vals):
                ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:.1f}",
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([g for g, _ in groups], fontsize=9)
        ax.set_title(f"Memory (lower is better)\n{mem['connections_asked']} idle TLS connections asked",
                     fontsize=10)
        ax.legend(fontsize=8)

    if "failover" in res:
        ax = axes.pop(0)
        fo = res["failover"]
        cap = fo["cap_s"]
        items = [
            ("blackhole:\nstreams closed", lambda r: r["blackhole"]["all_closed_s"]),
            ("freeze:\nstreams closed", lambda r: r["freeze"]["all_closed_s"]),
            ("blackhole:\nnew conn p99", lambda r: r["blackhole"]["new_connections"]["p99_ms"] / 1000
             if r["blackhole"]["new_connections"]["p99_ms"] is not None else None),
            ("blackhole over:\nserving again", lambda r: r["blackhole"]["recovery_s"]),
            ("freeze over:\nserving again", lambda r: r["freeze"]["recovery_s"]),
            ("/readyz 500:\nlast new conn to it", lambda r: r["not_ready"]["last_reached_s"]),
        ]
        floor = 0.01
        for i, p in enumerate(PROXIES):
            xs = [j + (i - 1) * width for j in range(len(items))]
            for x, (name, f) in zip(xs, items):
                v = f(fo[p])
                never = v is None and name.startswith("/readyz")
                capped = v is None and not never
                window = res["settings"]["notready_window"]
                ongoing = (name.startswith("/readyz") and v is not None and v >= window - 1.0
                           and fo[p]["not_ready"]["reached_after_one_interval"] > 0)
                failed = fo[p]["blackhole"]["new_connections"]["failures"] if "new conn p99" in name else 0
                icap = fo.get("recovery_cap_s", cap) if "serving again" in name else cap
                shown = icap if capped else (floor if never or v is None else max(v, floor))
                hatched = capped or ongoing
                ax.bar(x, shown, width, color=COLOR[p], hatch="//" if hatched else None,
                       edgecolor="white" if hatched else None)
                txt = f"> {icap:.0f}" if capped else ("none" if never else f"{v:.2f}" if v < 10 else f"{v:.0f}")
                if ongoing:
                    txt = f"whole {window:.0f} s"
                if failed:
                    txt += f", {failed} failed"
                ax.text(x, shown * 1.08, txt, ha="center", va="bottom", fontsize=7, rotation=90)
        ax.set_yscale("log")
        ax.set_ylim(floor, max(cap, fo.get("recovery_cap_s", cap)) * 60)
        ax.axhline(cap, color="#999", ls=":", lw=1)
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([n for n, _ in items], fontsize=8)
        ax.set_ylabel("seconds (log scale; lower is better)")
        ax.set_title("Failover, three TLS backends\n(new conn p99: of those that succeeded; failures noted)",
                     fontsize=10)
        from matplotlib.patches import Patch
        ax.legend(handles=[Patch(color=COLOR[p], label=LABEL[p]) for p in PROXIES]
                  + [Patch(facecolor="#bbb", hatch="//", edgecolor="white",
                           label="still happening at the end of the wait")],
                  fontsize=8, loc="upper center", ncol=4)

    m = res["machine"]
    fig.suptitle(f"apilb vs kubespray's nginx and HAProxy — {res['date']}, {m['cores']} cores "
                 f"({m['cpu']}), {res['mode']} run", fontsize=10)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
