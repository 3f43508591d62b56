//! Link-time code layout for release-like builds (`release`, `dist`, `bench`).
//!
//! The kernel maps an executable's code 64 KB around each page fault, so how much of the binary
//! a running rewire keeps resident depends on where the functions it runs sit in `.text`, not
//! only on how many there are. `link/symbol-order.txt` lists the functions a daemon executes
//! (`scripts/order-symbols` makes it by running rewire under valgrind); lld places them first,
//! together. Measured on idle dir-catalog daemons: 6-6.8 MB of the binary resident before,
//! 2.7-3.3 MB after, nothing else changed (README, Performance, "Idle memory").
//!
//! Only layout changes: a name the file lists that the build does not have is skipped, silently,
//! so a stale file costs memory, never correctness. `dist` keeps its names across source
//! changes, but not across a change of dependencies (Cargo hashes them into every name);
//! `release` renames a changed codegen unit's shared helpers, so its list goes stale with any
//! change to this crate (see `scripts/order-symbols`).
//!
//! The option is lld's and GNU ld refuses it, so it is passed only where lld links:
//! x86_64-unknown-linux-gnu with the toolchain's own lld present (rustup's toolchains since
//! 1.90; a distribution's rustc may link with the system's ld instead) and no other linker asked
//! for. `REWIRE_SYMBOL_ORDER=off` turns it off.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=link/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=REWIRE_SYMBOL_ORDER");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let default_lld = var("TARGET") == "x86_64-unknown-linux-gnu";
    // A linker of the user's own (`linker = ...` in cargo's config or its environment variable:
    // cargo tells build scripts as RUSTC_LINKER) or linker flags may mean another than lld.
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let other_linker = env::var_os("RUSTC_LINKER").is_some()
        || flags.contains("linker")
        || flags.contains("fuse-ld");
    let off = var("REWIRE_SYMBOL_ORDER") == "off";
    if !(release && default_lld) || other_linker || off || !toolchain_lld(&var("RUSTC")) {
        return;
    }
    let order = std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("link/symbol-order.txt");
    // `-Wl,` splits its argument at commas: a path with one cannot be passed this way.
    if !order.exists() || order.to_string_lossy().contains(',') {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// Whether the toolchain carries the lld it links x86_64-unknown-linux-gnu with.
fn toolchain_lld(rustc: &str) -> bool {
    let Ok(out) = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
    else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::path::Path::new(&sysroot)
        .join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld")
        .exists()
}
