//! The edge-to-hub cascade and the results going back out.
//!
//! An agent's inference stage escalates a prediction whose confidence is
//! below the stream's threshold: the record carries the raw window
//! ([`conveyor_shared::Escalation`]). [`router`] gives every stored
//! prediction record its final prediction (the edge's, or the hub model's
//! for an escalation), stores it beside the record, publishes it on the
//! device's `down/results` topic and to live API subscribers. [`report`]
//! measures accuracy and uplink bytes of edge-only, hub-only and the
//! cascade on the held-out test data; [`split`] reads that data.

pub mod report;
pub mod router;
pub mod split;
