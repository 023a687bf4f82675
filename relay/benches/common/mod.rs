//! What the relay's process benchmarks share: the relay binary started as its own process (so
//! `/proc/<pid>/status` shows its memory alone) and its resident memory read.

// Each bench uses its own share of these.
#![allow(dead_code)]

pub mod pass_through;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_fm-relay");

/// A process's resident memory in KiB (`VmRSS`), 0 once it is gone.
pub fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `fm-relay serve` on a free port in front of `bedrock_endpoint`, with `args` added, in a folder
/// of its own (its usage ledger goes there); stopped with SIGTERM, and the folder removed, when
/// dropped.
pub struct RelayProcess {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    folder: std::path::PathBuf,
}

impl RelayProcess {
    pub fn start(bedrock_endpoint: &str, args: &[&str]) -> RelayProcess {
        let mut all_args = vec!["--port", "0", "--bedrock-endpoint", bedrock_endpoint];
        all_args.extend_from_slice(args);
        RelayProcess::serve(RelayProcess::folder(), &all_args)
    }

    /// `fm-relay serve --config FILE --port 0` with `config` written to FILE.
    pub fn start_configured(config: &fm_relay::RelayConfig) -> RelayProcess {
        let folder = RelayProcess::folder();
        let file = folder.join("relay.toml");
        std::fs::write(&file, toml::to_string(config).expect("a config as TOML"))
            .expect("the relay's config file");
        let file = file.to_str().expect("a UTF-8 temp path").to_string();
        RelayProcess::serve(folder, &["--config", &file, "--port", "0"])
    }

    /// A fresh folder for one relay process.
    fn folder() -> std::path::PathBuf {
        let folder = std::env::temp_dir().join(format!(
            "fm-relay-bench-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&folder).expect("a folder for the relay");
        folder
    }

    fn serve(folder: std::path::PathBuf, args: &[&str]) -> RelayProcess {
        let mut child = Command::new(BIN)
            .current_dir(&folder)
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "warn,fm_relay=info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("fm-relay starts");
        let mut log = BufReader::new(child.stderr.take().expect("piped")).lines();
        let addr = loop {
            let line = log.next().expect("fm-relay exited").expect("a log line");
            if let Some(at) = line.find("url=http://") {
                break line[at + "url=http://".len()..].trim().to_string();
            }
        };
        std::thread::spawn(move || log.for_each(drop));
        RelayProcess {
            child,
            addr,
            folder,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn resident_kib(&self) -> u64 {
        resident_kib(self.pid())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// The environment variable `name` read as a `T`, or `default` when it is not set.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}: cannot read `{value}`")),
        Err(_) => default,
    }
}
