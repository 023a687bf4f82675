//! The `fm-sim` binary as a user runs it: `--port 0` listens and logs its endpoint, and
//! `--print-config` prints a configuration it can read back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_fm-sim");

#[test]
fn print_config_round_trips_through_config() {
    let output = Command::new(BIN)
        .args(["--print-config", "--seed", "7", "--first-token-ms", "5"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let config: fm_sim::SimConfig =
        toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(config.seed, 7);
    assert_eq!(config.default_model.first_token_ms, 5);

    let output = Command::new(BIN)
        .args(["--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent.toml"));
}

#[test]
fn serves_on_the_port_it_logs() {
    let mut child = Command::new(BIN)
        .args(["--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let endpoint = loop {
        let line = lines
            .next()
            .expect("fm-sim exited before listening")
            .unwrap();
        if let Some(at) = line.find("endpoint=http://") {
            break line[at + "endpoint=http://".len()..].trim().to_string();
        }
    };
    let mut stream = TcpStream::connect(&endpoint).unwrap();
    write!(
        stream,
        "GET /_sim/stats HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"requests\":0"), "{response}");
}
