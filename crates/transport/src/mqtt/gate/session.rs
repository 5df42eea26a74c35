//! One device connection through the gate: its CONNECT checked and
//! rewritten, then every packet it sends decoded, checked and paced
//! before the same bytes go to the broker; the broker's side copied back.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use conveyor_shared::time::now_us;
use conveyor_shared::DeviceId;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, Error, Login, Packet, Protocol,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{policy, AuthRefused, Devices, GateAuth, Shared};

/// Keys (devices, or client ids on an open broker) kept before stale
/// ones are dropped.
const MAX_KEYS: usize = 10_000;

/// A CONNECT must arrive this soon after the TCP connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Codec {
    V4,
    V5,
}

impl Codec {
    /// The length of the whole frame at the front of `buf`, once it is
    /// all there.
    fn frame_len(self, buf: &BytesMut, max: usize) -> Result<Option<usize>, Error> {
        let header = match self {
            Codec::V4 => rumqttd::protocol::v4::check(buf.iter(), max).map(|h| h.frame_length()),
            Codec::V5 => rumqttd::protocol::v5::check(buf.iter(), max).map(|h| h.frame_length()),
        };
        match header {
            Ok(n) => Ok(Some(n)),
            Err(Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Decodes one whole frame that a client sent. Only the packets a
    /// client may send are decoded: rumqttd's v5 decoder panics on a
    /// CONNACK or UNSUBACK from a client (found by the fuzz test below),
    /// and a frame the gate cannot decode never reaches the broker, which
    /// decodes it with the same code. A panic in the codec all the same is
    /// a malformed packet, not a lost task.
    fn decode(self, frame: &[u8], max: usize) -> Result<Packet, Error> {
        let kind = frame.first().map_or(0, |b| b >> 4);
        // CONNECT, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE,
        // UNSUBSCRIBE, PINGREQ, DISCONNECT.
        if !matches!(kind, 1 | 3..=8 | 10 | 12 | 14) {
            return Err(Error::InvalidPacketType(kind));
        }
        let decode = || {
            let mut b = BytesMut::from(frame);
            match self {
                Codec::V4 => V4.read_mut(&mut b, max),
                Codec::V5 => V5.read_mut(&mut b, max),
            }
        };
        std::panic::catch_unwind(decode).unwrap_or(Err(Error::MalformedPacket))
    }

    fn encode(self, packet: Packet) -> Result<BytesMut, Error> {
        let mut out = BytesMut::new();
        match self {
            Codec::V4 => V4.write(packet, &mut out)?,
            Codec::V5 => V5.write(packet, &mut out)?,
        };
        Ok(out)
    }

    /// The CONNACK code for a refusal, in this protocol's vocabulary.
    fn refusal(self, why: Refusal) -> ConnectReturnCode {
        match (self, why) {
            (_, Refusal::Auth(AuthRefused::NoCredentials | AuthRefused::Wrong)) => {
                ConnectReturnCode::BadUserNamePassword
            }
            (Codec::V5, Refusal::Auth(AuthRefused::Revoked)) => ConnectReturnCode::Banned,
            (_, Refusal::Auth(_) | Refusal::Policy) => ConnectReturnCode::NotAuthorized,
            (Codec::V5, Refusal::Rate) => ConnectReturnCode::ConnectionRateExceeded,
            (Codec::V4, Refusal::Rate) => ConnectReturnCode::ServiceUnavailable,
        }
    }
}

#[derive(Clone, Copy)]
enum Refusal {
    Auth(AuthRefused),
    Policy,
    Rate,
}

/// The MQTT protocol level of a CONNECT frame (4: 3.1.1, 5: 5), if it
/// is one ("MQTT" protocol name; 3.1's "MQIsdp" is not served).
fn protocol_level(frame: &[u8]) -> Option<u8> {
    // Fixed header: one byte, then 1-4 bytes of remaining length.
    let mut i = 1;
    while *frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let v = frame.get(i + 1..i + 8)?;
    (v[..6] == *b"\x00\x04MQTT").then_some(v[6])
}

async fn read_more(r: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> std::io::Result<bool> {
    Ok(r.read_buf(buf).await? > 0)
}

/// Reads one whole frame (the first: framing is the same in 3.1.1 and 5).
async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    codec: Codec,
    max: usize,
) -> Result<Option<BytesMut>, Error> {
    loop {
        if let Some(n) = codec.frame_len(buf, max)? {
            return Ok(Some(buf.split_to(n)));
        }
        match read_more(r, buf).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Ok(None),
        }
    }
}

/// Serves one device connection: `cr` and `cw` are its two halves (of a
/// TCP stream, or of a TLS session over one).
pub(crate) async fn run<R, W>(mut cr: R, mut cw: W, peer: SocketAddr, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let max = shared.max_packet;
    let first = tokio::time::timeout(
        CONNECT_TIMEOUT,
        read_frame(&mut cr, &mut buf, Codec::V4, max),
    )
    .await;
    let Ok(Ok(Some(frame))) = first else {
        shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "no CONNECT: closed");
        return;
    };
    let codec = match protocol_level(&frame) {
        Some(4) => Codec::V4,
        Some(5) => Codec::V5,
        level => {
            shared.counters.refuse("protocol");
            tracing::warn!(%peer, ?level, "refused a connection: not MQTT 3.1.1 or 5");
            return;
        }
    };
    let Ok(Packet::Connect(connect, props, will, will_props, login)) = codec.decode(&frame, max)
    else {
        shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, "refused a connection: its first packet is not a valid CONNECT");
        return;
    };
    let client_id = connect.client_id.clone();
    let checked = admit(&shared, &client_id, login.as_ref(), will.as_ref());
    let (device, key) = match checked {
        Ok(ok) => ok,
        Err((why, label, message)) => {
            shared.counters.refuse(label);
            tracing::warn!(%peer, client_id = %client_id.chars().take(80).collect::<String>(), reason = label, "refused a connection: {message}");
            let ack = Packet::ConnAck(
                ConnAck {
                    session_present: false,
                    code: codec.refusal(why),
                },
                None,
            );
            if let Ok(bytes) = codec.encode(ack) {
                let _ = cw.write_all(&bytes).await;
            }
            let _ = cw.shutdown().await;
            return;
        }
    };
    let inner_addr = match codec {
        Codec::V4 => shared.inner.v4,
        Codec::V5 => shared.inner.v5,
    };
    let inner = match TcpStream::connect(inner_addr).await {
        Ok(s) => s,
        Err(e) => {
            shared.counters.refuse("broker_unavailable");
            tracing::error!(%peer, "the embedded broker does not answer at {inner_addr}: {e}");
            return;
        }
    };
    let _ = inner.set_nodelay(true);
    let (mut ir, mut iw) = inner.into_split();
    // The device's credentials stay here; the broker gets the hub's.
    let login = Some(Login {
        username: shared.inner.username.clone(),
        password: shared.inner.password.clone(),
    });
    let Ok(connect) = codec.encode(Packet::Connect(connect, props, will, will_props, login)) else {
        shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if iw.write_all(&connect).await.is_err() {
        return;
    }
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    let (cut_tx, mut cut) = watch::channel(false);
    shared.devices().live.insert(key.clone(), cut_tx.clone());
    tracing::debug!(%peer, device = %key, protocol = ?codec, "device connected through the gate");

    let up = relay_up(&mut cr, &mut iw, buf, codec, &shared, device.as_ref(), &key);
    let down = tokio::io::copy(&mut ir, &mut cw);
    let ended = tokio::select! {
        r = up => r,
        _ = down => Ok(()),
        _ = cut.wait_for(|c| *c) => Err(Closed::CutOff),
    };
    match ended {
        Err(Closed::Denied(denied)) => {
            shared.counters.deny(denied.kind());
            tracing::warn!(%peer, device = %key, "closed a connection: {denied}");
            if codec == Codec::V5 {
                let d = Packet::Disconnect(
                    Disconnect {
                        reason_code: DisconnectReasonCode::NotAuthorized,
                    },
                    None,
                );
                if let Ok(bytes) = codec.encode(d) {
                    let _ = cw.write_all(&bytes).await;
                }
            }
        }
        Err(Closed::Malformed(e)) => {
            shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, device = %key, "closed a connection: a malformed packet ({e:?})");
        }
        Err(Closed::CutOff) => {
            tracing::warn!(%peer, device = %key, "cut a revoked device off");
        }
        Ok(()) => {}
    }
    let _ = cw.shutdown().await;
    let _ = iw.shutdown().await;
    let mut d = shared.devices();
    if d.live.get(&key).is_some_and(|tx| tx.same_channel(&cut_tx)) {
        d.live.remove(&key);
    }
}

