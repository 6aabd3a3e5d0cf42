//! Exec through the real agent binary: exit statuses, streams, stdin, environment,
//! users, errors, timeouts, signals, PTYs, concurrency and backpressure.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::pb::exec_input::Input;
use agent::pb::exec_output::Output;
use agent::pb::{CloseStdin, WindowSize};
use common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_and_exit_codes() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let out = run(&mut c, start(&["echo", "hello", "world"]))
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "hello world\n");
    assert_eq!(out.code(), Some(0));
    assert!(!out.timed_out());
    assert!(out.pid > 1);
    for code in [0, 1, 42] {
        let out = run(&mut c, sh(&format!("exit {code}"))).await.unwrap();
        assert_eq!(out.code(), Some(code));
        assert!(out.stdout.is_empty() && out.stderr.is_empty());
    }
    let out = run(&mut c, start(&["/bin/false"])).await.unwrap();
    assert_eq!(out.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn death_by_signal_is_reported() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let out = run(&mut c, sh("echo before; kill -9 $$; echo after"))
        .await
        .unwrap();
    assert_eq!(out.signal(), Some(9));
    assert_eq!(out.code(), None);
    assert_eq!(out.stdout_text(), "before\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_streamed_to_sha256sum() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    // 3 MiB of varied bytes, sent in uneven chunks.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut host = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("host sha256sum");
    host.stdin.take().unwrap().write_all(&data).unwrap();
    let expected = String::from_utf8(host.wait_with_output().unwrap().stdout).unwrap();

    let mut r = spawn(&mut c, start(&["sha256sum"])).await.unwrap();
    let sender = r.input.clone().unwrap();
    let feed = tokio::spawn(async move {
        for chunk in data.chunks(50_000) {
            sender
                .send(input(Input::Stdin(chunk.to_vec().into())))
                .await
                .unwrap();
        }
        sender
            .send(input(Input::CloseStdin(CloseStdin {})))
            .await
            .unwrap();
    });
    // The input stream stays open: EOF comes from close_stdin alone.
    let out = tokio::time::timeout(Duration::from_secs(30), async {
        let mut out = String::new();
        while let Some(o) = r.next().await {
            match o {
                Output::Stdout(d) => out.push_str(&String::from_utf8_lossy(&d)),
                Output::Exited(e) => {
                    assert_eq!(e.status, Some(agent::pb::exited::Status::Code(0)));
                    break;
                }
                _ => {}
            }
        }
        out
    })
    .await
    .expect("sha256sum finished");
    feed.await.unwrap();
    assert_eq!(out, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_separate_or_merged() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2";
    let out = run(&mut c, sh(script)).await.unwrap();
    assert_eq!(out.stdout_text(), "out1\nout2\n");
    assert_eq!(out.stderr_text(), "err1\nerr2\n");
    let mut s = sh(script);
    s.merge_stderr = true;
    let out = run(&mut c, s).await.unwrap();
    assert_eq!(out.stdout_text(), "out1\nerr1\nout2\nerr2\n");
    assert!(out.stderr.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_cwd_and_user() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let out = run(
        &mut c,
        sh("echo $PATH; echo $LANG; echo $HOME; pwd; echo ${TERM:-none}"),
    )
    .await
    .unwrap();
    assert_eq!(
        out.stdout_text(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nC.UTF-8\n/root\n/\nnone\n"
    );

    let mut s = sh("echo $FOO; echo $LANG; pwd");
    s.env.insert("FOO".into(), "bar baz".into());
    s.env.insert("LANG".into(), "en_US.UTF-8".into());
    s.cwd = "/tmp".into();
    let out = run(&mut c, s).await.unwrap();
    assert_eq!(out.stdout_text(), "bar baz\nen_US.UTF-8\n/tmp\n");

    // `id` is found through the request's own PATH.
    let mut s = start(&["id", "-u"]);
    s.user = "nobody".into();
    let out = run(&mut c, s).await.unwrap();
    assert_eq!(out.stdout_text(), "65534\n");
    let mut s = sh("id -g; id -G; echo $HOME $USER");
    s.user = "65534".into();
    let out = run(&mut c, s).await.unwrap();
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "65534");
    assert!(
        !lines[1].split(' ').any(|g| g == "0"),
        "root group kept: {text}"
    );
    assert_eq!(lines[2], "/nonexistent nobody");

    let mut s = start(&["true"]);
    s.user = "no-such-user-xyz".into();
    let e = run(&mut c, s).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("no-such-user-xyz"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_program_cwd_and_bad_requests_fail_the_call() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let e = run(&mut c, start(&["no-such-program"])).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        e.message(),
        "cannot run 'no-such-program': No such file or directory"
    );
    let e = run(&mut c, start(&["/no/such/program"])).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        e.message(),
        "cannot run '/no/such/program': No such file or directory"
    );

    let mut s = start(&["pwd"]);
    s.cwd = "/no/such/dir".into();
    let e = run(&mut c, s).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        e.message(),
        "cannot run 'pwd': working directory '/no/such/dir': No such file or directory"
    );

    let e = run(&mut c, start(&[])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A first input that is not `start`.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(input(Input::Stdin(b"x".to_vec().into())))
        .await
        .unwrap();
    drop(tx);
    let e = c
        .exec(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A file that is not executable.
    let path = agent.dir.path().join("not-exec");
    std::fs::write(&path, "#!/bin/sh\necho hi\n").unwrap();
    let e = run(&mut c, start(&[path.to_str().unwrap()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // The agent still works.
    assert_eq!(run_ok(&mut c, "echo ok").await, "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_group() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let mut s = sh("echo started; sleep 100 & sleep 100");
    s.timeout_ms = 300;
    let t = Instant::now();
    let out = run(&mut c, s).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(out.signal(), Some(9));
    assert!(out.timed_out());
    assert_eq!(out.stdout_text(), "started\n");
    // A fast exec is not marked; an absurd limit is no limit.
    for ms in [10_000, u64::MAX] {
        let mut s = sh("true");
        s.timeout_ms = ms;
        let out = run(&mut c, s).await.unwrap();
        assert_eq!((out.code(), out.timed_out()), (Some(0), false));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_the_process_group() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let mut r = spawn(&mut c, start(&["sleep", "100"])).await.unwrap();
    let Some(Output::Started(s)) = r.next().await else {
        panic!("no started")
    };
    assert!(alive(s.pid));
    r.send(Input::Signal(libc::SIGTERM)).await;
    let out = tokio::time::timeout(Duration::from_secs(5), r.finish())
        .await
        .unwrap();
    assert_eq!(out.signal(), Some(libc::SIGTERM));

    // A trap sees SIGINT; the whole group (the background sleep too) gets SIGKILL.
    let mut r = spawn(
        &mut c,
        sh("trap 'echo got INT' INT; echo ready; sleep 100 & echo $!; wait; wait"),
    )
    .await
    .unwrap();
    let text = r.read_until("ready\n", Duration::from_secs(5)).await;
    let text = if text.lines().count() < 2 {
        text + &r.read_until("\n", Duration::from_secs(5)).await
    } else {
        text
    };
    let bg: u32 = text.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(alive(bg));
    r.send(Input::Signal(libc::SIGINT)).await;
    r.read_until("got INT", Duration::from_secs(5)).await;
    r.send(Input::Signal(libc::SIGKILL)).await;
    let out = tokio::time::timeout(Duration::from_secs(5), r.finish())
        .await
        .unwrap();
    assert_eq!(out.signal(), Some(9));
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(bg) {
        assert!(
            Instant::now() < deadline,
            "background sleep {bg} survived SIGKILL to its group"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_tty_and_resize() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let mut s = start(&["tty"]);
    s.tty = true;
    let out = run(&mut c, s).await.unwrap();
    let text = out.stdout_text();
    let name = text.trim_end();
    assert!(
        name.strip_prefix("/dev/pts/")
            .is_some_and(|n| n.parse::<u32>().is_ok()),
        "tty printed {text:?}"
    );
    assert_eq!(out.code(), Some(0));

    let mut s = sh("echo $TERM; stty size; read line; stty size; echo \"got $line\"");
    s.tty = true;
    s.window = Some(WindowSize { rows: 24, cols: 80 });
    let mut r = spawn(&mut c, s).await.unwrap();
    let text = r.read_until("24 80", Duration::from_secs(5)).await;
    assert!(text.contains("xterm-256color"), "{text:?}");
    r.send(Input::Resize(WindowSize {
        rows: 50,
        cols: 132,
    }))
    .await;
    r.send(Input::Stdin(b"hello\n".to_vec().into())).await;
    let text = r.read_until("got hello", Duration::from_secs(5)).await;
    assert!(text.contains("50 132"), "{text:?}");
    let out = tokio::time::timeout(Duration::from_secs(5), r.finish())
        .await
        .unwrap();
    assert_eq!(out.code(), Some(0));

    // close_stdin on a PTY is ^D: cat sees EOF.
    let mut s = start(&["cat"]);
    s.tty = true;
    let mut r = spawn(&mut c, s).await.unwrap();
    r.send(Input::Stdin(b"line\n".to_vec().into())).await;
    r.read_until("line\r\nline\r\n", Duration::from_secs(5))
        .await;
    r.send(Input::CloseStdin(CloseStdin {})).await;
    let out = tokio::time::timeout(Duration::from_secs(5), r.finish())
        .await
        .unwrap();
    assert_eq!(out.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_execs_keep_their_outputs_apart() {
    let agent = TestAgent::start();
    let c = agent.client().await;
    let mut tasks = Vec::new();
    for n in 0..20 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let script = format!(
                "i=1; while [ $i -le 500 ]; do echo \"exec-{n} line $i\"; \
                 echo \"err-{n} $i\" >&2; i=$((i+1)); done; exit {n}"
            );
            let out = run(&mut c, sh(&script)).await.unwrap();
            let expected: String = (1..=500).map(|i| format!("exec-{n} line {i}\n")).collect();
            assert_eq!(out.stdout_text(), expected, "exec {n} stdout");
            let expected: String = (1..=500).map(|i| format!("err-{n} {i}\n")).collect();
            assert_eq!(out.stderr_text(), expected, "exec {n} stderr");
            assert_eq!(out.code(), Some(n));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_blocks_only_its_own_exec() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    const TOTAL: usize = 64 << 20;
    let mut big = spawn(
        &mut c,
        start(&["head", "-c", &TOTAL.to_string(), "/dev/zero"]),
    )
    .await
    .unwrap();
    let Some(Output::Started(s)) = big.next().await else {
        panic!("no started")
    };
    // Not reading `big`: other execs on the same connection still complete.
    for i in 0..5 {
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            run(&mut c, sh(&format!("echo {i}"))),
        )
        .await
        .expect("another exec is not blocked by the stalled one")
        .unwrap();
        assert_eq!(out.stdout_text(), format!("{i}\n"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The writer is blocked on its full pipe rather than buffered into the agent.
    assert!(alive(s.pid), "head finished: its output was not held back");
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid)).unwrap();
    let rss_kb: u64 = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        rss_kb < 48 << 10,
        "agent RSS {rss_kb} kB: output piled up ({status})"
    );
    // Now read it all.
    let mut total = 0usize;
    let t = Instant::now();
    let out = loop {
        match big.next().await {
            Some(Output::Stdout(d)) => {
                assert!(
                    d.len() <= 256 * 1024,
                    "chunks are at most the agent's 256 KiB"
                );
                assert!(d.iter().all(|&b| b == 0));
                total += d.len();
            }
            Some(Output::Exited(e)) => break e,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(total, TOTAL);
    assert_eq!(out.status, Some(agent::pb::exited::Status::Code(0)));
    assert!(big.next().await.is_none());
    eprintln!("drained {} MiB in {:?}", TOTAL >> 20, t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_exec_is_killed_and_background_heirs_do_not_hold_it() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let mut r = spawn(&mut c, start(&["sleep", "100"])).await.unwrap();
    let Some(Output::Started(s)) = r.next().await else {
        panic!("no started")
    };
    assert!(alive(s.pid));
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(s.pid) {
        assert!(
            Instant::now() < deadline,
            "sleep {} survived its cancelled exec",
            s.pid
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A daemon that keeps stdout open does not keep the exec from ending.
    let t = Instant::now();
    let out = run(&mut c, sh("sleep 30 & echo $!")).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(out.code(), Some(0));
    let bg: i32 = out.stdout_text().trim().parse().unwrap();
    // SAFETY: kill(2) on the orphaned sleep; no memory involved.
    unsafe { libc::kill(bg, libc::SIGKILL) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_stdin_with_input_stream_open() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    let mut r = spawn(&mut c, start(&["cat"])).await.unwrap();
    r.send(Input::Stdin(b"abc".to_vec().into())).await;
    r.send(Input::Stdin(b"def".to_vec().into())).await;
    r.send(Input::CloseStdin(CloseStdin {})).await;
    let sender = r.input.take();
    let out = tokio::time::timeout(Duration::from_secs(5), r.finish())
        .await
        .unwrap();
    drop(sender);
    assert_eq!(out.stdout_text(), "abcdef");
    assert_eq!(out.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_nobody_reads_blocks_only_its_own_exec() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    // `sleep` never reads stdin: 16 MiB sent to it stall in flow control.
    let stuck = spawn(&mut c, start(&["sleep", "100"])).await.unwrap();
    let sender = stuck.input.clone().unwrap();
    let flood = tokio::spawn(async move {
        for _ in 0..256 {
            if sender
                .send(input(Input::Stdin(vec![b'x'; 64 * 1024].into())))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Other streams on the same connection still carry their input.
    let data = vec![b'y'; 3 << 20];
    let check = async {
        let mut r = spawn(&mut c, start(&["wc", "-c"])).await.unwrap();
        for chunk in data.chunks(64 * 1024) {
            r.send(Input::Stdin(chunk.to_vec().into())).await;
        }
        r.close_input();
        r.finish().await
    };
    let out = tokio::time::timeout(Duration::from_secs(10), check)
        .await
        .expect("stdin of another exec is not blocked by the stalled one");
    assert_eq!(out.stdout_text().trim(), (3 << 20).to_string());
    flood.abort();
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_stalled_readers_do_not_starve_the_connection() {
    let agent = TestAgent::start();
    let mut c = agent.client().await;
    // With the client's windows (1 MiB per stream, 64 MiB per connection) it takes 64
    // unread streams to use up the connection; 6 must not get near that.
    let mut stalled = Vec::new();
    for i in 0..6 {
        let started = async {
            let mut r = spawn(&mut c, start(&["head", "-c", "100000000", "/dev/zero"]))
                .await
                .unwrap();
            let Some(Output::Started(_)) = r.next().await else {
                panic!("no started")
            };
            r
        };
        let r = tokio::time::timeout(Duration::from_secs(10), started)
            .await
            .unwrap_or_else(|_| panic!("exec {i} did not start while {i} others stall"));
        stalled.push(r);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = tokio::time::timeout(Duration::from_secs(10), run(&mut c, sh("echo through")))
        .await
        .expect("an exec completes while 6 others are not being read")
        .unwrap();
    assert_eq!(out.stdout_text(), "through\n");
    drop(stalled);
}
