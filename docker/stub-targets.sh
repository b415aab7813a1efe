#!/bin/sh
# For the Dockerfile's dependency layer: with only Cargo.toml and Cargo.lock copied, writes
# an empty library, an empty binary and an empty main for every [[bench]] of Cargo.toml
# (cargo refuses a manifest whose targets have no file), so that `cargo build` compiles
# every dependency before any real source is copied. tests/packaging.rs runs it and checks
# that cargo finds a file for every target.
set -eu
mkdir -p src benches
echo 'fn main() {}' > src/main.rs
: > src/lib.rs
awk '
    /^\[\[bench\]\]/ { bench = 1; next }
    /^\[/ { bench = 0 }
    bench && /^name[ \t]*=/ && match($0, /"[^"]+"/) { print substr($0, RSTART + 1, RLENGTH - 2) }
' Cargo.toml | while read -r name; do
    echo 'fn main() {}' > "benches/$name.rs"
done
