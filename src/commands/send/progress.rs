//! `FILE.progress.jsonl`: what the platform accepted or refused of one input file, so that
//! a back-fill cut short (interrupted, stopped by the daily limit, the machine restarted)
//! and started again with the same file sends only what is left.
//!
//! The first line names the file by the SHA-1 of its content, the transaction and the
//! institution; a progress file of another content is not used (the run starts afresh and
//! replaces it). Each later line is one settled call: `{"accepted": [[first, last], ...]}`
//! (line ranges) or `{"refused": {"line": N, "return_code": C, "message": "..."}}`. Lines are
//! flushed to the operating system as calls are settled; a last line cut short by a crash
//! is skipped, and its rows are sent again (harmless: the platform keeps one row per key).
//!
//! Memory: the accepted lines as ranges (a handful: calls settle nearly in order) and each
//! refused line with its message (as many as the run's refusals, each of which cost calls).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rangemap::RangeInclusiveSet;
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use crate::spec::Infno;

/// The first line: which file, transaction and institution the progress is of.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    progress_of: String,
    sha1: String,
    infno: Infno,
    institution: String,
}

/// One refused row, as the platform answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Refusal {
    line: u64,
    /// The platform's returnCode.
    pub(super) return_code: u32,
    /// The platform's message.
    pub(super) message: String,
}

/// A later line: one settled call.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Settlement {
    Accepted(Vec<(u64, u64)>),
    Refused(Refusal),
}

/// The progress of one input file: what earlier runs settled, and the file this run adds to.
pub(super) struct Progress {
    path: PathBuf,
    file: BufWriter<File>,
    accepted: RangeInclusiveSet<u64>,
    refused: HashMap<u64, Refusal>,
}

/// Which input a progress file is for.
pub(super) struct Input<'a> {
    /// The input file.
    pub(super) path: &'a Path,
    /// Its transaction.
    pub(super) infno: Infno,
    /// Its institution's code.
    pub(super) institution: &'a str,
}

impl Progress {
    /// The progress file beside `input.path`: read and continued when it is of the same
    /// content, transaction and institution (and `fresh` is not set), else started afresh.
    pub(super) fn open(input: &Input<'_>, fresh: bool) -> anyhow::Result<Progress> {
        let path = progress_path(input.path);
        let header = Header {
            progress_of: input.path.file_name().unwrap_or_default().to_string_lossy().into_owned(),
            sha1: content_sha1(input.path)?,
            infno: input.infno,
            institution: input.institution.to_owned(),
        };
        let earlier = if fresh { None } else { read_earlier(&path, &header)? };
        let (accepted, refused) = earlier.unwrap_or_default();
        let file = rewrite(&path, &header, &accepted, &refused)?;
        Ok(Progress { path, file, accepted, refused })
    }

    /// Whether an earlier run had `line` accepted.
    pub(super) fn accepted_earlier(&self, line: u64) -> bool {
        self.accepted.contains(&line)
    }

    /// The refusal of `line` in an earlier run, if it was refused.
    pub(super) fn refused_earlier(&self, line: u64) -> Option<&Refusal> {
        self.refused.get(&line)
    }

    /// Whether an earlier run settled anything of this file.
    pub(super) fn resumed(&self) -> bool {
        !self.accepted.is_empty() || !self.refused.is_empty()
    }

    /// Records that the platform accepted `lines`.
    pub(super) fn accepted(&mut self, lines: impl IntoIterator<Item = u64>) -> anyhow::Result<()> {
        let mut ranges: RangeInclusiveSet<u64> = RangeInclusiveSet::new();
        for line in lines {
            ranges.insert(line..=line);
        }
        let settled = Settlement::Accepted(ranges.iter().map(|r| (*r.start(), *r.end())).collect());
        self.write(&settled)
    }

    /// Records that the platform refused `line`.
    pub(super) fn refused(&mut self, line: u64, return_code: u32, message: &str) -> anyhow::Result<()> {
        self.write(&Settlement::Refused(Refusal { line, return_code, message: message.to_owned() }))
    }

