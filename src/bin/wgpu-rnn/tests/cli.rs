//! Hostile and edge input to the `wgpu-rnn` command line, run as a subprocess: every case
//! ends with exit code 1 or 2 and a message naming the cause, or with a correct result; never
//! a panic (101), an abort (134), a signal or a hang.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a case may run before it counts as a hang.
const TIMEOUT: Duration = Duration::from_secs(120);

/// How a case must end.
enum Expect<'a> {
    /// This exit code, with every one of these fragments in stdout or stderr.
    Fails(i32, &'a [&'a str]),
    /// Exit code 0, with every one of these fragments in stdout.
    Succeeds(&'a [&'a str]),
}

/// Runs the CLI with `args`, killing it after [`TIMEOUT`]: (exit code, stdout + stderr).
fn run(args: &[&str]) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-cli-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = args.join("_").replace(['/', ' ', '.'], "-");
    let name: String = name.chars().take(80).collect();
    let (out, err) = (
        dir.join(format!("{name}.out")),
        dir.join(format!("{name}.err")),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgpu-rnn"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            child.kill().ok();
            child.wait().ok();
            panic!("`wgpu-rnn {}` hangs (over {TIMEOUT:?})", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out).unwrap() + &std::fs::read_to_string(&err).unwrap();
    (status.code(), text)
}

fn check(args: &[&str], expect: Expect<'_>) {
    let (code, text) = run(args);
    let shown = format!("`wgpu-rnn {}` gave {code:?}:\n{text}", args.join(" "));
    assert!(
        !matches!(code, None | Some(101) | Some(134)),
        "crashed: {shown}"
    );
    let (want, fragments) = match expect {
        Expect::Fails(want, fragments) => (want, fragments),
        Expect::Succeeds(fragments) => (0, fragments),
    };
    assert_eq!(code, Some(want), "{shown}");
    for fragment in fragments {
        assert!(text.contains(fragment), "no `{fragment}` in {shown}");
    }
}

/// A scratch directory for this test binary's input files.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgpu-rnn-cli-in-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn sizes_are_checked_before_anything_is_allocated() {
    use Expect::Fails;
    check(
        &["bench", "--hidden", "100000", "--backend", "cpu"],
        Fails(2, &["host memory", "--hidden"]),
    );
    check(
        &[
            "bench",
            "--seq",
            "4294967296",
            "--batch",
            "4294967296",
            "--backend",
            "cpu",
        ],
        Fails(2, &["overflows"]),
    );
    check(
        &[
            "train",
            "charlm",
            "--seq-len",
            "4294967296",
            "--batch",
            "4294967296",
        ],
        Fails(2, &["overflows", "--seq-len"]),
    );
    check(
        &["train", "adding", "--hidden", "1000000", "--steps", "1"],
        Fails(2, &["host memory", "--hidden"]),
    );
}

#[test]
fn invalid_options_are_errors_naming_the_option() {
    use Expect::Fails;
    for (args, option) in [
        (&["bench", "--hidden", "0"][..], "--hidden"),
        (&["bench", "--batch", "-3"], "--batch"),
        (&["train", "adding", "--hidden", "0"], "--hidden"),
        (&["train", "adding", "--seq-len", "0"], "--seq-len"),
        (&["train", "adding", "--clip", "nan"], "--clip"),
        (&["train", "adding", "--clip", "-1"], "--clip"),
        (&["train", "adding", "--clip", "inf"], "--clip"),
        (&["train", "adding", "--lr", "0"], "--lr"),
        (&["train", "charlm", "--dropout", "1.5"], "--dropout"),
        (&["train", "charlm", "--layers", "0"], "--layers"),
        (&["gradflow", "--forget-bias", "nan"], "--forget-bias"),
        (&["bench", "--cell", "transformer"], "transformer"),
        (&["bench", "--mode", "sideways"], "--mode"),
    ] {
        check(args, Fails(2, &[option]));
    }
}

#[test]
fn text_problems_are_named_before_training() {
    use Expect::Fails;
    let dir = scratch();
    let lower = write(
        &dir,
        "lower.txt",
        "all lower case text, ".repeat(1000).as_bytes(),
    );
    check(
        &["train", "charlm", "--text", &lower, "--steps", "1000000"],
        Fails(2, &["prime", "'T'", "--prime"]),
    );
    let short = write(
        &dir,
        "short.txt",
        b"a short text of forty characters or so..",
    );
    check(
        &["train", "charlm", "--text", &short, "--steps", "1"],
        Fails(2, &["held-out tail", "of its 40 characters"]),
    );
    let missing = dir.join("missing.txt");
    let missing = missing.to_str().unwrap();
    check(
        &["train", "charlm", "--text", missing],
        Fails(2, &[missing]),
    );
    let not_utf8 = write(&dir, "binary.txt", &[0xff, 0xfe, 0x00, 0x80]);
    check(
        &["train", "charlm", "--text", &not_utf8],
        Fails(2, &[not_utf8.as_str()]),
    );
    let garbage = write(
        &dir,
        "garbage.safetensors",
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}",
    );
    check(
        &["train", "charlm", "--resume", &garbage, "--steps", "2"],
        Fails(2, &[garbage.as_str()]),
    );
}

