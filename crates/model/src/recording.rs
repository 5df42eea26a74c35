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
//! completely when the source is built, so a broken file fails `edge-agent
//! check` rather than the 10-hour mark of a replay.

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
        let shown = path.display().to_string();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if !matches!(ext, "ts" | "csv") {
            return Err(ReplayFileError::UnsupportedFormat { path: shown });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ReplayFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let rec = if ext == "ts" {
            parse_ts(&text, sample_rate_hz)
        } else {
            parse_csv(&text)
        }
        .map_err(|(line, message)| ReplayFileError::Syntax {
            path: shown.clone(),
            line,
            message,
        })?;
        if rec.rows.is_empty() {
            return Err(ReplayFileError::Empty { path: shown });
        }
        Ok(rec)
    }

    /// Length of the recording in time, if it has timestamps: the last
    /// offset plus one sampling interval, so that looping keeps the pace.
    pub fn span_us(&self) -> Option<i64> {
        let last = self.rows.last()?.offset_us?;
        let step = if self.rows.len() >= 2 {
            last - self.rows[self.rows.len() - 2].offset_us?
        } else {
            0
        };
        Some(last + step.max(1))
    }
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

fn parse_ts(text: &str, sample_rate_hz: Option<f64>) -> Result<Recording, LineError> {
    let mut in_data = false;
    let mut rows = Vec::new();
    let mut channels = None;
    let step_us = sample_rate_hz.map(|hz| (1e6 / hz).round() as i64);
    let mut t = 0i64;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !in_data {
            if line.eq_ignore_ascii_case("@data") {
                in_data = true;
            }
            continue;
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
        match channels {
            None => channels = Some(series.len()),
            Some(n) if n != series.len() => {
                return Err((
                    line_no,
                    format!("series has {} channels, earlier ones {n}", series.len()),
                ))
            }
            _ => {}
        }
        for step in 0..len {
            rows.push(Row {
                offset_us: step_us.map(|s| t * s),
                values: series.iter().map(|s| s[step]).collect(),
                label: label.clone(),
            });
            t += 1;
        }
    }
    if !in_data {
        return Err((
            text.lines().count(),
            "no @data line: not a UEA/UCR .ts file".into(),
        ));
    }
    let fields = (0..channels.unwrap_or(0))
        .map(|c| format!("dim_{c}"))
        .collect();
    Ok(Recording { fields, rows })
}

fn parse_csv(text: &str) -> Result<Recording, LineError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or((1, "missing header row".to_string()))?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let ts_col = columns.iter().position(|c| *c == "timestamp_ms");
    let label_col = columns.iter().position(|c| *c == "label");
    let fields: Vec<String> = columns
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != ts_col && Some(*i) != label_col)
        .map(|(_, c)| c.to_string())
        .collect();
    if fields.is_empty() {
        return Err((1, "header names no value columns".into()));
    }
    let mut rows = Vec::new();
    let mut first_ts = None;
    for (i, line) in lines {
        let line_no = i + 1;
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != columns.len() {
            return Err((
                line_no,
                format!("{} cells, the header has {}", cells.len(), columns.len()),
            ));
        }
        let mut values = Vec::with_capacity(fields.len());
        let mut offset_us = None;
        let mut label = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if Some(c) == label_col {
                label = cell.trim().to_string();
            } else if Some(c) == ts_col {
                let ms = parse_number(cell, line_no, "timestamp_ms")?;
                let first = *first_ts.get_or_insert(ms);
                if ms < first {
                    return Err((
                        line_no,
                        "timestamp_ms goes back before the first row".into(),
                    ));
                }
                offset_us = Some(((ms - first) * 1000.0) as i64);
            } else {
                values.push(parse_number(cell, line_no, columns[c])?);
            }
        }
        rows.push(Row {
            offset_us,
            values,
            label,
        });
    }
    Ok(Recording { fields, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

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
