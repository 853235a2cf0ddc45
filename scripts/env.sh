# Sourced by the scripts: one build directory outside the checkout, shared by every clone,
# so RocksDB's C++ is compiled once per machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}"
