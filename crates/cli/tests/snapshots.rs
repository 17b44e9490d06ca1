//! Snapshot tests of stable command-line output: real invocations of the binary,
//! compared with `tests/cmd/*.toml` (run with `TRYCMD=overwrite` to update after a
//! deliberate change).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[test]
fn cli_snapshots() {
    trycmd::TestCases::new().case("tests/cmd/*.toml");
}
