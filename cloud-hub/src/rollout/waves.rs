//! A rollout's waves, as the operator writes them (`1,10%,50%,100%`), and
//! resolved against the number of devices into where each wave ends.
//!
//! Each figure is the share of the whole target that has been given the
//! update once the wave is done (cumulative, as AWS IoT Jobs' rollout
//! rates and hawkBit's groups are read): `1,10%,100%` on 50 devices is one
//! device, then four more (5 in all), then the remaining 45.

use serde::{Deserialize, Serialize};

/// Most waves in one rollout.
pub const MAX_WAVES: usize = 20;

/// One wave's size: a count of devices or a percentage of the target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveSize {
    Devices(usize),
    Percent(f64),
}

impl std::fmt::Display for WaveSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaveSize::Devices(n) => write!(f, "{n}"),
            WaveSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavesError {
    #[error("--waves is empty: give sizes like 1,10%,50%,100%")]
    Empty,
    #[error("--waves: {0} waves, over the limit of {MAX_WAVES}")]
    TooMany(usize),
    #[error("--waves: {0:?} is neither a device count (e.g. 1) nor a percentage from 0 to 100 (e.g. 10%)")]
    Bad(String),
    #[error("--waves: each wave must reach further than the one before ({0} after {1})")]
    NotGrowing(String, String),
}

/// Parses `1,10%,50%,100%`. The last wave always reaches every device:
/// a plan that stops short gets a final 100% wave.
pub fn parse(text: &str) -> Result<Vec<WaveSize>, WavesError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let size = match part.strip_suffix('%') {
            Some(p) => match p.trim().parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => WaveSize::Percent(v),
                _ => return Err(WavesError::Bad(part.into())),
            },
            None => match part.parse::<usize>() {
                Ok(n) if n > 0 => WaveSize::Devices(n),
                _ => return Err(WavesError::Bad(part.into())),
            },
        };
        out.push(size);
    }
    if out.is_empty() {
        return Err(WavesError::Empty);
    }
    for w in out.windows(2) {
        let grows = match (w[0], w[1]) {
            (WaveSize::Devices(a), WaveSize::Devices(b)) => b > a,
            (WaveSize::Percent(a), WaveSize::Percent(b)) => b > a,
            // Mixed: which is larger depends on the target's size.
            _ => true,
        };
        if !grows {
            return Err(WavesError::NotGrowing(w[1].to_string(), w[0].to_string()));
        }
    }
    if out.last() != Some(&WaveSize::Percent(100.0)) {
        out.push(WaveSize::Percent(100.0));
    }
    if out.len() > MAX_WAVES {
        return Err(WavesError::TooMany(out.len()));
    }
    Ok(out)
}

/// Where each wave ends, as a count of devices from the start of the
/// target (strictly growing, the last is `devices`). A wave that would
/// add no device on this target is left out; a percentage rounds up, so
/// a wave of 10% on 6 devices is one device, never none.
pub fn resolve(waves: &[WaveSize], devices: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    for w in waves {
        let end = match *w {
            WaveSize::Devices(n) => n,
            WaveSize::Percent(p) => ((p / 100.0) * devices as f64).ceil() as usize,
        }
        .min(devices);
        if end > ends.last().copied().unwrap_or(0) {
            ends.push(end);
        }
    }
    if devices > 0 && ends.last() != Some(&devices) {
        ends.push(devices);
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_parse_and_resolve_cumulatively() {
        let w = parse("1,10%,50%,100%").unwrap();
        assert_eq!(
            w,
            vec![
                WaveSize::Devices(1),
                WaveSize::Percent(10.0),
                WaveSize::Percent(50.0),
                WaveSize::Percent(100.0)
            ]
        );
        assert_eq!(resolve(&w, 50), vec![1, 5, 25, 50]);
        // 10% of 6 rounds up to 1, the same as the first wave: left out.
        assert_eq!(resolve(&w, 6), vec![1, 3, 6]);
        assert_eq!(resolve(&w, 1), vec![1]);
        assert_eq!(resolve(&w, 0), Vec::<usize>::new());
        // A count past the target is the whole target.
        assert_eq!(resolve(&parse("5,10").unwrap(), 3), vec![3]);
    }

    #[test]
    fn a_plan_that_stops_short_reaches_everyone() {
        assert_eq!(
            parse("2, 25%").unwrap(),
            vec![
                WaveSize::Devices(2),
                WaveSize::Percent(25.0),
                WaveSize::Percent(100.0)
            ]
        );
    }

    #[test]
    fn bad_waves_say_what_is_wrong() {
        assert_eq!(parse(""), Err(WavesError::Empty));
        assert_eq!(parse(" , "), Err(WavesError::Empty));
        for bad in ["0", "-1", "x", "0%", "101%", "1.5", "%"] {
            assert!(matches!(parse(bad), Err(WavesError::Bad(_))), "{bad}");
        }
        assert!(matches!(parse("10%,5%"), Err(WavesError::NotGrowing(..))));
        assert!(matches!(parse("3,3"), Err(WavesError::NotGrowing(..))));
        let many: Vec<String> = (1..=25).map(|i| i.to_string()).collect();
        assert!(matches!(
            parse(&many.join(",")),
            Err(WavesError::TooMany(_))
        ));
    }
}
