//! Recorded data files a replay source can play back.
//!
//! * `.ts`: the UEA/UCR time-series archive format (the data sets in
//!   `models/data/`). Each series becomes one row per time step, its values
//!   the channels at that step and its label the series' class. The format
//!   has no timestamps; `sample_rate_hz` gives the recorded pace.
//! * `.csv`: a header row of field names, then one row per reading. A
//!   `timestamp_ms` column, if present, gives the recorded pace; a `label`
//!   column is carried as the label; every other column is a value.
//!
//! Parse errors name the file, line and column; a replay file is checked
//! completely when the source is built ([`Recording::scan`]), so a broken
//! file fails `edge-agent check` rather than the 10-hour mark of a replay.
//!
//! [`Rows`] reads a file row by row, holding one line (one series of a
//! `.ts` file) at a time: a replay streams its file from disk instead of
//! holding it (ACSF1's 146,000 rows are ~15 MB as [`Row`]s), and
//! [`Recording::load`], which does hold every row, is the same parser
//! collected.

use std::io::{BufRead, BufReader};
use std::path::Path;

use thiserror::Error;

/// One row of a recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Time since the start of the recording, if the file records it.
    pub offset_us: Option<i64>,
    pub values: Vec<f64>,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    pub fields: Vec<String>,
    pub rows: Vec<Row>,
}

/// What a full pass over a file found, without its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub fields: Vec<String>,
    pub rows: u64,
    /// As [`Recording::span_us`].
    pub span_us: Option<i64>,
}

#[derive(Debug, Error)]
pub enum ReplayFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unsupported file type; replay reads .ts (UEA/UCR archive) and .csv")]
    UnsupportedFormat { path: String },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: holds no readings")]
    Empty { path: String },
}

impl Recording {
    /// Loads a recording, choosing the parser by file extension.
    pub fn load(path: &Path, sample_rate_hz: Option<f64>) -> Result<Self, ReplayFileError> {
        let mut rows = Rows::open(path, sample_rate_hz)?;
        let all = rows.by_ref().collect::<Result<Vec<_>, _>>()?;
        if all.is_empty() {
            return Err(ReplayFileError::Empty { path: rows.path });
        }
        Ok(Recording {
            fields: rows.fields,
            rows: all,
        })
    }

    /// Checks the whole file as [`Recording::load`] does, keeping only its
    /// fields, row count and span.
    pub fn scan(path: &Path, sample_rate_hz: Option<f64>) -> Result<Summary, ReplayFileError> {
        let mut rows = Rows::open(path, sample_rate_hz)?;
        let (mut n, mut last, mut prev) = (0u64, None, None);
        for row in rows.by_ref() {
            prev = last;
            last = Some(row?.offset_us);
            n += 1;
        }
        if n == 0 {
            return Err(ReplayFileError::Empty { path: rows.path });
        }
        Ok(Summary {
            fields: rows.fields,
            rows: n,
            span_us: span(last.flatten(), prev),
        })
    }

    /// Length of the recording in time, if it has timestamps: the last
    /// offset plus one sampling interval, so that looping keeps the pace.
    pub fn span_us(&self) -> Option<i64> {
        let n = self.rows.len();
        let last = self.rows.last()?.offset_us;
        let prev = (n >= 2).then(|| self.rows[n - 2].offset_us);
        span(last, prev)
    }
}

/// The span of rows whose last offset is `last` and the one before `prev`
/// (`None` for a single row; `Some(None)` where it has no timestamp).
fn span(last: Option<i64>, prev: Option<Option<i64>>) -> Option<i64> {
    let last = last?;
    let step = match prev {
        Some(prev) => last - prev?,
        None => 0,
    };
    Some(last + step.max(1))
}

type LineError = (usize, String);

fn parse_number(s: &str, line: usize, what: &str) -> Result<f64, LineError> {
    let s = s.trim();
    let v: f64 = s
        .parse()
        .map_err(|_| (line, format!("{what}: {s:?} is not a number")))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err((line, format!("{what}: {s:?} is not a finite number")))
    }
}

