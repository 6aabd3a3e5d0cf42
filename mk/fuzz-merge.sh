#!/usr/bin/env bash
# Folds what fuzzing found (fuzz/target/corpus-run/<target>, written by `make fuzz`) into
# the committed corpus (fuzz/corpus/<target>), minimized like `cargo fuzz cmin`: the
# hand-made seed-* files stay as they are, and of everything else (up to 4 KiB an input,
# so that a corpus stays well under 1 MB) only the inputs that reach coverage the seeds
# do not are kept (libFuzzer -merge=1).
#
# usage: mk/fuzz-merge.sh TARGET...
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
cargo +nightly fuzz build
for t in "$@"; do
	merged=$(mktemp -d)
	found=$(mktemp -d)
	cp corpus/"$t"/seed-* "$merged"/
	mkdir -p target/corpus-run/"$t"
	before=$(find corpus/"$t" -type f | wc -l)
	# One directory at a time: the same input (named by its hash) may be in both.
	for d in corpus/"$t" target/corpus-run/"$t"; do
		find "$d" -type f ! -name 'seed-*' -size -4097c -exec cp -f -t "$found" {} +
	done
	"target/$triple/release/$t" -merge=1 -timeout=10 -rss_limit_mb=4096 \
		"$merged" "$found" >target/fuzz-merge-"$t".log 2>&1
	find corpus/"$t" -type f ! -name 'seed-*' -delete
	cp -n "$merged"/* corpus/"$t"/
	rm -rf "$merged" "$found"
	echo "fuzz-merge: $t: $before -> $(find corpus/"$t" -type f | wc -l) inputs," \
		"$(cat corpus/"$t"/* | wc -c) bytes"
done
