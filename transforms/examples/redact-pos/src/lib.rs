//! `redact-pos`: masks card numbers and e-mail addresses in retail
//! point-of-sale JSON payloads at the edge, so that they never leave the
//! store (PCI DSS: a PAN may be shown with at most its last four digits).
//!
//! The payload is parsed as JSON and every string and number is checked
//! (object keys are left alone):
//!
//! - a **card number** is 13-19 digits, optionally grouped by single spaces
//!   or dashes, that passes the Luhn check. Every digit but the last four
//!   becomes `*`, separators are kept: `"4111 1111 1111 1111"` becomes
//!   `"**** **** **** 1111"`, also inside longer text. A JSON integer that
//!   is a card number becomes a string masked the same way. Digit runs that
//!   fail Luhn (order ids, quantities) are left alone; about one in ten
//!   random 13-19 digit ids passes Luhn by chance and is masked: erring on
//!   the side of hiding.
//! - an **e-mail address** (`local@domain.tld`: local part of
//!   `[A-Za-z0-9._%+-]`, dotted domain labels, a TLD of 2+ letters) becomes
//!   `"[redacted-email]"`.
//!
//! The record is re-emitted with the redacted payload as compact JSON (key
//! order kept; numbers keep their value but may be re-spelt, e.g. `12.50`
//! as `12.5`), everything else unchanged. A payload that is not JSON is
//! rejected (`payload is not JSON: ...`): it must not pass unredacted.
//!
//! No config (`{}`).

mod json;
pub mod redact;

use conveyor_transform_sdk::{export_transform, wire::RecordRef, Output, Transform};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

pub struct RedactPos;

impl Transform for RedactPos {
    type Config = Config;

    fn init(_: Config) -> Result<Self, String> {
        Ok(RedactPos)
    }

    fn process(&mut self, _: usize, r: RecordRef<'_>, out: &mut Output) -> Result<(), String> {
        let payload = redact::redact_payload(r.payload)?;
        out.emit(r.ts_us, r.values(), r.stream, r.label, &payload)
    }
}

export_transform!(
    RedactPos,
    name = "redact-pos",
    version = env!("CARGO_PKG_VERSION")
);

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_transform_sdk::native::{Record, Runner};

    fn run(payloads: &[&str]) -> (Vec<String>, Vec<(usize, String)>) {
        let records: Vec<Record> = (0..)
            .zip(payloads)
            .map(|(ts, p)| {
                Record::new(ts, &[12.5], "pos.sales")
                    .with_label("sale")
                    .with_payload(p.as_bytes())
            })
            .collect();
        let got = Runner::<RedactPos>::init("{}")
            .unwrap()
            .run(&records)
            .unwrap();
        for r in &got.emitted {
            let input = &records[r.ts_us as usize];
            assert_eq!(
                (r.ts_us, &r.values, &r.stream, &r.label),
                (input.ts_us, &input.values, &input.stream, &input.label)
            );
        }
        let out = got
            .emitted
            .iter()
            .map(|r| String::from_utf8(r.payload.clone()).unwrap())
            .collect();
        (out, got.failures)
    }

    #[test]
    fn redacts_a_realistic_sale() {
        let sale = r#"{
            "store": "0042", "register": 3, "order_id": 1234567890123456,
            "cashier": {"id": "c-17", "email": "jane.doe+pos@shop.example.com"},
            "items": [
                {"sku": "4006381333931", "name": "Coffee beans 1kg", "qty": 2, "price": 12.50},
                {"sku": "SKU-778", "name": "Mug", "qty": 1, "price": 7.0, "gift": true, "note": null}
            ],
            "tender": {"type": "card", "pan": "4111 1111 1111 1111", "pan_num": 5555555555554444,
                       "receipt_email": "customer@mail.example.org"},
            "note": "paid with 4111-1111-1111-1111 ok; questions: help@shop.example.com, ref 1234567812345678"
        }"#;
        let (out, failures) = run(&[sale]);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(
            out[0],
            concat!(
                r#"{"store":"0042","register":3,"order_id":1234567890123456,"#,
                r#""cashier":{"id":"c-17","email":"[redacted-email]"},"#,
                r#""items":[{"sku":"4006381333931","name":"Coffee beans 1kg","qty":2,"price":12.5},"#,
                r#"{"sku":"SKU-778","name":"Mug","qty":1,"price":7.0,"gift":true,"note":null}],"#,
                r#""tender":{"type":"card","pan":"**** **** **** 1111","pan_num":"************4444","#,
                r#""receipt_email":"[redacted-email]"},"#,
                r#""note":"paid with ****-****-****-1111 ok; questions: [redacted-email], ref 1234567812345678"}"#,
            )
        );
    }

    #[test]
    fn non_json_payload_is_rejected_not_passed_on() {
        let (out, failures) = run(&["card 4111111111111111", "", r#"{"a":1}"#]);
        assert_eq!(out, vec![r#"{"a":1}"#]);
        assert_eq!(failures.len(), 2);
        assert_eq!(failures[0].0, 0);
        assert!(
            failures[0].1.starts_with("payload is not JSON: "),
            "{}",
            failures[0].1
        );
        assert!(
            !failures[0].1.contains("4111"),
            "the reason must not leak the card"
        );
        assert_eq!(failures[1].0, 1);
    }

    #[test]
    fn keys_duplicates_and_scalars() {
        let (out, _) = run(&[
            r#"{"4111111111111111":"x","k":"a@b.co","k":"a@b.co"}"#,
            r#""4111111111111111""#,
            r#"[378282246310005, -4111111111111111, 4111111111111111.0, 42]"#,
        ]);
        assert_eq!(
            out[0],
            r#"{"4111111111111111":"x","k":"[redacted-email]","k":"[redacted-email]"}"#
        );
        assert_eq!(out[1], r#""************1111""#);
        assert_eq!(
            out[2],
            r#"["***********0005",-4111111111111111,4111111111111111.0,42]"#
        );
    }

    #[test]
    fn config_is_empty() {
        assert!(Runner::<RedactPos>::init(r#"{"mask":"*"}"#).is_err());
    }
}
