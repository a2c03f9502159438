//! Running a command to its end with a time limit: a child that hangs (a lost close, a
//! broker that never answers) fails its test with what it wrote so far, instead of holding
//! the whole suite until CI's own limit.

#![allow(dead_code, reason = "each test binary uses a different part of the shared helpers")]

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a command of the suite is given unless a test says otherwise.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// [`Command::output`] with a time limit.
pub trait OutputWithin {
    /// Runs the command with stdin closed and stdout and stderr captured, like
    /// [`Command::output`]; kills it and panics with its output when it is still running
    /// after `limit`.
    fn output_within(&mut self, limit: Duration) -> std::io::Result<Output>;
}

impl OutputWithin for Command {
    fn output_within(&mut self, limit: Duration) -> std::io::Result<Output> {
        let mut child = self.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let status = wait_within(&mut child, limit)?;
        let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
        match status {
            Some(status) => Ok(Output { status, stdout, stderr }),
            None => panic!(
                "{:?} was still running after {limit:?} and was killed; it wrote:\n{}\n{}",
                self.get_program(),
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        }
    }
}

/// Reads a pipe to its end on a thread of its own (so a full pipe never blocks the child).
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// The child's exit status, or `None` once it was killed after `limit`.
fn wait_within(child: &mut Child, limit: Duration) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            child.kill()?;
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
