//! Settings of a benchmark from the environment, shared by the benchmarks that include it
//! (`#[path = "support/env.rs"] mod env;`).

/// Whether this is a smoke run: the test command runs every benchmark once without `--bench`
/// (`cargo test --all-targets`), to prove it works without timing it.
pub fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// The variable `name`, unless unset or blank.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The number in variable `name`, or `default`; panics naming the variable when it is not a
/// number.
pub fn num(name: &str, default: usize) -> usize {
    var(name).map_or(default, |v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}
