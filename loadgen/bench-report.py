#!/usr/bin/env python3
"""Medians, ratios and SVG charts from loadgen JSON lines.

Usage: bench-report.py RESULTS.jsonl OUT_DIR
Writes OUT_DIR/bench-compare.md, OUT_DIR/bench-s1.svg, OUT_DIR/bench-s2.svg.
Plain Python 3, no packages, no network.
"""
import json
import math
import statistics
import sys
from collections import defaultdict

OURS, RABBIT = "stomp-broker", "rabbitmq"

# (scenario key, metric, label, higher is better?)
METRICS = {
    "s1": [("deliveries_per_s", "deliveries/s", True), ("deliveries_per_cpu_s", "deliveries / broker CPU-s", True),
           ("frames_per_ws_message", "MESSAGE frames per WebSocket message", False),
           ("p50_us", "p50 µs", False),
           ("p99_us", "p99 µs", False), ("p999_us", "p99.9 µs", False),
           ("broker_cpu_s_per_m", "broker CPU s / M deliveries", False),
           ("broker_rss_mib", "broker RSS MiB", False)],
    "s2": [("deliveries_per_s", "deliveries/s", True), ("deliveries_per_cpu_s", "deliveries / broker CPU-s", True),
           ("p50_us", "p50 µs", False),
           ("p99_us", "p99 µs", False), ("p999_us", "p99.9 µs", False),
           ("max_us", "max µs", False), ("lost", "not delivered", False),
           ("pub_lag_p99_us", "generator send lag p99 µs", False),
           ("broker_cpu_pct", "broker CPU %", False)],
    "s3": [("broker_kib_per_conn", "broker KiB / idle connection", False),
           ("broker_cpu_pct", "broker idle CPU %", False),
           ("closed_by_broker", "connections lost", False)],
    "s4": [("connects_per_s", "connects/s", True), ("p50_us", "p50 µs", False),
           ("p99_us", "p99 µs", False), ("errors", "errors", False),
           ("broker_cpu_ms_per_k_connects", "broker CPU ms / 1000 connects", False)],
    "s5": [("undisturbed_p99_us", "others' p99 µs, undisturbed", False),
           ("stalled_p99_us", "others' p99 µs, one stalled", False),
           ("p99_ratio", "p99 ratio stalled/undisturbed", False),
           ("broker_rss_max_mib", "broker RSS max MiB", False),
           ("lost_others", "others: not delivered", False),
           ("victim_cut_off", "slow subscriber cut off (times)", False)],
    "s8": [("deliveries_per_s", "deliveries/s", True), ("deliveries_per_cpu_s", "deliveries / broker CPU-s", True),
           ("p50_us", "p50 µs", False), ("p99_us", "p99 µs", False), ("lost", "not delivered", False)],
}


def key(r):
    k = base_key(r)
    extra = [x for x in (r.get("variant"), r.get("transport") if r.get("transport") == "tcp" else None) if x]
    return f"{k} [{', '.join(extra)}]" if extra else k


def base_key(r):
    sc = r.get("scenario")
    if sc == "s1":
        return f"s1 N={r.get('subscribers')}"
    if sc == "s2":
        return f"s2 N={r.get('subscribers')} @{int(r.get('publish_rate', 0))}/s"
    if sc == "s3":
        return f"s3 N={r.get('connections')}"
    if sc == "s5":
        return f"s5 N={r.get('subscribers')} @{int(r.get('publish_rate', 0))}/s"
    return sc


