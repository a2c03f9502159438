//! A record file as `send` and `validate` read it, as JSON Lines and as CSV: never a
//! panic, every line accounted for, messages one short line each, valid records survive the
//! trip to the platform's row format.
//!
//! Input: the first byte picks the transaction (`Infno::UPLOADS[byte % 6]`, so `0`..`5`
//! are ELS7002..ELS7007), the rest is the file.

#![no_main]

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use els_bridge::input::{Format, Lines};
use els_bridge::spec::{Infno, Record};
use libfuzzer_sys::fuzz_target;

/// `input::Lines` reads files only: one file of this process, rewritten for every input.
/// It is created under `$ELS_FUZZ_SCRATCH` (scripts/fuzz.sh sets it to its scratch
/// directory), else on tmpfs (/dev/shm) where there is one, else in the temp directory,
/// and unlinked at once: it is read through `/proc/self/fd`, so that nothing is left
/// behind however the process ends (a crash, a timeout, a kill).
struct Scratch {
    file: File,
    path: PathBuf,
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let base = std::env::var_os("ELS_FUZZ_SCRATCH")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base).expect("scratch directory");
        let named = base.join(format!("els-bridge-fuzz-record-lines-{}", std::process::id()));
        let file = File::options().read(true).write(true).create(true).truncate(true).open(&named).expect("scratch file");
        let through_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let path = if through_fd.exists() && std::fs::remove_file(&named).is_ok() { through_fd } else { named };
        Scratch { file, path }
    })
}

fn read(path: &Path, format: Format, infno: Infno, size: u64) {
    let lines = match Lines::open(path, format) {
        Ok(lines) => lines,
        Err(error) => {
            // Only a CSV header can be refused at open.
            assert_eq!(format, Format::Csv, "opening as {format:?}: {error}");
            common::check_message("CSV header", &error.to_string());
            return;
        }
    };
    if let Some(columns) = lines.columns() {
        for error in Record::unknown_columns(infno, columns) {
            common::check_message("unknown column", &error.to_string());
        }
    }
    let mut lines = lines;
    let mut count = 0u64;
    let mut last_number = 0;
    while let Some(line) = lines.next() {
        count += 1;
        // A line needs at least one byte (the newline) except the last: more lines than
        // bytes + 1 means the reader is stuck.
        assert!(count <= size + 1, "{format:?}: {count} lines out of {size} bytes");
        let line = match line {
            Ok(line) => line,
            Err(error) => panic!("{format:?}: an I/O error reading a file on tmpfs: {error}"),
        };
        if format == Format::Jsonl {
            assert!(line.number > last_number, "JSON Lines: line {} after line {last_number}", line.number);
            assert!(line.number <= size, "JSON Lines: line {} of a {size}-byte file", line.number);
        }
        last_number = line.number;
        assert!(lines.consumed() <= size, "{format:?}: consumed {} of {size} bytes", lines.consumed());
        match line.content {
            Ok(object) => match Record::parse(infno, &object) {
                Ok(record) => common::check_round_trip(&record),
                Err(errors) => {
                    assert!(!errors.0.is_empty(), "a refused row without an error");
                    common::check_message("record", &errors.to_string());
                    for error in &errors.0 {
                        common::check_message("record field", &error.to_string());
                    }
                }
            },
            Err(error) => common::check_message("line", &error.to_string()),
        }
    }
    if format == Format::Jsonl {
        assert_eq!(lines.consumed(), size, "JSON Lines: consumed bytes at the end");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, file)) = data.split_first() else { return };
    let infno = Infno::UPLOADS[usize::from(selector) % Infno::UPLOADS.len()];
    let scratch = scratch();
    scratch.file.set_len(0).expect("scratch file");
    scratch.file.write_all_at(file, 0).expect("scratch file");
    let size = file.len() as u64;
    read(&scratch.path, Format::Jsonl, infno, size);
    read(&scratch.path, Format::Csv, infno, size);
});
