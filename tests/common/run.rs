//! Running a command to its end with a time limit: a child that hangs (a lost close, a
//! broker that never answers) fails its test with what it wrote so far, instead of holding
//! the whole suite until CI's own limit.

#![allow(dead_code, reason = "each test binary uses a different part of the shared helpers")]

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
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
        let child = self.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let Finished { output, killed } = finish_within(child, limit)?;
        if killed {
            panic!(
                "{:?} was still running after {limit:?} and was killed; it wrote:\n{}\n{}",
                self.get_program(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output)
    }
}

/// How a child ended under [`finish_within`].
pub struct Finished {
    /// What it wrote, and its exit status (that of the kill when `killed`).
    pub output: Output,
    /// It was still running at the limit and was killed.
    pub killed: bool,
}

/// Waits for `child` (started with its stdout and stderr piped) to exit, reading both pipes
/// meanwhile; kills it when it is still running after `limit`.
pub fn finish_within(mut child: Child, limit: Duration) -> std::io::Result<Finished> {
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let (status, killed) = wait_within(&mut child, limit)?;
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    Ok(Finished { output: Output { status, stdout, stderr }, killed })
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

/// The child's exit status, and whether it was killed after `limit`.
fn wait_within(child: &mut Child, limit: Duration) -> std::io::Result<(ExitStatus, bool)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        if Instant::now() >= deadline {
            child.kill()?;
            return Ok((child.wait()?, true));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
