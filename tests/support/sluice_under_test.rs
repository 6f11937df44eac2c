//! The `sluice` binary, built by the same `cargo test` as the end-to-end tests so that it links
//! their build of the library (see the root Cargo.toml). Identical to `dispatcher/src/main.rs`.

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