    fn write(&mut self, settled: &Settlement) -> anyhow::Result<()> {
        let text = serde_json::to_string(settled)?;
        writeln!(self.file, "{text}").and_then(|()| self.file.flush()).with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Writes `path` anew with what earlier runs settled (compacted: one line of accepted
/// ranges), through a temporary file renamed over it, and returns it open for appending.
fn rewrite(
    path: &Path,
    header: &Header,
    accepted: &RangeInclusiveSet<u64>,
    refused: &HashMap<u64, Refusal>,
) -> anyhow::Result<BufWriter<File>> {
    let context = || format!("cannot write {}", path.display());
    let temporary = path.with_extension("jsonl.tmp");
    let mut file = BufWriter::new(File::create(&temporary).with_context(context)?);
    writeln!(file, "{}", serde_json::to_string(header)?).with_context(context)?;
    if !accepted.is_empty() {
        let ranges = Settlement::Accepted(accepted.iter().map(|r| (*r.start(), *r.end())).collect());
        writeln!(file, "{}", serde_json::to_string(&ranges)?).with_context(context)?;
    }
    for refusal in refused.values() {
        writeln!(file, "{}", serde_json::to_string(&Settlement::Refused(refusal.clone()))?).with_context(context)?;
    }
    file.flush().with_context(context)?;
    std::fs::rename(&temporary, path).with_context(context)?;
    Ok(BufWriter::new(OpenOptions::new().append(true).open(path).with_context(context)?))
}

/// `FILE.progress.jsonl` beside `input`.
fn progress_path(input: &Path) -> PathBuf {
    let mut name = input.file_name().unwrap_or_default().to_os_string();
    name.push(".progress.jsonl");
    input.with_file_name(name)
}

/// The SHA-1 of the file's content, in hexadecimal.
fn content_sha1(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha1::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let read = file.read(&mut buffer).with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

type Earlier = (RangeInclusiveSet<u64>, HashMap<u64, Refusal>);

/// What the progress file at `path` says was settled, if it exists and is of `header`.
fn read_earlier(path: &Path, header: &Header) -> anyhow::Result<Option<Earlier>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut lines = BufReader::new(file).lines();
    let first = lines.next().transpose().with_context(|| format!("cannot read {}", path.display()))?;
    if first.as_deref().and_then(|l| serde_json::from_str::<Header>(l).ok()).as_ref() != Some(header) {
        tracing::warn!(
            "{} is not the progress of this content, transaction and institution: every row is sent, and it is replaced",
            path.display()
        );
        return Ok(None);
    }
    let (mut accepted, mut refused, mut unreadable) = (RangeInclusiveSet::new(), HashMap::new(), 0);
    for line in lines {
        match serde_json::from_str(&line.with_context(|| format!("cannot read {}", path.display()))?) {
            Ok(Settlement::Accepted(ranges)) => ranges.into_iter().filter(|(a, b)| a <= b).for_each(|(a, b)| accepted.insert(a..=b)),
            Ok(Settlement::Refused(refusal)) => {
                refused.insert(refusal.line, refusal);
            }
            Err(_) => unreadable += 1,
        }
    }
    if unreadable > 0 {
        tracing::warn!("{} has {unreadable} unreadable line(s) (cut short?): their rows are sent again", path.display());
    }
    Ok(Some((accepted, refused)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(path: &Path) -> Input<'_> {
        Input { path, infno: Infno::Els7002, institution: "H32128200338" }
    }

    #[test]
    fn a_second_run_of_the_same_content_knows_what_the_first_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("day.jsonl");
        std::fs::write(&path, "{}\n{}\n{}\n{}\n{}\n").unwrap();
        let mut first = Progress::open(&input(&path), false).unwrap();
        assert!(!first.resumed());
        first.accepted([1, 2, 4]).unwrap();
        first.refused(3, 16, "no such order").unwrap();
        drop(first);

        let second = Progress::open(&input(&path), false).unwrap();
        assert!(second.resumed());
        assert_eq!((1..=5).map(|l| second.accepted_earlier(l)).collect::<Vec<_>>(), [true, true, false, true, false]);
        assert_eq!(second.refused_earlier(3).map(|r| (r.return_code, r.message.as_str())), Some((16, "no such order")));
        assert!(Progress::open(&input(&path), true).map(|p| !p.resumed()).unwrap(), "--fresh ignores it");
    }

    #[test]
    fn other_content_or_a_cut_line_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("day.jsonl");
        std::fs::write(&path, "{}\n{}\n").unwrap();
        let mut first = Progress::open(&input(&path), false).unwrap();
        first.accepted([1]).unwrap();
        drop(first);
        let mut text = std::fs::read_to_string(progress_path(&path)).unwrap();
        text.push_str("{\"accepted\": [[2,");
        std::fs::write(progress_path(&path), text).unwrap();
        let again = Progress::open(&input(&path), false).unwrap();
        assert!(again.accepted_earlier(1) && !again.accepted_earlier(2), "the cut line is skipped");
        drop(again);

        std::fs::write(&path, "{}\n{}\n{}\n").unwrap();
        assert!(!Progress::open(&input(&path), false).unwrap().resumed(), "another content starts afresh");
        let other = Input { institution: "H32010600021", ..input(&path) };
        assert!(!Progress::open(&other, false).unwrap().resumed());
    }
}