/// A recording read row by row, as an iterator; it ends after the first
/// error. [`Rows::fields`] is known once the first row is read.
pub struct Rows<R = BufReader<std::fs::File>> {
    path: String,
    lines: std::io::Lines<R>,
    line_no: usize,
    format: Format,
    fields: Vec<String>,
    done: bool,
}

enum Format {
    Ts {
        step_us: Option<i64>,
        in_data: bool,
        /// Time steps so far, over every series.
        t: i64,
        /// The series being played.
        case: Option<Series>,
    },
    Csv {
        header: Option<CsvHeader>,
    },
}

/// One series of a `.ts` file, played a time step a row.
struct Series {
    channels: Vec<Vec<f64>>,
    label: String,
    /// The next time step to play.
    step: usize,
}

struct CsvHeader {
    columns: Vec<String>,
    ts_col: Option<usize>,
    label_col: Option<usize>,
    first_ts: Option<f64>,
}

impl Rows {
    /// Opens `path`, choosing the parser by its extension.
    pub fn open(path: &Path, sample_rate_hz: Option<f64>) -> Result<Self, ReplayFileError> {
        let shown = path.display().to_string();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "ts" | "csv") {
            return Err(ReplayFileError::UnsupportedFormat { path: shown });
        }
        let file = std::fs::File::open(path).map_err(|source| ReplayFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Ok(Rows::new(
            shown,
            ext == "ts",
            BufReader::new(file),
            sample_rate_hz,
        ))
    }
}

impl<R: BufRead> Rows<R> {
    fn new(path: String, ts: bool, reader: R, sample_rate_hz: Option<f64>) -> Self {
        let format = if ts {
            Format::Ts {
                step_us: sample_rate_hz.map(|hz| (1e6 / hz).round() as i64),
                in_data: false,
                t: 0,
                case: None,
            }
        } else {
            Format::Csv { header: None }
        };
        Rows {
            path,
            lines: reader.lines(),
            line_no: 0,
            format,
            fields: Vec::new(),
            done: false,
        }
    }

    /// The recording's value fields (channels), once a row is read.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// The next row, `Ok(None)` at the end.
    fn step(&mut self) -> Result<Option<Row>, ReplayFileError> {
        loop {
            if let Format::Ts {
                step_us,
                t,
                case: Some(case),
                ..
            } = &mut self.format
            {
                if case.step < case.channels[0].len() {
                    let row = Row {
                        offset_us: step_us.map(|s| *t * s),
                        values: case.channels.iter().map(|c| c[case.step]).collect(),
                        label: case.label.clone(),
                    };
                    case.step += 1;
                    *t += 1;
                    return Ok(Some(row));
                }
            }
            let Some(line) = self.lines.next() else {
                return self.at_end().map(|()| None);
            };
            let line = line.map_err(|source| ReplayFileError::Read {
                path: self.path.clone(),
                source,
            })?;
            self.line_no += 1;
            let parsed = match &mut self.format {
                Format::Ts { in_data, case, .. } => {
                    ts_line(&line, self.line_no, in_data, &mut self.fields).map(|c| {
                        if c.is_some() {
                            *case = c;
                        }
                        None
                    })
                }
                Format::Csv { header } => csv_line(&line, self.line_no, header, &mut self.fields),
            };
            match parsed {
                Ok(Some(row)) => return Ok(Some(row)),
                Ok(None) => {}
                Err((line, message)) => {
                    return Err(ReplayFileError::Syntax {
                        path: self.path.clone(),
                        line,
                        message,
                    })
                }
            }
        }
    }

    /// The end of the file: an error where it was not a recording.
    fn at_end(&self) -> Result<(), ReplayFileError> {
        let missing = match &self.format {
            Format::Ts { in_data: false, .. } => {
                Some((self.line_no, "no @data line: not a UEA/UCR .ts file"))
            }
            Format::Csv { header: None } => Some((1, "missing header row")),
            _ => None,
        };
        match missing {
            Some((line, message)) => Err(ReplayFileError::Syntax {
                path: self.path.clone(),
                line,
                message: message.into(),
            }),
            None => Ok(()),
        }
    }
}

impl<R: BufRead> Iterator for Rows<R> {
    type Item = Result<Row, ReplayFileError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.step().transpose();
        if !matches!(next, Some(Ok(_))) {
            self.done = true;
        }
        next
    }
}

