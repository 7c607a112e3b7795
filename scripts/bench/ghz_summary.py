#!/usr/bin/python3
"""Summarises scripts/bench/ghz.sh's JSON reports: per profile and server the
median over rounds of rps, p50 and p99 (as ghz counts them), the server's CPU
time per call, the status codes seen, and Go:Python ratios taken per round
(both servers back to back) then the median over rounds. Writes OUTDIR/summary.md and
OUTDIR/summary.html and prints the Markdown.

    /usr/bin/python3 scripts/bench/ghz_summary.py OUTDIR
"""

from __future__ import annotations

import glob
import html
import json
import os
import statistics
import sys
from collections import defaultdict


def latency_ms(report: dict, pct: int) -> float | None:
    for entry in report.get("latencyDistribution") or []:
        if entry.get("percentage") == pct:
            return entry["latency"] / 1e6
    return None


def main() -> int:
    out = sys.argv[1]
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    by_round: dict[tuple[str, str, str], dict] = {}
    for path in sorted(glob.glob(os.path.join(out, "*.r*.json"))):
        profile, server, _ = os.path.basename(path).split(".", 2)
        try:
            with open(path) as f:
                report = json.load(f)
            # ghz.sh's sidecar: the server's CPU ticks during the run, CLK_TCK.
            cpu_path = path[: -len(".json")] + ".cpu"
            if os.path.exists(cpu_path):
                ticks, hz = open(cpu_path).read().split()
                calls = report.get("count", 0) + (report.get("options") or {}).get("skipFirst", 0)
                if calls:
                    report["server_cpu_us_per_call"] = int(ticks) / int(hz) / calls * 1e6
            runs[(profile, server)].append(report)
            by_round[(profile, server, os.path.basename(path).split(".")[2])] = report
        except (OSError, json.JSONDecodeError):
            pass
    profiles = list(dict.fromkeys(p for p, _ in runs))
    rows = []
    for profile in profiles:
        row = {"profile": profile}
        for server in ("go", "python"):
            reports = runs.get((profile, server), [])
            codes: dict[str, int] = defaultdict(int)
            for r in reports:
                for code, n in (r.get("statusCodeDistribution") or {}).items():
                    codes[code] += n
            ok = [r for r in reports if (r.get("statusCodeDistribution") or {}).get("OK")]
            med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
            row[server] = {
                "rounds": len(reports),
                "rps": med([r["rps"] for r in ok]),
                "rps_all": [round(r["rps"]) for r in reports],
                "p50": med([v for r in ok if (v := latency_ms(r, 50)) is not None]),
                "p99": med([v for r in ok if (v := latency_ms(r, 99)) is not None]),
                "cpu": med([r["server_cpu_us_per_call"] for r in ok if "server_cpu_us_per_call" in r]),
                "codes": dict(codes),
            }
        # Ratios per round (the two runs of a round are back to back), then
        # the median over rounds: the machine's drift cancels within a round.
        for key, field, invert in (("rps_ratio", "rps", False), ("p50_ratio", 50, True), ("p99_ratio", 99, True)):
            ratios = []
            for (p, srv, rnd), g in by_round.items():
                py = by_round.get((p, "python", rnd))
                if p != profile or srv != "go" or py is None:
                    continue
                a = g["rps"] if field == "rps" else latency_ms(g, field)
                b = py["rps"] if field == "rps" else latency_ms(py, field)
                if a and b and (g.get("statusCodeDistribution") or {}).get("OK") and (py.get("statusCodeDistribution") or {}).get("OK"):
                    ratios.append(b / a if invert else a / b)
            row[key] = statistics.median(ratios) if ratios else None
        rows.append(row)

    def fmt(v, digits=1):
        return "—" if v is None else f"{v:,.{digits}f}"

    def ratio(v):
        return "—" if v is None else f"{v:.1f}×"

    header = ["profile", "Go rps", "Python rps", "Go:Python rps", "Go p50 ms", "Python p50 ms",
              "Python:Go p50", "Go p99 ms", "Python p99 ms", "Python:Go p99", "server CPU µs/call Go / Python",
              "status codes (Go / Python)"]
    table = []
    for row in rows:
        g, p = row["go"], row["python"]
        table.append([
            row["profile"], fmt(g["rps"], 0), fmt(p["rps"], 0), ratio(row["rps_ratio"]),
            fmt(g["p50"], 2), fmt(p["p50"], 2), ratio(row["p50_ratio"]),
            fmt(g["p99"], 2), fmt(p["p99"], 2), ratio(row["p99_ratio"]),
            f"{fmt(g['cpu'], 0)} / {fmt(p['cpu'], 0)}",
            f"{json.dumps(g['codes'])} / {json.dumps(p['codes'])}",
        ])
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in table]
    md.append("")
    md.append("rps, p50, p99, CPU: medians over rounds; ratios: median of the per-round ratios "
              "(Go and Python run back to back in each round). rps per round: " + "; ".join(
        f"{r['profile']} Go {r['go']['rps_all']} Python {r['python']['rps_all']}" for r in rows))
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    machine = ""
    if os.path.exists(os.path.join(out, "machine.txt")):
        machine = open(os.path.join(out, "machine.txt")).read()
    with open(os.path.join(out, "summary.html"), "w") as f:
        f.write("<!doctype html><meta charset=utf-8><title>polystream ghz summary</title>"
                "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:3px 6px}"
                "table{border-collapse:collapse}</style><h1>polystream ghz: Go vs Python</h1>")
        f.write(f"<pre>{html.escape(machine)}</pre><table><tr>")
        f.write("".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for r in table:
            f.write("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
        f.write("</table><p>Per-run reports: ")
        f.write(", ".join(f'<a href="{html.escape(os.path.basename(p))}">{html.escape(os.path.basename(p))}</a>'
                          for p in sorted(glob.glob(os.path.join(out, "*.r*.json")))))
        f.write("</p>")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
