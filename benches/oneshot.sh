#!/usr/bin/env bash
# One-shot `rewire render` on a directory catalog of N instances (default 10 000), process start
# to exit, nginx.conf template; prints min / median / max of 10 runs (ms). Needs a release build:
#   cargo build --release && benches/oneshot.sh [N]
set -euo pipefail
n=${1:-10000}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=$root/target/release/rewire
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 2; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/catalog/services/web" "$dir/catalog/kv"
python3 - "$dir/catalog/services/web" "$n" <<'PY'
import sys, os
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"web-{i}.json"), "w") as f:
        f.write('{"address": "10.%d.%d.%d", "port": 8080, "tags": ["v1"]}' % (i // 65536, (i // 256) % 256, i % 256))
PY
cp "$root/templates/nginx.conf.tera" "$dir/"
printf '[[template]]\nsource = "nginx.conf.tera"\ndestination = "out/nginx.conf"\n' > "$dir/rewire.toml"
times=()
for _ in $(seq 10); do
    rm -rf "$dir/out"
    start=$(date +%s%N)
    "$bin" render -c "$dir/rewire.toml" --log-level warn
    end=$(date +%s%N)
    times+=($(( (end - start) / 1000 )))
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
min=$(sed -n 1p <<<"$sorted"); med=$(sed -n 5p <<<"$sorted"); max=$(sed -n 10p <<<"$sorted")
awk -v n="$n" -v a="$min" -v b="$med" -v c="$max" 'BEGIN {
    printf "| instances | min ms | median ms | max ms |\n|---:|---:|---:|---:|\n| %d | %.1f | %.1f | %.1f |\n", n, a/1000, b/1000, c/1000 }'
