//! The README's "First five minutes" works exactly as written: its commands are read out of
//! README.md and run, with `cargo run ... --bin cpis --` standing for the built binary and the
//! gateway moved to a free port (CPIS_DEV_LISTEN, CPIS_GATEWAY) so the test can run anywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const START: &str = "<!-- first-five-minutes:start";
const END: &str = "<!-- first-five-minutes:end -->";
const CARGO_RUN: [&str; 2] = ["cargo run -q --bin cpis --", "cargo run --bin cpis --"];

/// The ```sh blocks between the markers, each as its lines.
fn walkthrough_blocks() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme
        .find(START)
        .expect("the README has the walkthrough markers");
    let end = readme[start..].find(END).unwrap() + start;
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in readme[start..end].lines() {
        match (&mut current, line.trim()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), text) if !text.is_empty() => block.push(text.to_owned()),
            _ => {}
        }
    }
    blocks
}

fn as_built(line: &str) -> String {
    let binary = format!("'{}'", env!("CARGO_BIN_EXE_cpis"));
    let mut line = line.to_owned();
    for prefix in CARGO_RUN {
        line = line.replace(prefix, &binary);
    }
    assert!(
        !line.contains("cargo "),
        "an unexpected cargo command: {line}"
    );
    line
}

/// Sends each line the stream produces, so the test can wait for one with a deadline.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects lines until one satisfies `done`; panics with everything seen after `limit`.
fn wait_for(
    rx: &mpsc::Receiver<String>,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let finished = done(&line);
                seen.push(line);
                if finished {
                    return seen;
                }
            }
            Err(_) => panic!("gave up waiting; saw:\n{}", seen.join("\n")),
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_first_five_minutes_walkthrough_works_as_written() {
    let blocks = walkthrough_blocks();
    assert_eq!(blocks.len(), 4, "{blocks:?}");
    assert_eq!(
        blocks[0].len(),
        1,
        "the first block starts the system: {blocks:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/example-flags.csv"),
        dir.path().join("docs/example-flags.csv"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let shell = |script: String| {
        let mut command = Command::new("bash");
        command
            .args(["-e", "-c", &script])
            .current_dir(dir.path())
            .env("CPIS_DEV_LISTEN", format!("127.0.0.1:{port}"))
            .env("CPIS_GATEWAY", format!("http://127.0.0.1:{port}"))
            .env_remove("CPIS_TOKEN")
            .env_remove("CPIS_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        KillOnDrop(command.spawn().unwrap())
    };

    // Terminal 1: the system with demo data; ready once it says what to try.
    let mut dev = shell(format!("exec {}", as_built(&blocks[0][0])));
    let dev_err = lines_of(dev.0.stderr.take().unwrap());
    let _dev_out = lines_of(dev.0.stdout.take().unwrap());
    wait_for(&dev_err, Duration::from_secs(120), |l| {
        l.starts_with("Try:")
    });

    // Terminal 2: every other command in order; the last (watch) runs until we stop it.
    let mut lines: Vec<String> = blocks[1..].iter().flatten().map(|l| as_built(l)).collect();
    let last = lines.pop().unwrap();
    lines.push(format!("exec {last}"));
    let mut terminal = shell(lines.join("\n"));
    let out = lines_of(terminal.0.stdout.take().unwrap());
    let err = lines_of(terminal.0.stderr.take().unwrap());
    let seen = wait_for(&out, Duration::from_secs(120), |l| {
        l.contains("9991234500 (Child Protection Plan) was looked up at")
    });
    let text = seen.join("\n");
    assert!(
        text.contains("UPLOAD_STATUS_SUCCESS: 3 accepted, 0 rejected"),
        "{text}"
    );
    assert!(text.contains("NHS number 999 123 4500: FLAGGED"), "{text}");
    assert!(text.contains("emergency duty: 01632 960100"), "{text}");
    assert!(
        terminal.0.try_wait().unwrap().is_none(),
        "watch keeps running: {:?}",
        err.try_iter().collect::<Vec<_>>()
    );
    // The cursor is stored right after the line is printed.
    let cursor_file = dir.path().join("cpis-data/la-cursor");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cursor_file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let cursor = std::fs::read_to_string(&cursor_file).unwrap();
    assert!(cursor.trim().parse::<u64>().unwrap() >= 1);
}
