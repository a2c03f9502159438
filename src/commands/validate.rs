//! `els-bridge validate FILE...`: checks event files (contract §1) or record files
//! (`--infno`) against the spec offline, printing `FILE:LINE: field: reason` per problem.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{EXIT_FAILED, EXIT_OK};
use crate::config::Config;
use crate::event::{self, Institutions, InvalidEvent, Problem};
use crate::input::{Format, Lines, RawLines};
use crate::spec::field::PROBLEMS_SHOWN;
use crate::spec::{Infno, Record};

/// Options of `els-bridge validate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 when every line is valid, 1 when any line is invalid, 2 on usage errors.\n\
Without --infno each line is an event: {\"infno\": \"ELS7002\", \"fixmedins_code\": \"...\", \"version\": 1, \"data\": {...}}.")]
pub struct ValidateArgs {
    /// Files to check: JSON Lines, or CSV (by the .csv extension or --format) with --infno.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The files hold records (`data` objects) of this transaction instead of events.
    #[arg(long, value_name = "ELS700x")]
    infno: Option<Infno>,
    /// File layout; by default CSV for *.csv, JSON Lines otherwise.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Check institution codes of events against this configuration (else any 12-character code).
    #[arg(long, env = "ELS_BRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Checks every line of every file.
pub async fn run(args: ValidateArgs) -> anyhow::Result<u8> {
    if let Some(infno) = args.infno
        && !infno.is_upload()
    {
        anyhow::bail!("--infno {infno}: ELS7001 has no records; use ELS7002 to ELS7007");
    }
    let config = args.config.as_deref().map(|p| Config::load(Some(p))).transpose()?;
    let codes: Vec<&str> = config.iter().flat_map(|c| c.institutions.iter().map(|i| i.fixmedins_code.as_str())).collect();
    let institutions = if config.is_some() { Institutions::Known(&codes) } else { Institutions::Any };

    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut valid, mut invalid) = (0u64, 0u64);
    for path in &args.files {
        let format = args.format.unwrap_or_else(|| Format::guess(path));
        if format == Format::Csv && args.infno.is_none() {
            anyhow::bail!("{}: CSV files hold records; say which transaction with --infno", path.display());
        }
        let problems = match args.infno {
            Some(infno) => record_problems(path, format, infno, &mut out, &mut invalid)?,
            None => event_problems(path, institutions)?,
        };
        for line in problems {
            let (number, problems) = line.with_context(|| format!("cannot read {}", path.display()))?;
            if problems.is_empty() {
                valid += 1;
                continue;
            }
            invalid += 1;
            for problem in problems.iter().take(PROBLEMS_SHOWN) {
                let field = if problem.field.is_empty() { String::new() } else { format!(" {}:", problem.field) };
                writeln!(out, "{}:{number}:{field} {}", path.display(), problem.reason)?;
            }
            if problems.len() > PROBLEMS_SHOWN {
                writeln!(out, "{}:{number}: and {} more problems", path.display(), problems.len() - PROBLEMS_SHOWN)?;
            }
        }
    }
    writeln!(out, "{} lines checked: {valid} valid, {invalid} invalid", valid + invalid)?;
    out.flush()?;
    Ok(if invalid == 0 { EXIT_OK } else { EXIT_FAILED })
}

/// Each line's number and problems (none for a valid line), or why the file could not be
/// read further.
type Checked<'a> = Box<dyn Iterator<Item = std::io::Result<(u64, Vec<Problem>)>> + 'a>;

/// The lines of an event file, each read as a message body is (without a JSON tree when
/// it is valid).
fn event_problems<'a>(path: &Path, institutions: Institutions<'a>) -> anyhow::Result<Checked<'a>> {
    let lines = RawLines::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Box::new(lines.map(move |line| {
        let line = line?;
        let problems = match line.bytes.map_err(InvalidEvent::from).and_then(|body| event::parse(&body, institutions)) {
            Ok(_) => Vec::new(),
            Err(invalid) => invalid.0,
        };
        Ok((line.number, problems))
    })))
}

/// The lines of a record file of `infno`; a CSV header naming columns that are no fields
/// of `infno` is reported (as line 1) and counted in `invalid` at once.
fn record_problems(path: &Path, format: Format, infno: Infno, out: &mut impl Write, invalid: &mut u64) -> anyhow::Result<Checked<'static>> {
    let lines = Lines::open(path, format).with_context(|| format!("cannot read {}", path.display()))?;
    if let Some(columns) = lines.columns() {
        // The header is line 1: a column that is no field of the transaction (a file of
        // garbage, the wrong --infno) would otherwise show only on rows, if there are any.
        let unknown = Record::unknown_columns(infno, columns);
        if columns.iter().all(String::is_empty) {
            writeln!(out, "{}:1: the CSV header names no columns (expected the field names of {infno})", path.display())?;
        }
        for error in &unknown {
            writeln!(out, "{}:1: column {}: {}", path.display(), error.field, error.rule)?;
        }
        if !unknown.is_empty() || columns.iter().all(String::is_empty) {
            *invalid += 1;
        }
    }
    Ok(Box::new(lines.map(move |line| {
        let line = line?;
        let problems = match line.content {
            Err(error) => InvalidEvent::from(error).0,
            Ok(row) => Record::parse(infno, &row).err().map(|e| e.problems("")).unwrap_or_default(),
        };
        Ok((line.number, problems))
    })))
}
