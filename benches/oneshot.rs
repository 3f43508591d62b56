//! One-shot `rewire render` of a directory catalog of N instances (default 10 000) with
//! `templates/nginx.conf.tera`, process start to exit, beside its floor measured in the same
//! run: a process that only opens and reads the same N files.
//!
//! `cargo bench --bench oneshot -- [N] [--runs R]`; `REWIRE_BIN=target/dist/rewire` measures a
//! given binary (default: the one cargo built for the bench). `benches/oneshot.sh` runs it.
//!
//! The floor is this benchmark's own binary started again with `--floor DIR`: it lists the
//! service directory and opens, reads and closes every file (relative to the directory, on as
//! many threads as rewire uses: the machine's cores, at most 4), then exits. Runs alternate
//! between rewire and the floor so both see the same machine. Prints min / median / max of
//! each and the ratio of the medians. Run by `cargo test --all-targets` (no `--bench`), it
//! renders 1 000 instances twice and checks only that rewire wrote the file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = raw.iter().position(|a| a == "--floor") {
        let dir = PathBuf::from(raw.get(i + 1).expect("--floor DIR"));
        let bytes = floor(&dir);
        std::process::exit(if bytes > 0 { 0 } else { 1 });
    }
    let bench = raw.iter().any(|a| a == "--bench");
    let mut n: usize = if bench { 10_000 } else { 1_000 };
    let mut runs: usize = if bench { 10 } else { 2 };
    let mut it = raw.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            other => {
                if let Ok(v) = other.parse() {
                    n = v;
                }
            }
        }
    }
    let bin = std::env::var_os("REWIRE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_rewire")));
    let dir = tempfile::tempdir().expect("temp dir");
    let services = dir.path().join("catalog/services/web");
    std::fs::create_dir_all(&services).unwrap();
    std::fs::create_dir_all(dir.path().join("catalog/kv")).unwrap();
    for i in 0..n {
        std::fs::write(
            services.join(format!("web-{i}.json")),
            format!(
                r#"{{"address": "10.{}.{}.{}", "port": 8080, "tags": ["v1"]}}"#,
                i / 65536,
                (i / 256) % 256,
                i % 256
            ),
        )
        .unwrap();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(
        root.join("templates/nginx.conf.tera"),
        dir.path().join("nginx.conf.tera"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rewire.toml"),
        "[[template]]\nsource = \"nginx.conf.tera\"\ndestination = \"out/nginx.conf\"\n",
    )
    .unwrap();
    let me = std::env::current_exe().expect("own path");
    let (mut rewire, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(dir.path().join("out"));
        let started = Instant::now();
        let status = Command::new(&bin)
            .args(["render", "-c"])
            .arg(dir.path().join("rewire.toml"))
            .args(["--log-level", "warn"])
            .status()
            .expect("start rewire");
        rewire.push(started.elapsed());
        assert!(status.success(), "rewire render failed: {status}");
        let out = std::fs::read_to_string(dir.path().join("out/nginx.conf")).unwrap();
        assert!(
            out.contains("10.0.0.0:8080"),
            "the render lacks the instances"
        );

        let started = Instant::now();
        let status = Command::new(&me)
            .arg("--floor")
            .arg(&services)
            .status()
            .expect("start the floor");
        floor.push(started.elapsed());
        assert!(status.success(), "the floor read nothing");
    }
    rewire.sort();
    floor.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let med = |v: &[Duration]| v[v.len() / 2];
    println!(
        "\nOne-shot `rewire render`, {n} dir instances, nginx.conf.tera, process start to exit ({runs} runs each, alternating; {})",
        bin.display()
    );
    println!("| | min ms | median ms | max ms |\n|---|---:|---:|---:|");
    for (name, v) in [
        ("rewire render", &rewire),
        ("floor: open + read the files", &floor),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            ms(v[0]),
            ms(med(v)),
            ms(v[v.len() - 1])
        );
    }
    println!(
        "rewire / floor (medians): {:.2}x",
        ms(med(&rewire)) / ms(med(&floor))
    );
}

/// Opens and reads every file of `dir` on the threads rewire would use; returns the bytes read.
fn floor(dir: &Path) -> usize {
    use std::os::unix::ffi::OsStrExt;
    let names: Vec<std::ffi::CString> = std::fs::read_dir(dir)
        .expect("list the floor's directory")
        .filter_map(|e| std::ffi::CString::new(e.ok()?.file_name().as_bytes()).ok())
        .collect();
    let dir_file = std::fs::File::open(dir).expect("open the floor's directory");
    let dirfd = std::os::fd::AsRawFd::as_raw_fd(&dir_file);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let chunk = names.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = names
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    let mut buf = Vec::with_capacity(4096);
                    let mut total = 0;
                    for name in c {
                        // SAFETY: a valid directory descriptor and a NUL-terminated name.
                        let fd = unsafe {
                            libc::openat(dirfd, name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC)
                        };
                        if fd < 0 {
                            continue;
                        }
                        // SAFETY: a descriptor we own from here.
                        let mut f =
                            unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                        buf.clear();
                        total += f.read_to_end(&mut buf).unwrap_or(0);
                    }
                    total
                })
            })
            .collect();
        parts.into_iter().map(|p| p.join().unwrap_or(0)).sum()
    })
}
