//! JSON readings, as sensors send them over MQTT and HTTP:
//! `{"temperature": 21.5, "humidity": 40, "ts_ms": 1732540000000}`.
//!
//! The source's `fields` pick the values, in order; a configured
//! `timestamp_field` (milliseconds since the epoch) sets the reading's time,
//! otherwise the time of arrival is used. Anything else in the object is
//! ignored.

use serde_json::Value;
use thiserror::Error;

use crate::config::ConfigError;
#[cfg(test)]
use crate::config::ConfigErrors;

#[derive(Debug, Error, PartialEq)]
pub enum ReadingError {
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("expected a JSON object, got {0}")]
    NotObject(&'static str),
    #[error("field {0:?} is missing")]
    MissingField(String),
    #[error("field {field:?} is {got}, expected a finite number")]
    NotNumber { field: String, got: String },
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The part of a source config that says how to read a JSON reading.
#[derive(Debug, Clone, Copy)]
pub struct JsonReadingSpec<'a> {
    pub fields: &'a [String],
    pub timestamp_field: Option<&'a str>,
    /// Keep the whole document (compact JSON) as the reading's payload.
    pub keep_payload: bool,
}

/// A reading taken out of JSON: its timestamp (if it carried one) and values.
#[derive(Debug, PartialEq)]
pub struct JsonReading {
    pub ts_us: Option<i64>,
    pub values: Vec<f64>,
    /// The document, when the spec keeps it.
    pub payload: Vec<u8>,
}

impl JsonReadingSpec<'_> {
    /// Every problem with these settings (the sources add them to theirs
    /// with [`Self::check`]).
    #[cfg(test)]
    pub fn validate(&self, field: &str) -> Result<(), ConfigErrors> {
        let mut found = Vec::new();
        self.check(field, &mut found);
        ConfigErrors::check(found)
    }

    /// Adds every problem with these settings to `found`.
    pub(crate) fn check(&self, field: &str, found: &mut Vec<ConfigError>) {
        if self.fields.is_empty() && !self.keep_payload {
            found.push(ConfigError::invalid(
                format!("{field}.fields"),
                "list the JSON fields to read, e.g. fields = [\"temperature\"], \
                 or set keep_payload = true to keep whole documents",
            ));
        }
        if let Some(dup) = self
            .fields
            .iter()
            .enumerate()
            .find(|(i, f)| self.fields[..*i].contains(f))
        {
            found.push(ConfigError::invalid(
                format!("{field}.fields"),
                format!("{:?} is listed twice", dup.1),
            ));
        }
    }

    pub fn parse_bytes(&self, payload: &[u8]) -> Result<JsonReading, ReadingError> {
        let v: Value =
            serde_json::from_slice(payload).map_err(|e| ReadingError::NotJson(e.to_string()))?;
        self.parse(&v)
    }

    pub fn parse(&self, v: &Value) -> Result<JsonReading, ReadingError> {
        let obj = v.as_object().ok_or(ReadingError::NotObject(kind(v)))?;
        let number = |name: &str| -> Result<f64, ReadingError> {
            let v = obj
                .get(name)
                .ok_or_else(|| ReadingError::MissingField(name.to_string()))?;
            v.as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| ReadingError::NotNumber {
                    field: name.to_string(),
                    got: kind(v).to_string(),
                })
        };
        let values = self
            .fields
            .iter()
            .map(|f| number(f))
            .collect::<Result<_, _>>()?;
        let ts_us = match self.timestamp_field {
            Some(name) if obj.contains_key(name) => Some((number(name)? * 1000.0) as i64),
            _ => None,
        };
        let payload = if self.keep_payload {
            v.to_string().into_bytes()
        } else {
            Vec::new()
        };
        Ok(JsonReading {
            ts_us,
            values,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fields: &[String]) -> JsonReadingSpec<'_> {
        JsonReadingSpec {
            fields,
            timestamp_field: Some("ts_ms"),
            keep_payload: false,
        }
    }

    #[test]
    fn picks_fields_in_order() {
        let f = vec!["b".to_string(), "a".to_string()];
        let r = spec(&f)
            .parse_bytes(br#"{"a": 1, "b": 2.5, "c": "x", "ts_ms": 1000}"#)
            .unwrap();
        assert_eq!(
            r,
            JsonReading {
                ts_us: Some(1_000_000),
                values: vec![2.5, 1.0],
                payload: Vec::new(),
            }
        );
        let r = spec(&f).parse_bytes(br#"{"a": 1, "b": 2}"#).unwrap();
        assert_eq!(r.ts_us, None);
    }

    #[test]
    fn says_what_is_wrong() {
        let f = vec!["t".to_string()];
        assert_eq!(
            spec(&f).parse_bytes(b"[1]"),
            Err(ReadingError::NotObject("an array"))
        );
        assert_eq!(
            spec(&f).parse_bytes(b"{}"),
            Err(ReadingError::MissingField("t".into()))
        );
        assert_eq!(
            spec(&f).parse_bytes(br#"{"t": "hot"}"#),
            Err(ReadingError::NotNumber {
                field: "t".into(),
                got: "a string".into()
            })
        );
        assert!(matches!(
            spec(&f).parse_bytes(b"{\"t\": 1"),
            Err(ReadingError::NotJson(_))
        ));
        assert!(matches!(
            spec(&f).parse_bytes(br#"{"t": 1, "ts_ms": null}"#),
            Err(ReadingError::NotNumber { .. })
        ));
    }

    #[test]
    fn keeps_the_document_when_asked_and_fields_may_then_be_empty() {
        let none: Vec<String> = Vec::new();
        let keep = JsonReadingSpec {
            fields: &none,
            timestamp_field: Some("ts_ms"),
            keep_payload: true,
        };
        keep.validate("sources[0]").unwrap();
        let r = keep
            .parse_bytes(br#"{"store": "S1", "ts_ms": 2000, "pan": "4111"}"#)
            .unwrap();
        assert_eq!(r.ts_us, Some(2_000_000));
        assert!(r.values.is_empty());
        let doc: Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(doc["pan"], "4111");
        let e = spec(&none).validate("sources[0]").unwrap_err().to_string();
        assert!(e.contains("keep_payload"), "{e}");
    }
}
