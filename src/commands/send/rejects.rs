//! `FILE.rejects.jsonl`: the rows of one input file that did not reach the platform, one
//! JSON object a line with the line number, the reason and the row.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{Value, json};

/// Writes the failed rows of one input file, created on the first failure. Rows are
/// written in the order they are settled, which with calls in parallel is not always the
/// order of the lines: each entry carries its line number.
pub(super) struct Rejects {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    rows: u64,
}

impl Rejects {
    /// The rejects file beside `input` (not created until a row fails).
    pub(super) fn next_to(input: &Path) -> Rejects {
        let mut name = input.file_name().unwrap_or_default().to_os_string();
        name.push(".rejects.jsonl");
        Rejects { path: input.with_file_name(name), file: None, rows: 0 }
    }

    /// Writes one failed row.
    pub(super) fn write(&mut self, line: u64, reason: &str, return_code: Option<u32>, data: Value) -> anyhow::Result<()> {
        if self.file.is_none() {
            let file = File::create(&self.path).with_context(|| format!("cannot write {}", self.path.display()))?;
            self.file = Some(BufWriter::new(file));
        }
        let entry = json!({ "line": line, "reason": reason, "return_code": return_code, "data": data });
        let file = self.file.as_mut().expect("opened above");
        writeln!(file, "{entry}").with_context(|| format!("cannot write {}", self.path.display()))?;
        self.rows += 1;
        Ok(())
    }

    /// Flushes the file and says where it is and how many rows it holds; without a failed
    /// row, removes the rejects file of an earlier run, which would now be misleading.
    pub(super) fn finish(mut self) -> anyhow::Result<Option<(PathBuf, u64)>> {
        match self.file.take() {
            Some(mut file) => {
                file.flush().with_context(|| format!("cannot write {}", self.path.display()))?;
                Ok(Some((self.path, self.rows)))
            }
            None => {
                let _ = std::fs::remove_file(&self.path);
                Ok(None)
            }
        }
    }
}
