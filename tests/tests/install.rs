//! The installer, as a user runs it: a release archive (packaged from the binaries this test run
//! built) served over loopback, installed by `scripts/install.sh` into a temporary prefix, and
//! the installed `shard-oracle --version` run.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use shard_tests::{binary, fresh_dir, repo_root};

/// Serves the files of `dir` over HTTP on loopback, one request at a time, until the test ends.
fn serve(dir: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut line = String::new();
            if BufReader::new(&mut stream).read_line(&mut line).is_err() {
                continue;
            }
            let name = line.split(' ').nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let path = dir.join(&name);
            let ok = !name.contains("..") && path.is_file();
            let body = if ok { std::fs::read(&path).unwrap() } else { b"not found".to_vec() };
            let status = if ok { "200 OK" } else { "404 Not Found" };
            let _ = write!(stream, "HTTP/1.0 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(&body);
            let mut rest = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(50)));
            let _ = stream.read(&mut rest);
        }
    });
    url
}

#[test]
fn the_installer_installs_a_release_archive_served_over_loopback() {
    let root = repo_root();
    assert!(root.join("dist/index.html").is_file(), "dist/ has no web app: run scripts/build-web.sh (scripts/test.sh does)");
    let out = fresh_dir("distrib");
    // The binaries under test live where `binary()` finds them; package those.
    let bin_dir = binary("shard-oracle").parent().unwrap().to_path_buf();
    let target_dir = bin_dir.parent().unwrap();
    let profile = bin_dir.file_name().unwrap().to_str().unwrap();
    let status = Command::new(root.join("scripts/release.sh"))
        .args(["--package-only", "--profile", profile, "--out"])
        .arg(&out)
        .env("CARGO_TARGET_DIR", target_dir)
        .status()
        .unwrap();
    assert!(status.success(), "scripts/release.sh failed");
    let archive = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.ends_with(".tar.gz"))
        .expect("an archive");
    let url = serve(out.clone());
    let prefix = fresh_dir("prefix");
    let installed = Command::new("sh")
        .arg(out.join("install.sh"))
        .args(["--from", &format!("{url}/{archive}"), "--prefix"])
        .arg(&prefix)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&installed.stdout);
    assert!(installed.status.success(), "install.sh failed: {said}{}", String::from_utf8_lossy(&installed.stderr));
    let version = Command::new(prefix.join("bin/shard-oracle")).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.starts_with("shard-oracle "), "{version}");
    assert!(
        prefix.join("share/shard/web/index.html").is_file()
            && prefix.join("share/shard/models/shard-draft-llama-f16.gguf").is_file()
    );
    eprintln!("{said}");
    // A tampered archive is refused by its checksum.
    let mut bytes = std::fs::read(out.join(&archive)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(out.join(&archive), bytes).unwrap();
    let refused = Command::new("sh")
        .arg(out.join("install.sh"))
        .args(["--from", &format!("{url}/{archive}"), "--prefix"])
        .arg(fresh_dir("prefix2"))
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a tampered archive was installed");
}
