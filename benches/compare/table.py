"""Side-by-side table of two benchmark result files (target/bench-results.json as written by
`cargo bench`, from different machines or backends, or target/pytorch-results.json):

    python3 benches/compare/table.py A.json B.json

Rows are matched on (kernel, shape); the last column is B's median time over A's.
"""
import json
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    rows = {(r["kernel"], r["shape"]): r for r in data["results"]}
    return data, rows


def rate(r):
    if r is None:
        return "-"
    if r.get("gflops") is not None:
        return f"{r['gflops']:.1f} GFLOP/s"
    if r.get("gbps") is not None:
        return f"{r['gbps']:.2f} GB/s"
    return ""


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    (a, ra), (b, rb) = load(sys.argv[1]), load(sys.argv[2])
    print(f"A: {a['adapter']} ({a['backend']})\nB: {b['adapter']} ({b['backend']})\n")
    print("| kernel | shape | A ms | A rate | B ms | B rate | B/A time |")
    print("|---|---|---|---|---|---|---|")
    keys = list(ra) + [k for k in rb if k not in ra]
    for key in keys:
        x, y = ra.get(key), rb.get(key)
        ms = lambda r: f"{r['median_ms']:.3f}" if r else "-"
        ratio = f"{y['median_ms'] / x['median_ms']:.2f}" if x and y else "-"
        print(f"| {key[0]} | {key[1]} | {ms(x)} | {rate(x)} | {ms(y)} | {rate(y)} | {ratio} |")


if __name__ == "__main__":
    main()
