# The commands a contributor runs. Nothing requires `just`: every recipe is a cargo command
# (or a script) you can also type yourself, and `.ci/run` is what CI runs.

# List the recipes.
default:
    @just --list

# The messenger end to end: a throwaway server, three users, a scripted conversation.
demo:
    cargo run -p qpq-cli -- demo

# Every test of the workspace.
test:
    cargo test --workspace

# Everything CI runs: formatting, lints, the no-default-features build and every test.
ci:
    .ci/run

# The unary tables: qrpc, tonic and raw quinn in one criterion run (64 B and 64 KiB, 1 and 64 in flight).
bench:
    cargo bench -p qrpc-benches --bench unary

# Every benchmark (qrpc, connect, qpq-core, the messenger, the SDK).
bench-all:
    cargo bench -p qrpc-benches

# Each fuzz target for a short while (needs nightly Rust and `cargo install cargo-fuzz`).
fuzz-smoke seconds="20":
    cd fuzz && for target in $(cargo +nightly fuzz list); do cargo +nightly fuzz run "$target" -- -max_total_time={{seconds}} || exit 1; done

# Call latency under packet loss, qrpc against tonic and raw quinn (root; nftables).
loss:
    sudo benches/loss.sh
