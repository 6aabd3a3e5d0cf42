#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds, one after the other, each as one libFuzzer
# process (one core). The committed corpus (fuzz/corpus/<target>) is read, never
# written: new inputs go to fuzz/target/corpus-run/<target>, crashes to
# fuzz/artifacts/<target>. Fails when any target crashes, times out or runs out of memory.
#
# usage: mk/fuzz.sh SECS TARGET...
set -euo pipefail
secs=$1
shift
cd "$(dirname "$0")/../fuzz"

echo "== fuzz: building $# targets (cargo +nightly fuzz build, address sanitizer) =="
cargo +nightly fuzz build

failed=()
i=0
for t in "$@"; do
	i=$((i + 1))
	scratch=target/corpus-run/$t
	log=target/fuzz-logs/$t.log
	mkdir -p "$scratch" "$(dirname "$log")" "artifacts/$t"
	echo "== fuzz [$i/$#] $t: ${secs} s (log: fuzz/$log) =="
	status=0
	cargo +nightly fuzz run "$t" "$scratch" "corpus/$t" -- \
		-max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
		>"$log" 2>&1 || status=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	# Killed without libFuzzer's final stats: its last progress line has the count.
	[[ -n $execs ]] || execs=$(sed -n 's/^#\([0-9][0-9]*\)[[:space:]].*/\1/p' "$log" | tail -1)
	secs_run=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
	corpus=$(find "corpus/$t" "$scratch" -type f | wc -l)
	if ((status == 0)); then
		echo "fuzz: $t: ok, ${secs_run:-?} s, ${execs:-?} execs, corpus $corpus inputs"
	else
		failed+=("$t")
		echo "fuzz: $t: FAILED (exit $status) after ${execs:-?} execs; the end of its log:" >&2
		tail -40 "$log" >&2
		for a in "artifacts/$t"/*; do
			[[ -e $a ]] && echo "fuzz: $t: reproduce with: cd fuzz && cargo +nightly fuzz run $t $a" >&2
		done
	fi
done
if ((${#failed[@]})); then
	echo "fuzz: ${#failed[@]} of $# targets failed: ${failed[*]}" >&2
	exit 1
fi
echo "fuzz: all $# targets ran ${secs} s each without a crash"