type Admitted = (Option<DeviceId>, String);

/// Who the CONNECT proves (with `Devices`), checked against the policy
/// and the connection rate; the key its rate and attempts are kept by.
fn admit(
    shared: &Shared,
    client_id: &str,
    login: Option<&Login>,
    will: Option<&rumqttd::protocol::LastWill>,
) -> Result<Admitted, (Refusal, &'static str, String)> {
    let device = match &shared.auth {
        GateAuth::Open => None,
        GateAuth::Devices(auth) => {
            let refused = |r: AuthRefused| (Refusal::Auth(r), r.kind(), r.to_string());
            let l = login.ok_or_else(|| refused(AuthRefused::NoCredentials))?;
            let device = auth.authenticate(&l.username, &l.password).map_err(|r| {
                (
                    Refusal::Auth(r),
                    r.kind(),
                    format!("{} ({r})", l.username.chars().take(80).collect::<String>()),
                )
            })?;
            let policy = |d: policy::Denied| (Refusal::Policy, d.kind(), d.to_string());
            policy::connect(&device, client_id).map_err(policy)?;
            if let Some(w) = will {
                policy::publish(&device, &String::from_utf8_lossy(&w.topic)).map_err(policy)?;
            }
            Some(device)
        }
    };
    let key = device
        .as_ref()
        .map_or_else(|| client_id.to_string(), DeviceId::to_string);
    let mut d = shared.devices();
    let now = now_us();
    // Bounded with clients that each use a new id (an open broker): an
    // entry with no attempt in the last minute, or a rate with no live
    // connection (its bucket refills within a second), says nothing a
    // fresh one would not.
    if d.attempts.len() > MAX_KEYS {
        d.attempts.retain(|_, a| a.recent(now));
    }
    if d.rates.len() > MAX_KEYS {
        let Devices { rates, live, .. } = &mut *d;
        rates.retain(|k, _| live.contains_key(k));
    }
    let ok = d
        .attempts
        .entry(key.clone())
        .or_default()
        .attempt(shared.limits.connects_per_minute, now);
    if !ok {
        return Err((
            Refusal::Rate,
            "connection_rate",
            format!(
                "{key} connected more than {} times in a minute",
                shared.limits.connects_per_minute
            ),
        ));
    }
    Ok((device, key))
}