/// One line of a `.ts` file: a series (channels, label, step 0) once in
/// `@data`, else nothing. The first series sets `fields`.
fn ts_line(
    line: &str,
    line_no: usize,
    in_data: &mut bool,
    fields: &mut Vec<String>,
) -> Result<Option<Series>, LineError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if !*in_data {
        if line.eq_ignore_ascii_case("@data") {
            *in_data = true;
        }
        return Ok(None);
    }
    let mut parts: Vec<&str> = line.split(':').collect();
    if parts.len() < 2 {
        return Err((
            line_no,
            "expected channels separated by ':' and a class label".into(),
        ));
    }
    let label = parts.pop().unwrap_or_default().trim().to_string();
    let series: Vec<Vec<f64>> = parts
        .iter()
        .enumerate()
        .map(|(c, ch)| {
            ch.split(',')
                .map(|v| parse_number(v, line_no, &format!("channel {c}")))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()?;
    let len = series[0].len();
    if series.iter().any(|s| s.len() != len) {
        return Err((line_no, "channels of one series differ in length".into()));
    }
    if fields.is_empty() {
        *fields = (0..series.len()).map(|c| format!("dim_{c}")).collect();
    } else if fields.len() != series.len() {
        return Err((
            line_no,
            format!(
                "series has {} channels, earlier ones {}",
                series.len(),
                fields.len()
            ),
        ));
    }
    Ok(Some(Series {
        channels: series,
        label,
        step: 0,
    }))
}

/// One line of a `.csv` file: the header (which sets `fields`), then a
/// row per line.
fn csv_line(
    line: &str,
    line_no: usize,
    header: &mut Option<CsvHeader>,
    fields: &mut Vec<String>,
) -> Result<Option<Row>, LineError> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let Some(h) = header else {
        let columns: Vec<String> = line.split(',').map(|c| c.trim().to_string()).collect();
        let ts_col = columns.iter().position(|c| c == "timestamp_ms");
        let label_col = columns.iter().position(|c| c == "label");
        *fields = columns
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != ts_col && Some(*i) != label_col)
            .map(|(_, c)| c.clone())
            .collect();
        if fields.is_empty() {
            return Err((line_no, "header names no value columns".into()));
        }
        *header = Some(CsvHeader {
            columns,
            ts_col,
            label_col,
            first_ts: None,
        });
        return Ok(None);
    };
    let cells: Vec<&str> = line.split(',').collect();
    if cells.len() != h.columns.len() {
        return Err((
            line_no,
            format!("{} cells, the header has {}", cells.len(), h.columns.len()),
        ));
    }
    let mut values = Vec::with_capacity(fields.len());
    let mut offset_us = None;
    let mut label = String::new();
    for (c, cell) in cells.iter().enumerate() {
        if Some(c) == h.label_col {
            label = cell.trim().to_string();
        } else if Some(c) == h.ts_col {
            let ms = parse_number(cell, line_no, "timestamp_ms")?;
            let first = *h.first_ts.get_or_insert(ms);
            if ms < first {
                return Err((
                    line_no,
                    "timestamp_ms goes back before the first row".into(),
                ));
            }
            offset_us = Some(((ms - first) * 1000.0) as i64);
        } else {
            values.push(parse_number(cell, line_no, &h.columns[c])?);
        }
    }
    Ok(Some(Row {
        offset_us,
        values,
        label,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, ts: bool, hz: Option<f64>) -> Result<Recording, LineError> {
        let mut rows = Rows::new("t".into(), ts, text.as_bytes(), hz);
        let all = rows
            .by_ref()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| match e {
                ReplayFileError::Syntax { line, message, .. } => (line, message),
                other => panic!("{other}"),
            })?;
        Ok(Recording {
            fields: rows.fields,
            rows: all,
        })
    }

    fn parse_ts(text: &str, hz: Option<f64>) -> Result<Recording, LineError> {
        parse(text, true, hz)
    }

    fn parse_csv(text: &str) -> Result<Recording, LineError> {
        parse(text, false, None)
    }

    fn data_file(rel: &str) -> std::path::PathBuf {
        Path::new(
            &std::env::var_os("CARGO_MANIFEST_DIR")
                .expect("run by cargo, which sets CARGO_MANIFEST_DIR"),
        )
        .join("../../models/data")
        .join(rel)
    }

    #[test]
    fn reads_basic_motions() {
        let r =
            Recording::load(&data_file("BasicMotions/BasicMotions_TRAIN.ts"), Some(10.0)).unwrap();
        assert_eq!(r.fields.len(), 6);
        assert_eq!(r.rows.len(), 40 * 100);
        assert_eq!(r.rows[0].label, "Standing");
        assert_eq!(r.rows[0].values[0], 0.079106);
        assert_eq!(r.rows[1].offset_us, Some(100_000));
        assert_eq!(r.span_us(), Some(4000 * 100_000));
    }

    #[test]
    fn reads_acsf1() {
        let r = Recording::load(&data_file("ACSF1/ACSF1_TEST.ts"), None).unwrap();
        assert_eq!(r.fields.len(), 1);
        assert_eq!(r.rows.len(), 100 * 1460);
        assert_eq!(r.rows[0].offset_us, None);
    }

    #[test]
    fn a_scan_and_the_streamed_rows_agree_with_the_loaded_file() {
        for (file, hz) in [
            ("BasicMotions/BasicMotions_TEST.ts", Some(10.0)),
            ("ACSF1/ACSF1_TEST.ts", None),
        ] {
            let path = data_file(file);
            let loaded = Recording::load(&path, hz).unwrap();
            let summary = Recording::scan(&path, hz).unwrap();
            assert_eq!(summary.fields, loaded.fields, "{file}");
            assert_eq!(summary.rows, loaded.rows.len() as u64, "{file}");
            assert_eq!(summary.span_us, loaded.span_us(), "{file}");
            let mut streamed = Rows::open(&path, hz).unwrap();
            assert!(streamed.fields().is_empty(), "known once a row is read");
            for (i, row) in loaded.rows.iter().enumerate() {
                assert_eq!(streamed.next().unwrap().unwrap(), *row, "{file} row {i}");
                assert_eq!(streamed.fields(), loaded.fields);
            }
            assert!(streamed.next().is_none());
        }
    }

    #[test]
    fn a_stream_ends_at_its_first_error() {
        let mut rows = Rows::new("t".into(), false, "a\n1\nx\n2\n".as_bytes(), None);
        assert_eq!(rows.next().unwrap().unwrap().values, vec![1.0]);
        let e = rows.next().unwrap().unwrap_err().to_string();
        assert!(e.starts_with("t:3:"), "{e}");
        assert!(rows.next().is_none());
        let csv_span = parse_csv("timestamp_ms,v\n0,1\n10,2\n").unwrap();
        assert_eq!(csv_span.span_us(), Some(20_000));
        assert!(Recording::scan(Path::new("empty.csv"), None).is_err());
    }

    #[test]
    fn csv_with_timestamps_and_labels() {
        let r =
            parse_csv("timestamp_ms,temp,label,hum\n1000,20.5,ok,40\n1250,20.7,hot,41\n").unwrap();
        assert_eq!(r.fields, vec!["temp", "hum"]);
        assert_eq!(r.rows[1].values, vec![20.7, 41.0]);
        assert_eq!(r.rows[1].offset_us, Some(250_000));
        assert_eq!(r.rows[1].label, "hot");
    }

    #[test]
    fn errors_say_where() {
        assert_eq!(parse_csv("a,b\n1,2\n3\n").unwrap_err().0, 3);
        let (line, msg) = parse_csv("a\nx\n").unwrap_err();
        assert_eq!(line, 2);
        assert!(msg.contains("\"x\" is not a number"), "{msg}");
        let (line, _) = parse_ts("@data\n1,2:3,4:A\n1,2,3:4:B\n", None).unwrap_err();
        assert_eq!(line, 3);
        assert!(parse_ts("1,2:A\n", None).unwrap_err().1.contains("@data"));
        let e = Recording::load(Path::new("x.json"), None).unwrap_err();
        assert!(matches!(e, ReplayFileError::UnsupportedFormat { .. }));
        assert!(parse_csv("a\nnan\n").is_err());
    }
}
