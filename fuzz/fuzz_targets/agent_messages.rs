//! The host <-> agent and orchestrator <-> supervisor messages: protobuf decoding (prost)
//! of every request type of agent.proto and sandbox.proto, and of the agent's answers the
//! supervisor reads, then what the agent and the supervisor do with a message before any
//! process or file is touched: the agent's exec plan (argv, environment, user, cwd, PTY
//! size), its path checks, the supervisor's exec id and argv summary, and the output log
//! that stdout/stderr chunks go into and re-attaches read from at client-chosen offsets.
//!
//! Input: frames of a kind byte, a u16 length and that many bytes of protobuf.
//! Oracles: what decodes re-encodes to a message that decodes the same.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use vmm_protocol::api::{self, exec_request};
use vmm_protocol::pb::{self, exec_input, exec_output, read_file_response, write_file_request};
use agent::server::{exec, files, pty};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use vmm::sandbox::{summarize_argv, validate_exec_id, Budget, OutputLog};
use vmm_fuzz::Reader;

/// What the supervisor reads per client message (its `CHUNK`).
const CHUNK: usize = 256 << 10;

/// An /etc with passwd and group for the agent's user lookups.
fn etc() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = vmm_fuzz::fixture_dir("agent_messages/etc");
        std::fs::write(
            dir.join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\n\
             # a comment\n\
             nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
             user:x:1000:1000::/tmp:/bin/sh\n\
             broken:x:abc:1000::/:/bin/sh\n",
        )
        .expect("fixture");
        std::fs::write(
            dir.join("group"),
            "root:x:0:\nusers:x:100:user,nobody\nuser:x:1000:\nweird:x:notanumber:user\n",
        )
        .expect("fixture");
        dir
    })
}

/// Decodes `bytes` as `M`; a message that decodes must survive a round trip.
fn decode<M: Message + Default + PartialEq>(bytes: &[u8]) -> Option<M> {
    let msg = M::decode(bytes).ok()?;
    let again = M::decode(msg.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert!(again == msg, "round trip changed the message");
    Some(msg)
}

/// What the agent does with an exec's first message: the plan, or the error it answers.
fn agent_exec_start(start: pb::ExecStart) {
    if let Ok(plan) = exec::plan(start, etc()) {
        let _ = exec::describe(&plan.argv);
        assert!(!plan.program.as_os_str().is_empty());
        assert!(plan.cwd.is_absolute());
    }
}

fn agent_path(path: &str) {
    if let Ok(p) = files::check_path(path) {
        assert!(p.is_absolute());
    }
}

struct Supervisor {
    stdout: OutputLog,
    stderr: OutputLog,
}

impl Supervisor {
    fn new() -> Self {
        let budget = Arc::new(Budget::default());
        // A small retention, so offsets fall out of the log within one input.
        Self {
            stdout: OutputLog::new(4096, budget.clone()),
            stderr: OutputLog::new(4096, budget),
        }
    }

    /// A client's message on the Exec stream.
    fn exec_request(&mut self, req: api::ExecRequest) {
        match req.request {
            Some(exec_request::Request::Start(start)) => {
                if !start.exec_id.is_empty() {
                    let _ = validate_exec_id(&start.exec_id);
                }
                if let Some(process) = start.process {
                    let summary = summarize_argv(&process.argv);
                    assert!(summary.len() <= process.argv.len());
                    agent_exec_start(process);
                }
            }
            Some(exec_request::Request::Attach(a)) => {
                let _ = validate_exec_id(&a.exec_id);
                for (log, at) in [
                    (&mut self.stdout, a.stdout_offset),
                    (&mut self.stderr, a.stderr_offset),
                ] {
                    if let Ok(data) = log.read(at, CHUNK) {
                        assert!(at + data.len() as u64 <= log.end());
                    }
                }
            }
            Some(exec_request::Request::Resize(w)) => {
                let _ = pty::clamp_size(w.rows, w.cols);
            }
            _ => {}
        }
    }

    /// The agent's answer on the Exec stream.
    fn exec_output(&mut self, out: pb::ExecOutput) {
        match out.output {
            Some(exec_output::Output::Stdout(data)) => self.stdout.push(data),
            Some(exec_output::Output::Stderr(data)) => self.stderr.push(data),
            Some(exec_output::Output::Exited(_)) => {
                self.stdout.finish();
                self.stderr.finish();
            }
            _ => {}
        }
        for log in [&mut self.stdout, &mut self.stderr] {
            let _ = log.has_room();
            assert!(log.oldest() <= log.end());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut supervisor = Supervisor::new();
    while !r.is_empty() {
        let kind = r.u8();
        let bytes = r.long_bytes(1 << 16);
        match kind % 20 {
            0 => drop(decode::<pb::PingRequest>(bytes)),
            1 => match decode::<pb::ExecInput>(bytes).and_then(|i| i.input) {
                Some(exec_input::Input::Start(start)) => agent_exec_start(start),
                Some(exec_input::Input::Resize(w)) => drop(pty::clamp_size(w.rows, w.cols)),
                _ => {}
            },
            2 => {
                if let Some(write_file_request::Part::Header(h)) =
                    decode::<pb::WriteFileRequest>(bytes).and_then(|w| w.part)
                {
                    agent_path(&h.path);
                }
            }
            3 => {
                if let Some(req) = decode::<pb::ReadFileRequest>(bytes) {
                    agent_path(&req.path);
                }
            }
            4 => {
                if let Some(req) = decode::<pb::MakeDirRequest>(bytes) {
                    agent_path(&req.path);
                }
            }
            5 => {
                if let Some(req) = decode::<pb::ListRequest>(bytes) {
                    agent_path(&req.path);
                }
            }
            6 => {
                if let Some(req) = decode::<pb::StatRequest>(bytes) {
                    agent_path(&req.path);
                }
            }
            7 => {
                if let Some(req) = decode::<pb::RemoveRequest>(bytes) {
                    agent_path(&req.path);
                }
            }
            8 => {
                if let Some(req) = decode::<pb::RenameRequest>(bytes) {
                    agent_path(&req.from);
                    agent_path(&req.to);
                }
            }
            9 => drop(decode::<pb::ShutdownRequest>(bytes)),
            10 => {
                if let Some(req) = decode::<api::ExecRequest>(bytes) {
                    supervisor.exec_request(req);
                }
            }
            11 => drop(decode::<api::StatusRequest>(bytes)),
            12 => {
                if let Some(req) = decode::<api::TerminateRequest>(bytes) {
                    let _ = std::time::Duration::from_millis(req.grace_ms);
                }
            }
            13 => {
                if let Some(out) = decode::<pb::ExecOutput>(bytes) {
                    supervisor.exec_output(out);
                }
            }
            14 => {
                if let Some(read_file_response::Part::Data(d)) =
                    decode::<pb::ReadFileResponse>(bytes).and_then(|r| r.part)
                {
                    assert!(d.len() <= bytes.len());
                }
            }
            15 => drop(decode::<pb::ListResponse>(bytes)),
            16 => drop(decode::<pb::FileInfo>(bytes)),
            17 => drop(decode::<pb::PingResponse>(bytes)),
            18 => drop(decode::<pb::WriteFileResponse>(bytes)),
            _ => drop(decode::<api::StatusResponse>(bytes)),
        }
    }
});
