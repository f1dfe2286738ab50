# Where the CPU goes, without perf (source it after lib.sh): CPU time of
# processes and of their threads from /proc, before and after a measured
# window; peak RSS; and, when perf works here, a sampled profile of the same
# processes. Used by scripts/capacity.sh and scripts/profile.sh.
#
# A snapshot is a TSV file, one line per thread: process name, PID, TID,
# thread name (comm, 15 characters at most), utime + stime in clock ticks;
# plus one line per process with TID 0 for the process's own total, which
# also holds its threads that have exited (so the sum of the threads can be
# short of it: the difference is reported as "exited threads").

CLK_TCK=$(getconf CLK_TCK)

# cpu_snapshot NAME=PID ...: the snapshot of those processes on stdout.
cpu_snapshot() {
    local spec name pid
    for spec in "$@"; do
        name=${spec%%=*} pid=${spec#*=}
        [[ -r /proc/$pid/stat ]] || continue
        # The comm field is in parentheses and may hold spaces: fields are
        # counted from the last ')' (state is then field 1, utime 12, stime 13).
        awk -v name="$name" -v pid="$pid" '{
                line = $0; close_paren = 0
                for (i = length(line); i > 0; i--) if (substr(line, i, 1) == ")") { close_paren = i; break }
                comm = substr(line, index(line, "(") + 1, close_paren - index(line, "(") - 1)
                split(substr(line, close_paren + 2), f, " ")
                tid = (FILENAME ~ /\/task\//) ? $1 : 0
                printf "%s\t%s\t%s\t%s\t%d\n", name, pid, tid, comm, f[12] + f[13]
            }' "/proc/$pid/stat" /proc/"$pid"/task/*/stat 2>/dev/null || true
    done
}

# cpu_json BEFORE AFTER: per process, the CPU seconds between the two
# snapshots, in total and by thread group (thread names with trailing
# numbers merged: "rdk:broker1" and "rdk:broker2" are "rdk:broker"), biggest first.
cpu_json() {
    awk -F '\t' -v tck="$CLK_TCK" '
        FNR == NR { before[$1 SUBSEP $3] = $5; next }
        {
            d = $5 - (($1 SUBSEP $3) in before ? before[$1 SUBSEP $3] : 0)
            if ($3 == 0) { total[$1] = d; next }
            group = $4
            sub(/[-_:#. ]?[0-9]+$/, "", group)
            threads[$1 SUBSEP group] += d
            sum[$1] += d
        }
        END {
            for (k in threads) { split(k, p, SUBSEP); printf "%s\t%s\t%.2f\n", p[1], p[2], threads[k] / tck }
            for (n in total) printf "%s\t(exited threads)\t%.2f\n", n, (total[n] - sum[n]) / tck
            for (n in total) printf "%s\t(process)\t%.2f\n", n, total[n] / tck
        }' "$1" "$2" |
        jq -R -s 'split("\n") | map(select(length > 0) | split("\t") | {process: .[0], thread: .[1], cpu_s: (.[2] | tonumber)})
            | group_by(.process) | map({key: .[0].process, value: {
                cpu_s: (map(select(.thread == "(process)")) | .[0].cpu_s),
                threads: (map(select(.thread != "(process)" and .cpu_s > 0)) | sort_by(-.cpu_s) | map({key: .thread, value: .cpu_s}) | from_entries)}})
            | from_entries'
}

# peak_rss_json NAME=PID ...: {NAME: VmHWM in KiB} of the living processes
# (rss_json: VmRSS, the resident memory now).
peak_rss_json() { status_kib_json VmHWM "$@"; }
rss_json() { status_kib_json VmRSS "$@"; }
status_kib_json() {
    local field=$1 spec
    shift
    for spec in "$@"; do
        awk -v name="${spec%%=*}" -v f="$field:" '$1 == f { printf "%s\t%s\n", name, $2 }' "/proc/${spec#*=}/status" 2>/dev/null || true
    done | jq -R -s 'split("\n") | map(select(length > 0) | split("\t") | {key: .[0], value: (.[1] | tonumber)}) | from_entries'
}

# perf_works: whether `perf record` can sample a process here (the
# software cpu-clock event; hardware counters are often missing in VMs).
perf_works() {
    command -v perf >/dev/null || return 1
    local out
    out=$(mktemp)
    perf record -q -e cpu-clock -o "$out" -- true >/dev/null 2>&1
    local ok=$?
    rm -f "$out"
    return $ok
}

# perf_profile OUT SECONDS NAME=PID ...: samples those processes (every
# thread, cpu-clock at 499 Hz, no call graphs) for SECONDS, then writes
# OUT.txt: the share of all samples by process, by process and thread group,
# by process and shared object, and each process's top symbols. The JVMs'
# JIT-compiled Java shows as one "[JIT]" object (no perf map is written).
perf_profile() {
    local out=$1 seconds=$2 pids=() map=() spec
    shift 2
    for spec in "$@"; do
        pids+=("${spec#*=}")
        map+=("${spec#*=}=${spec%%=*}")
    done
    perf record -q -e cpu-clock -F 499 -o "$out.data" -p "$(
        IFS=,
        echo "${pids[*]}"
    )" -- sleep "$seconds" >/dev/null 2>&1 || {
        log "perf record failed"
        return 0
    }
    # One line per sample: process, thread group, shared object, symbol.
    perf script -i "$out.data" -F pid,tid,comm,ip,sym,dso 2>/dev/null | awk -v map="${map[*]}" '
        BEGIN { n = split(map, m, " "); for (i = 1; i <= n; i++) { split(m[i], kv, "="); name[kv[1]] = kv[2] } }
        {
            if (!match($0, / [0-9]+\/[0-9]+ /)) next
            comm = substr($0, 1, RSTART - 1); sub(/^ +/, "", comm)
            split(substr($0, RSTART + 1, RLENGTH - 2), ids, "/")
            rest = substr($0, RSTART + RLENGTH); sub(/^ +[0-9a-f]+ ?/, "", rest)
            dso = "?"
            if (match(rest, / ?\([^()]*\)$/)) { dso = substr(rest, RSTART, RLENGTH); rest = substr(rest, 1, RSTART - 1) }
            gsub(/^ ?\(|\)$/, "", dso); sub(/.*\//, "", dso)
            if (dso ~ /^perf-[0-9]+\.map$/ || dso == "[unknown]" && comm !~ /^(tokio|rdk|tally|producer)/) dso = "[JIT]"
            sym = rest; sub(/::h[0-9a-f]{16}$/, "", sym); if (sym == "") sym = "[unknown]"
            group = comm; sub(/[-_:#. ]?[0-9]+$/, "", group)
            proc = (ids[1] in name) ? name[ids[1]] : ids[1]
            # The library a sample is in: Rust crates by the first
            # path segment, librdkafka, mimalloc and SQLite by their C prefixes.
            lib = dso
            if (dso == "[kernel.kallsyms]") lib = "kernel"
            else if (dso !~ /^tally/) lib = dso
            else if (sym ~ /^rd_/) lib = "librdkafka (C)"
            else if (sym ~ /^_?mi_/) lib = "mimalloc"
            else if (sym ~ /^(sqlite3|pager|pcache|vdbe|btree|walIndex|unixRead|unixWrite)/) lib = "SQLite (C)"
            else if (sym ~ /::/) { lib = sym; sub(/^(<|&|dyn |mut )+/, "", lib); sub(/::.*/, "", lib); sub(/<.*/, "", lib) }
            printf "%s\t%s\t%s\t%s\t%s\n", proc, group, dso, sym, lib
        }' >"$out.samples"
    local total
    total=$(wc -l <"$out.samples")
    share() { sort | uniq -c | sort -rn | awk -v t="$total" -v min="$1" '$1 / t * 100 >= min { c = $1; $1 = ""; printf "%6.2f%%  %s\n", c / t * 100, substr($0, 2) }'; }
    {
        echo "# perf record -e cpu-clock -F 499 -p <$*> -- sleep $seconds: $total samples"
        echo "## by process"
        cut -f1 "$out.samples" | share 0.1
        echo "## by process and thread group (>= 0.5%)"
        cut -f1,2 "$out.samples" | tr '\t' ' ' | share 0.5
        echo "## by process and shared object (>= 0.5%)"
        cut -f1,3 "$out.samples" | tr '\t' ' ' | share 0.5
        local name n
        for name in $(cut -f1 "$out.samples" | sort -u); do
            n=$(awk -F '\t' -v p="$name" '$1 == p' "$out.samples" | wc -l)
            # (awk stops the lists, not head: a closed pipe would fail the script under pipefail)
            echo "## $name: by library or crate, share of its own $n samples (>= 1%)"
            awk -F '\t' -v p="$name" '$1 == p { print $5 }' "$out.samples" | sort | uniq -c | sort -rn |
                awk -v t="$n" '$1 / t >= 0.01 { c = $1; $1 = ""; printf "%6.2f%%  %s\n", c / t * 100, substr($0, 2) }'
            echo "## $name: top symbols, share of its own $n samples"
            awk -F '\t' -v p="$name" '$1 == p { print $4 }' "$out.samples" | sort | uniq -c | sort -rn |
                awk -v t="$n" 'NR <= 15 { c = $1; $1 = ""; printf "%6.2f%%  %s\n", c / t * 100, substr($0, 2) }'
        done
    } >"$out.txt"
    rm -f "$out.data"
}