def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def main():
    results, out = sys.argv[1], sys.argv[2]
    rows = [json.loads(l) for l in open(results) if l.strip()]
    runs = defaultdict(lambda: defaultdict(list))  # key -> label -> [row]
    order = []
    for r in rows:
        k = key(r)
        if k not in order:
            order.append(k)
        runs[k][r.get("label")].append(r)

    def med(k, label, m):
        vals = [r.get(m) for r in runs[k].get(label, []) if isinstance(r.get(m), (int, float))]
        return (statistics.median(vals), len(vals)) if vals else (None, 0)

    lines = ["| scenario | metric | stomp-broker (median) | RabbitMQ (median) | ratio ours/rabbit | runs |",
             "|---|---|---:|---:|---:|---|"]
    for k in order:
        sc = k.split()[0]
        for m, label, higher in METRICS.get(sc, []):
            a, na = med(k, OURS, m)
            # A variant of ours (one frame per WebSocket message, status
            # page open) is compared with RabbitMQ's plain run.
            b, nb = med(k, RABBIT, m)
            if nb == 0 and " [" in k and "tcp" not in k:
                b, nb = med(k.split(" [")[0], RABBIT, m)
            if a is None and b is None:
                continue
            ratio = "–"
            if a is not None and b not in (None, 0):
                ratio = f"{a / b:.2f}×"
            lines.append(f"| {k} | {label} | {fmt(a)} | {fmt(b)} | {ratio} | {na}/{nb} |")
        # Free-text outcomes (slow consumer, errors) from the last run of each.
        for who in (OURS, RABBIT):
            rs = runs[k].get(who, [])
            notes = sorted({r.get("victim_outcome") for r in rs if r.get("victim_outcome")})
            errs = sorted({r.get("first_error") for r in rs if r.get("first_error")})
            if notes:
                lines.append(f"| {k} | {who}: stalled subscriber | {'; '.join(notes)} | | | |")
            if errs:
                lines.append(f"| {k} | {who}: first error | {'; '.join(e[:120] for e in errs)} | | | |")
    open(f"{out}/bench-compare.md", "w").write("\n".join(lines) + "\n")

    s1 = [k for k in order if k.startswith("s1 ") and " [" not in k]
    bar_chart(f"{out}/bench-s1.svg", "S1 fan-out: deliveries/s (median, log scale)",
              [(k.split()[1], med(k, OURS, "deliveries_per_s")[0], med(k, RABBIT, "deliveries_per_s")[0])
               for k in s1], "deliveries/s")
    s2 = [k for k in order if k.startswith("s2 ") and " [" not in k]
    groups = []
    for k in s2[:1]:
        for m, lab in (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9"), ("max_us", "max")):
            groups.append((lab, med(k, OURS, m)[0], med(k, RABBIT, m)[0]))
    title = f"S2 per-order 1:1 latency, µs (median of runs, log scale) — {s2[0] if s2 else 'no data'}"
    bar_chart(f"{out}/bench-s2.svg", title, groups, "µs")


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def bar_chart(path, title, groups, unit):
    """Grouped bars (ours, rabbit) on a log10 axis."""
    w, h, left, bottom, top = 720, 360, 80, 50, 50
    vals = [v for _, a, b in groups for v in (a, b) if v and v > 0]
    if not vals:
        vals = [1, 10]
    lo = 10 ** math.floor(math.log10(min(vals)))
    hi = 10 ** math.ceil(math.log10(max(vals)))
    if hi <= lo:
        hi = lo * 10
    ph = h - top - bottom

    def y(v):
        return top + ph - ph * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="14">{esc(title)}</text>']
    d = lo
    while d <= hi * 1.0001:
        yy = y(d)
        s.append(f'<line x1="{left}" x2="{w - 20}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
        s.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{fmt(d)}</text>')
        d *= 10
    s.append(f'<text x="16" y="{top + ph / 2}" transform="rotate(-90 16 {top + ph / 2})" text-anchor="middle">{esc(unit)}</text>')
    n = max(len(groups), 1)
    gw = (w - left - 20) / n
    bw = gw * 0.3
    for i, (name, a, b) in enumerate(groups):
        x0 = left + i * gw + gw * 0.15
        for j, (v, color) in enumerate(((a, "#2b7bb9"), (b, "#f28e2b"))):
            x = x0 + j * (bw + gw * 0.1)
            if v and v > 0:
                yy = y(v)
                s.append(f'<rect x="{x:.1f}" y="{yy:.1f}" width="{bw:.1f}" height="{top + ph - yy:.1f}" fill="{color}"/>')
                s.append(f'<text x="{x + bw / 2:.1f}" y="{yy - 4:.1f}" text-anchor="middle" font-size="10">{fmt(v)}</text>')
            else:
                s.append(f'<text x="{x + bw / 2:.1f}" y="{top + ph - 4}" text-anchor="middle" font-size="10">n/a</text>')
        s.append(f'<text x="{left + i * gw + gw / 2:.1f}" y="{h - bottom + 18}" text-anchor="middle">{esc(name)}</text>')
    lx = w - 220
    s.append(f'<rect x="{lx}" y="34" width="12" height="12" fill="#2b7bb9"/><text x="{lx + 16}" y="44">stomp-broker</text>')
    s.append(f'<rect x="{lx + 110}" y="34" width="12" height="12" fill="#f28e2b"/><text x="{lx + 126}" y="44">RabbitMQ</text>')
    s.append("</svg>")
    open(path, "w").write("\n".join(s) + "\n")


if __name__ == "__main__":
    main()
