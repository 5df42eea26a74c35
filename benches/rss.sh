# Resident-memory sampling shared by the benchmark scripts (sourced).

# sample_rss SECS DIR NAME=PID...: once a second for SECS, each PID's
# VmRSS, RssAnon and RssFile (kB) appended to DIR/NAME.rss.
sample_rss() {
  local secs=$1 dir=$2 np
  shift 2
  echo "sampling VmRSS for $secs s ..." >&2
  for _ in $(seq "$secs"); do
    sleep 1
    for np in "$@"; do
      awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s ", $2} END {print ""}' \
        "/proc/${np#*=}/status" >> "$dir/${np%%=*}.rss"
    done
  done
}

# rss_cells FILE: the Markdown cells "VmRSS median | RssAnon | RssFile |
# VmRSS max" (MB, medians of the samples) of a sample_rss file.
rss_cells() {
  python3 - "$1" <<'PY'
import statistics, sys
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
rss, anon, file_ = (statistics.median(r[i] for r in rows) / 1024 for i in range(3))
peak = max(r[0] for r in rows) / 1024
print(f"{rss:.1f} MB | {anon:.1f} MB | {file_:.1f} MB | {peak:.1f} MB")
PY
}
