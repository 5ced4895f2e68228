//! A DNS server on loopback for tests: answers A and AAAA queries from a table the test
//! controls, so no test ever looks up a public name. Written by hand (a few lines of RFC 1035)
//! so the test can answer differently on each query (DNS rebinding).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// Per name: the successive answers, and how far each query type (A, AAAA) has got through
/// them. Each type keeps its own place: a resolver asks A and AAAA concurrently, in either
/// order, and one must not use up the other's answer.
type Answers = HashMap<String, (Vec<Vec<IpAddr>>, HashMap<u16, usize>)>;

pub struct DnsServer {
    pub addr: SocketAddr,
    answers: Arc<Mutex<Answers>>,
    queries: Arc<AtomicUsize>,
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("dns bind: {error}"));
        let addr = socket
            .local_addr()
            .unwrap_or_else(|error| panic!("dns addr: {error}"));
        let answers: Arc<Mutex<Answers>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let (table, counter) = (answers.clone(), queries.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((len, peer)) = socket.recv_from(&mut buf).await {
                counter.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = answer(&buf[..len], &table) {
                    let _ = socket.send_to(&reply, peer).await;
                }
            }
        });
        DnsServer {
            addr,
            answers,
            queries,
        }
    }

    /// `name` resolves to `ips` (every query).
    pub fn set(&self, name: &str, ips: &[IpAddr]) {
        self.set_sequence(name, &[ips]);
    }

    /// Successive queries for `name` get successive answers (counted per query type); the
    /// last one repeats.
    pub fn set_sequence(&self, name: &str, answers: &[&[IpAddr]]) {
        if let Ok(mut table) = self.answers.lock() {
            table.insert(
                name.trim_end_matches('.').to_ascii_lowercase(),
                (
                    answers.iter().map(|ips| ips.to_vec()).collect(),
                    HashMap::new(),
                ),
            );
        }
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// Builds the reply to one query (TTL 0, so the resolver asks again next time).
fn answer(query: &[u8], table: &Mutex<Answers>) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // Question: name labels, then type and class.
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(pos..pos + len)?).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question_end = pos + 4;
    let name = labels.join(".");
    let ips = {
        let mut table = table.lock().ok()?;
        match table.get_mut(&name) {
            Some((sequence, places)) => {
                let place = places.entry(qtype).or_insert(0);
                let ips = sequence.get(*place).or(sequence.last()).cloned();
                *place += 1;
                ips
            }
            None => None,
        }
    };
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[..2]); // id
    let rcode = if ips.is_some() { 0 } else { 3 }; // NXDOMAIN for unknown names
    reply.extend_from_slice(&[0x81, 0x80 | rcode]); // response, RD, RA
    reply.extend_from_slice(&[0, 1]); // one question
    let records: Vec<IpAddr> = ips
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| matches!((ip, qtype), (IpAddr::V4(_), 1) | (IpAddr::V6(_), 28)))
        .collect();
    reply.extend_from_slice(&(records.len() as u16).to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
    reply.extend_from_slice(query.get(12..question_end)?);
    for ip in records {
        reply.extend_from_slice(&[0xc0, 12]); // pointer to the question name
        reply.extend_from_slice(&qtype.to_be_bytes());
        reply.extend_from_slice(&[0, 1, 0, 0, 0, 0]); // class IN, TTL 0
        match ip {
            IpAddr::V4(v4) => {
                reply.extend_from_slice(&[0, 4]);
                reply.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                reply.extend_from_slice(&[0, 16]);
                reply.extend_from_slice(&v6.octets());
            }
        }
    }
    Some(reply)
}