enum Closed {
    Denied(policy::Denied),
    Malformed(Error),
    CutOff,
}

/// Device -> broker: frame by frame, each decoded and checked, paced by
/// the device's rate, then forwarded as it came.
async fn relay_up(
    cr: &mut (impl AsyncRead + Unpin),
    iw: &mut OwnedWriteHalf,
    mut buf: BytesMut,
    codec: Codec,
    shared: &Shared,
    device: Option<&DeviceId>,
    key: &str,
) -> Result<(), Closed> {
    let max = shared.max_packet;
    loop {
        let Some(n) = codec.frame_len(&buf, max).map_err(Closed::Malformed)? else {
            match read_more(cr, &mut buf).await {
                Ok(true) => continue,
                Ok(false) | Err(_) => return Ok(()),
            }
        };
        let frame = buf.split_to(n);
        // Decoded whatever the auth: what the gate cannot decode does not
        // reach the broker.
        let packet = codec.decode(&frame, max).map_err(Closed::Malformed)?;
        if let Some(device) = device {
            match packet {
                Packet::Publish(p, _) => {
                    policy::publish(device, &String::from_utf8_lossy(&p.topic))
                        .map_err(Closed::Denied)?;
                }
                Packet::Subscribe(s, _) => {
                    for f in &s.filters {
                        policy::subscribe(device, &f.path).map_err(Closed::Denied)?;
                    }
                }
                // A second CONNECT is a protocol error the broker closes on.
                _ => {}
            }
        }
        let wait_us = {
            let mut d = shared.devices();
            let limits = &shared.limits;
            d.rates
                .entry(key.to_string())
                .or_insert_with(|| super::limits::Rate::new(limits, now_us()))
                .take(n, now_us())
        };
        if wait_us > 0 {
            shared.counters.throttled.fetch_add(1, Ordering::Relaxed);
            shared
                .counters
                .throttled_us
                .fetch_add(wait_us as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_micros(wait_us as u64)).await;
        }
        if iw.write_all(&frame).await.is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What a device sends is framed and decoded by the gate before
        /// anything else sees it: any bytes give a frame, an error, or
        /// a wait for more, never a panic.
        #[test]
        fn any_bytes_frame_and_decode_without_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..1024),
            v5 in any::<bool>(),
        ) {
            let codec = if v5 { Codec::V5 } else { Codec::V4 };
            let _ = protocol_level(&bytes);
            let buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(n)) = codec.frame_len(&buf, 4096) {
                if n <= bytes.len() {
                    let _ = codec.decode(&bytes[..n], 4096);
                }
            }
        }
    }

    #[test]
    fn a_packet_only_a_server_sends_is_refused_not_a_panic() {
        // A CONNACK from a client (rumqttd's v5 decoder hits
        // `unreachable!()` on it), a SUBACK, a PINGRESP.
        for frame in [
            &b"\x20\x03\x00\x00\x00"[..],
            b"\x90\x03\x00\x01\x00",
            b"\xd0\x00",
        ] {
            for codec in [Codec::V4, Codec::V5] {
                assert!(
                    matches!(codec.decode(frame, 4096), Err(Error::InvalidPacketType(_))),
                    "{codec:?} {frame:?}"
                );
            }
        }
        // What a client does send still decodes.
        assert!(matches!(
            Codec::V4.decode(b"\xc0\x00", 4096),
            Ok(Packet::PingReq(_))
        ));
    }

    #[test]
    fn the_protocol_level_is_read_from_a_connect() {
        // 3.1.1 and 5 CONNECTs as clients send them (a short one).
        let v4 = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04dev1";
        assert_eq!(protocol_level(v4), Some(4));
        let mut v5 = v4.to_vec();
        v5[8] = 5;
        assert_eq!(protocol_level(&v5), Some(5));
        assert_eq!(protocol_level(b"\x10\x0c\x00\x06MQIsdp\x03"), None);
        assert_eq!(protocol_level(b"\x10"), None);
        assert_eq!(protocol_level(b""), None);
        // A long remaining length (two bytes of it).
        assert_eq!(protocol_level(b"\x10\x80\x01\x00\x04MQTT\x04"), Some(4));
    }
}
