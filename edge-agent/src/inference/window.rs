//! Cutting a stream of readings into model windows: plain data, no I/O.
//!
//! A window is `window` consecutive readings of one stream; the next one
//! starts `stride` readings after the start of the last (`stride <
//! window` overlaps, `stride > window` skips). Readings with the wrong
//! number of values are refused here, so the model only ever sees
//! well-formed windows.

use std::sync::Arc;

use conveyor_shared::model_meta::Normalization;

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub ts_us: i64,
    pub values: Vec<f64>,
    pub label: String,
}

/// A reading refused because its shape is not the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reading has {got} values; the model takes {want} channels")]
pub struct ChannelMismatch {
    pub got: usize,
    pub want: usize,
}

#[derive(Debug, Clone)]
pub struct Windower {
    channels: usize,
    window: usize,
    stride: usize,
    rows: Vec<Row>,
    /// Readings still to skip before the next window starts (stride > window).
    skip: usize,
}

/// A complete window, borrowed from the windower until `advance`.
pub struct Window<'a> {
    pub rows: &'a [Row],
}

impl Windower {
    pub fn new(channels: usize, window: usize, stride: usize) -> Self {
        assert!(channels > 0 && window > 0 && stride > 0);
        Windower {
            channels,
            window,
            stride,
            rows: Vec::with_capacity(window),
            skip: 0,
        }
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn window(&self) -> usize {
        self.window
    }

    /// Readings held towards the next window.
    pub fn pending(&self) -> usize {
        self.rows.len()
    }

    /// Adds a reading. Returns true when a full window is ready; take it
    /// with [`Windower::ready`] and then call [`Windower::advance`].
    pub fn push(&mut self, row: Row) -> Result<bool, ChannelMismatch> {
        if row.values.len() != self.channels {
            return Err(ChannelMismatch {
                got: row.values.len(),
                want: self.channels,
            });
        }
        if self.skip > 0 {
            self.skip -= 1;
            return Ok(false);
        }
        self.rows.push(row);
        Ok(self.rows.len() == self.window)
    }

    pub fn ready(&self) -> Option<Window<'_>> {
        (self.rows.len() == self.window).then_some(Window { rows: &self.rows })
    }

    /// Moves past the window just taken.
    pub fn advance(&mut self) {
        if self.stride >= self.window {
            self.rows.clear();
            self.skip = self.stride - self.window;
        } else {
            self.rows.drain(..self.stride);
        }
    }
}

impl Window<'_> {
    /// The model input: values normalised per channel, laid out
    /// channel-major (NCW with N = 1).
    pub fn to_input(&self, norm: &Normalization) -> Vec<f32> {
        let w = self.rows.len();
        let c = norm.mean.len();
        let mut out = vec![0f32; c * w];
        for (t, row) in self.rows.iter().enumerate() {
            for (ch, v) in row.values.iter().enumerate() {
                out[ch * w + t] = ((v - norm.mean[ch]) / norm.std[ch]) as f32;
            }
        }
        out
    }

    /// The raw readings as sent to the hub when the window is escalated:
    /// reading by reading, in sensor units, as f32.
    pub fn raw_values(&self) -> Vec<f32> {
        self.rows
            .iter()
            .flat_map(|r| r.values.iter().map(|v| *v as f32))
            .collect()
    }

    /// The window's ground truth: the label every reading carries, if they
    /// all carry the same one.
    pub fn label(&self) -> &str {
        let first = self.rows[0].label.as_str();
        if self.rows.iter().all(|r| r.label == first) {
            first
        } else {
            ""
        }
    }

    pub fn start_us(&self) -> i64 {
        self.rows[0].ts_us
    }
}

/// Windows per stream, for a stage that serves several streams.
#[derive(Debug, Default)]
pub struct StreamWindows {
    streams: Vec<(Arc<str>, Windower)>,
}

impl StreamWindows {
    pub fn get_or_insert(
        &mut self,
        stream: &Arc<str>,
        make: impl FnOnce() -> Windower,
    ) -> &mut Windower {
        let i = match self.streams.iter().position(|(s, _)| s == stream) {
            Some(i) => i,
            None => {
                self.streams.push((stream.clone(), make()));
                self.streams.len() - 1
            }
        };
        &mut self.streams[i].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: i64, label: &str) -> Row {
        Row {
            ts_us: t,
            values: vec![t as f64, -(t as f64)],
            label: label.into(),
        }
    }

    fn starts(w: &mut Windower, n: i64) -> Vec<i64> {
        let mut out = Vec::new();
        for t in 0..n {
            if w.push(row(t, "a")).unwrap() {
                out.push(w.ready().unwrap().start_us());
                w.advance();
            }
        }
        out
    }

    #[test]
    fn tumbling_windows_cover_every_reading_once() {
        assert_eq!(starts(&mut Windower::new(2, 4, 4), 12), vec![0, 4, 8]);
    }

    #[test]
    fn overlapping_and_skipping_strides() {
        assert_eq!(starts(&mut Windower::new(2, 4, 2), 10), vec![0, 2, 4, 6]);
        assert_eq!(starts(&mut Windower::new(2, 2, 5), 12), vec![0, 5, 10]);
    }

    #[test]
    fn wrong_channel_count_is_refused_and_not_held() {
        let mut w = Windower::new(2, 2, 2);
        let bad = Row {
            ts_us: 0,
            values: vec![1.0],
            label: String::new(),
        };
        assert_eq!(w.push(bad), Err(ChannelMismatch { got: 1, want: 2 }));
        assert_eq!(w.pending(), 0);
    }

    #[test]
    fn input_is_normalised_channel_major() {
        let mut w = Windower::new(2, 2, 2);
        w.push(row(1, "a")).unwrap();
        w.push(row(3, "a")).unwrap();
        let norm = Normalization {
            mean: vec![1.0, 0.0],
            std: vec![2.0, 1.0],
        };
        let win = w.ready().unwrap();
        assert_eq!(win.to_input(&norm), vec![0.0, 1.0, -1.0, -3.0]);
        assert_eq!(win.label(), "a");
    }

    #[test]
    fn mixed_labels_give_no_ground_truth() {
        let mut w = Windower::new(2, 2, 2);
        w.push(row(1, "a")).unwrap();
        w.push(row(2, "b")).unwrap();
        assert_eq!(w.ready().unwrap().label(), "");
    }
}
