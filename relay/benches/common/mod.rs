//! What the relay's process benchmarks share: the relay binary started as its own process (so
//! `/proc/<pid>/status` shows its memory alone) and its resident memory read.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_fm-relay");

/// The relay's resident memory in KiB (`VmRSS`), 0 once it is gone.
fn resident_kib(pid: u32) -> u64 {
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
        let folder = std::env::temp_dir().join(format!("fm-relay-bench-{}", std::process::id()));
        std::fs::create_dir_all(&folder).expect("a folder for the relay");
        let mut child = Command::new(BIN)
            .current_dir(&folder)
            .args([
                "serve",
                "--port",
                "0",
                "--bedrock-endpoint",
                bedrock_endpoint,
            ])
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
