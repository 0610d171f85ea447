#!/usr/bin/env python3
"""Plots a soak report (bench/soak): apilb's RSS, open descriptors and client connections over
time, with the faults shaded per server. Usage: soak-plot.py soak-latest.json soak-latest.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"kill": "tab:red", "blackhole": "tab:purple", "freeze": "tab:blue", "stall": "tab:cyan",
          "not_ready": "tab:orange", "graceful": "tab:pink", "spike": "tab:olive"}


def main(src, dst):
    r = json.load(open(src))
    res = r["resources"]
    t = [s[0] for s in res["samples"]]
    rss = [s[1] / 1024 for s in res["samples"]]
    fds = [s[2] for s in res["samples"]]
    conns = [s[3] if s[3] >= 0 else None for s in res["samples"]]

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 8), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 3, 1.4]})
    verdict = "PASS" if r["pass"] else "FAIL"
    fig.suptitle(f"apilb soak: {r['seconds']} s, seed {r['seed']} — {verdict}; "
                 f"byte mismatches {r['byte_mismatches']}, other failures {r['failures']['other']}, "
                 f"left hanging {r['failover']['left_hanging']}, "
                 f"cut by a graceful shutdown {r['failures'].get('cut_by_a_graceful_shutdown', 0)}, "
                 f"healthy streams reset {r.get('healthy_streams_reset', {}).get('total', 0)}",
                 fontsize=10)

    ax1.plot(t, rss, color="tab:green")
    ax1.axhline(res["rss_kib_allowed_last_third"] / 1024, color="tab:green", ls=":", lw=1,
                label="leak threshold for the last third's median")
    ax1.set_ylabel("RSS (MiB)")
    ax1.set_ylim(bottom=0, top=max(rss + [res["rss_kib_allowed_last_third"] / 1024]) * 1.15)
    ax1.legend(loc="lower right", fontsize=8)
    ax1.grid(alpha=0.3)

    ax2.plot(t, fds, color="tab:brown", label="open descriptors")
    ax2.plot(t, conns, color="tab:gray", lw=1, label="client connections (/status)")
    ax2.axhline(res["start"]["fds"] + res["fd_margin"], color="tab:brown", ls=":", lw=1,
                label="leak threshold at the end")
    ax2.set_ylabel("count")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="lower right", fontsize=8)
    ax2.grid(alpha=0.3)

    for f in r["faults"]["list"]:
        if f["began"] is None:
            continue
        end = f["lifted"] if f["lifted"] is not None else t[-1]
        # A spike is on every path at once: it spans all three rows.
        rows = [0, 1, 2] if f["server"] == "all" else [int(f["server"][2:]) - 1]
        c = COLORS.get(f["kind"], "gray")
        for row in rows:
            ax3.broken_barh([(f["began"], end - f["began"])], (row - 0.4, 0.8), color=c)
        for ax in (ax1, ax2):
            ax.axvspan(f["began"], end, color=c, alpha=0.06)
    ax3.set_yticks([0, 1, 2], ["cp1", "cp2", "cp3"])
    ax3.set_ylim(-0.6, 2.6)
    ax3.invert_yaxis()
    ax3.set_xlabel("seconds")
    handles = [matplotlib.patches.Patch(color=c, label=k) for k, c in COLORS.items()]
    ax3.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=7, fontsize=8)
    ax3.set_title("faults", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=90)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