#[test]
fn verify_checks_every_file_names_each_error_and_sums_up() {
    let dir = scratch();
    let good = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../tests/fixtures/torch/gru_1layer.safetensors"
    );
    let garbage = write(&dir, "fixture.safetensors", b"not a safetensors file");
    let missing = dir.join("absent.safetensors");
    let missing = missing.to_str().unwrap();
    check(
        &["verify", "--backend", "cpu", &garbage, good, missing],
        Expect::Fails(
            1,
            &[
                garbage.as_str(),
                missing,
                "PASS",
                "1 of 3 files passed",
                "not passed:",
            ],
        ),
    );
}

#[test]
fn small_runs_give_results() {
    check(
        &[
            "train",
            "adding",
            "--steps",
            "3",
            "--batch",
            "2",
            "--seq-len",
            "5",
            "--hidden",
            "3",
        ],
        Expect::Succeeds(&["final_mse"]),
    );
    check(
        &[
            "bench",
            "--cell",
            "gru",
            "--batch",
            "1",
            "--seq",
            "2",
            "--hidden",
            "3",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--backend",
            "cpu",
        ],
        Expect::Succeeds(&["gru B=1 T=2 I=3 H=3"]),
    );
}

#[test]
fn resume_honours_and_reports_changes_and_refuses_another_text() {
    let dir = scratch();
    let checkpoint = dir.join("lm.safetensors");
    let checkpoint = checkpoint.to_str().unwrap();
    let small = [
        "train",
        "charlm",
        "--hidden",
        "4",
        "--layers",
        "1",
        "--batch",
        "2",
        "--seq-len",
        "8",
    ];
    let args = |extra: &[&'static str]| {
        let mut args: Vec<&str> = small.to_vec();
        args.extend_from_slice(extra);
        args
    };
    check(
        &[args(&["--steps", "2", "--checkpoint"]), vec![checkpoint]].concat(),
        Expect::Succeeds(&["final_bpc"]),
    );
    let json = dir.join("resumed.json");
    let json = json.to_str().unwrap();
    check(
        &[
            args(&["--steps", "4", "--lr", "0.5", "--seed", "7", "--resume"]),
            vec![checkpoint, "--json", json],
        ]
        .concat(),
        Expect::Succeeds(&[
            "resume: lr was 0.003",
            "this run uses 0.5",
            "resume: seed was 0",
        ]),
    );
    let report = std::fs::read_to_string(json).unwrap();
    assert!(report.contains("\"resume_changes\""), "{report}");
    let lower = write(
        &dir,
        "other.txt",
        "another text, all lower case. ".repeat(900).as_bytes(),
    );
    check(
        &[
            args(&["--steps", "4", "--text"]),
            vec![&lower, "--prime", "a", "--resume", checkpoint],
        ]
        .concat(),
        Expect::Fails(2, &[checkpoint, "vocabulary"]),
    );
}

#[test]
fn outputs_that_cannot_be_written_are_refused_before_the_run() {
    use Expect::Fails;
    let dir = scratch();
    let folder = dir.to_str().unwrap();
    let nowhere = dir.join("no/such/folder/out.json");
    let nowhere = nowhere.to_str().unwrap();
    let text = write(
        &dir,
        "input.txt",
        "Some text to train on. ".repeat(400).as_bytes(),
    );
    check(
        &["train", "adding", "--steps", "100000", "--json", folder],
        Fails(2, &["--json", "is a folder"]),
    );
    check(
        &["gradflow", "--plot", nowhere],
        Fails(2, &["--plot", "does not exist"]),
    );
    check(
        &["bench", "--json", nowhere],
        Fails(2, &["--json", "does not exist"]),
    );
    check(
        &["train", "charlm", "--text", &text, "--checkpoint", &text],
        Fails(2, &["--checkpoint", "one of the run's inputs"]),
    );
    assert!(std::fs::read_to_string(&text)
        .unwrap()
        .starts_with("Some text"));
    check(
        &[
            "train",
            "charlm",
            "--steps",
            "100000",
            "--checkpoint",
            nowhere,
        ],
        Fails(2, &["--checkpoint", "does not exist"]),
    );
}

#[test]
fn gradflow_sizes_are_checked_before_allocation() {
    check(
        &["gradflow", "--seq-len", "100000000", "--hidden", "100000"],
        Expect::Fails(2, &["gradflow", "host memory"]),
    );
}

#[test]
fn an_unknown_wgpu_backend_is_an_error_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_wgpu-rnn"))
        .arg("info")
        .env("WGPU_BACKEND", "nonsense")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(
        matches!(output.status.code(), Some(1 | 2)),
        "{:?}: {text}",
        output.status
    );
    assert!(text.contains("WGPU_BACKEND=`nonsense`"), "{text}");
}
